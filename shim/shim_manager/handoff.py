"""`start`'s side of the fork server: hand the pod's listening socket to a pre-imported
process that forks the daemon (shim/shim_manager/forkserver.py), or say it cannot.

Standard library only, and few modules: this runs in every `start` of a pod sandbox.

One fork server serves one code tree: its socket is named by the interpreter and the
directory graft runs from, and every request carries a stamp of the code's files; a server
whose code changed since it started answers "stale" and exits, and `start` falls back to
forking the daemon itself.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys

SERVER_DIR = "/run/graft-shim"
REPLY_TIMEOUT = 5.0
_MAX_MESSAGE = 1 << 20
# The code a daemon runs: these package directories below the graft tree.
_CODE_DIRS = ("shim", os.path.join("graft_agent", "api"))
GRAFT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def server_path() -> str:
    """This interpreter's and graft tree's fork server socket."""
    name = f"{sys.executable}\0{GRAFT_ROOT}".encode()
    return os.path.join(SERVER_DIR, hashlib.sha256(name).hexdigest()[:16] + ".sock")


def code_stamp() -> str:
    """Changes whenever a file of the daemon's code changes (or appears, or goes)."""
    digest = hashlib.sha256()
    for sub in _CODE_DIRS:
        top = os.path.join(GRAFT_ROOT, sub)
        if os.path.isdir(top):
            _stamp_tree(top, digest)
    return digest.hexdigest()[:32]


def _stamp_tree(directory: str, digest) -> None:
    with os.scandir(directory) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False):
                if entry.name != "__pycache__":
                    _stamp_tree(entry.path, digest)
            elif entry.name.endswith(".py"):
                st = entry.stat()
                digest.update(f"{entry.path}\0{st.st_mtime_ns}\0{st.st_size}\0".encode())


def request_daemon(path: str, request: dict, listen_fd: int) -> int | None:
    """Ask the fork server at *path* to fork a daemon serving *listen_fd*; its pid, or None
    when no (current) server answers — the caller then forks the daemon itself."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(REPLY_TIMEOUT)
            sock.connect(path)
            socket.send_fds(sock, [json.dumps(request).encode()], [listen_fd])
            reply = json.loads(sock.recv(_MAX_MESSAGE) or b"{}")
    except (OSError, ValueError):
        return None
    pid = reply.get("pid")
    return pid if isinstance(pid, int) and pid > 0 else None


def stop_server(path: str) -> int | None:
    """Ask the fork server at *path* to exit (daemons it forked are not its children and
    keep running); its pid, or None when none answers there."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(REPLY_TIMEOUT)
            sock.connect(path)
            sock.send(json.dumps({"stop": True}).encode())
            reply = json.loads(sock.recv(_MAX_MESSAGE) or b"{}")
    except (OSError, ValueError):
        return None
    pid = reply.get("stopping")
    return pid if isinstance(pid, int) and pid > 0 else None


def spawn_server(path: str) -> None:
    """Start a fork server for this code tree in the background (it exits at once if another
    already holds the socket). Never waits for it."""
    boot = ("import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
            "from shim.shim_manager.forkserver import main; main(sys.argv[2])")
    null = os.open(os.devnull, os.O_RDWR)
    try:
        actions = [(os.POSIX_SPAWN_DUP2, null, fd) for fd in (0, 1, 2)]
        os.posix_spawn(sys.executable,
                       [sys.executable, "-I", "-S", "-c", boot, json.dumps(sys.path), path],
                       dict(os.environ), file_actions=actions, setsid=True)
    except OSError:
        pass  # no fork server: every start forks its own daemon, as before
    finally:
        os.close(null)

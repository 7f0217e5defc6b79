"""The fork server: a process with the daemon's code already imported that forks a shim
daemon per pod, so a pod's daemon serves within milliseconds of containerd's exec of `start`
instead of after a fresh interpreter's ~150 ms of imports (bench/shim_start.py).

`start` (shim/shim_manager/handoff.py) sends one SOCK_SEQPACKET message: a JSON request
{stamp, args, config_path, env} with the pod's listening socket as SCM_RIGHTS; the server
double-forks the daemon (it is nobody's child, like a shim `start` leaves) and answers
{"pid": N}. It answers {"stale": true} and exits when the code changed since it started,
answers {"stopping": its pid} and exits when asked {"stop": true} (`graft fork-server stop`),
serves only root (or its own uid), and exits after IDLE_SECONDS without a request. It keeps
no thread and no event loop, so forking it is safe.
"""
from __future__ import annotations

import fcntl
import json
import os
import select
import socket
import struct
import sys

from .args import parse_args
from .daemon_process import fork_daemon
from .handoff import code_stamp

IDLE_SECONDS = 600.0
_MAX_MESSAGE = 1 << 20

# What a daemon imports on its way to serving (and soon after): import it once, here.
_WARM_MODULES = (
    "asyncio", "logging", "json", "tomllib", "psutil", "setproctitle", "qemu.qmp",
    "google.protobuf.empty_pb2", "shim.api.containerd", "shim.config", "shim.events",
    "shim.shim_manager.daemon", "shim.shim_manager.logging_setup", "shim.task_service",
    "shim.sandbox_service", "shim.task.sandbox_controller", "shim.task.manager", "shim.task.vm_backend", "shim.sandbox.sandbox", "shim.sandbox.state",
    "shim.factory.boot", "shim.factory.template", "shim.factory.sizing", "shim.hypervisor.qemu",
    "shim.agent.client", "shim.network", "shim.network.netlink", "pyroute2",
)


def _warm() -> None:
    import importlib

    for name in _WARM_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # the daemon imports it (and reports) itself


def _peer_allowed(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return uid in (0, os.getuid())


def _handle(conn: socket.socket, own_fds: tuple[int, ...], stamp: str) -> bool:
    """Serve one request; False when this server must exit (its code is stale)."""
    message, fds, _, _ = socket.recv_fds(conn, _MAX_MESSAGE, 4)
    try:
        if not _peer_allowed(conn):
            conn.send(json.dumps({"error": "refused"}).encode())
            return True
        request = json.loads(message)
        if not isinstance(request, dict):
            raise ValueError("a request is a JSON object")
        if request.get("stop") is True and not fds:
            conn.send(json.dumps({"stopping": os.getpid()}).encode())
            return False
        if len(fds) != 1:
            conn.send(json.dumps({"error": "refused"}).encode())
            return True
        if request.get("stamp") != stamp:
            conn.send(json.dumps({"stale": True}).encode())
            return False
        args = parse_args(request["args"], cwd=request["bundle"])
        pid = fork_daemon(args, fds[0], str(request.get("config_path", "")),
                          dict(request.get("env") or {}), double_fork=True,
                          close=(*own_fds, conn.fileno()))
        conn.send(json.dumps({"pid": pid}).encode())
        return True
    finally:
        for fd in fds:
            os.close(fd)


def _take(lock: int, patience: float = 1.0) -> bool:
    """The server lock; a stale server about to exit may still hold it for a moment."""
    import time

    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def lock_path(path: str) -> str:
    """The file a server holds locked (flock) for as long as it serves *path*."""
    return path + ".lock"


def remove_unserved_socket(path: str) -> bool:
    """Remove *path* if no server holds its lock (one killed outright leaves its socket);
    True if removed. Under the lock: no server can be binding it meanwhile."""
    try:
        lock = os.open(lock_path(path), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False  # no server ever ran there
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        return False
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(lock)


def serve(path: str) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    lock = os.open(lock_path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    if not _take(lock):
        return  # another fork server for this code tree is up
    stamp = code_stamp()
    _warm()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        if os.path.exists(path):
            os.unlink(path)  # we hold the lock: nobody serves it
        old = os.umask(0o177)
        try:
            listener.bind(path)
        finally:
            os.umask(old)
        listener.listen(64)
        while True:
            ready, _, _ = select.select([listener], [], [], IDLE_SECONDS)
            if not ready:
                return
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5.0)
                try:
                    if not _handle(conn, (listener.fileno(), lock), stamp):
                        return
                except (OSError, ValueError, KeyError, TypeError):
                    continue  # one bad request never takes the server down
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
        listener.close()
        os.close(lock)


def main(path: str) -> None:
    import setproctitle

    setproctitle.setproctitle(f"containerd-shim-graft-v2 fork-server {path}")
    os.chdir("/")  # not the bundle of the pod whose start spawned us
    try:
        serve(path)
    finally:
        os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])

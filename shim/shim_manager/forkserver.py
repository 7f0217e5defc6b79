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
import time

from .args import parse_args
from .daemon_process import fork_daemon
from .handoff import code_stamp
from .pool import Pools

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
    "shim.sandbox.warm", "shim.shim_manager.pool_member",
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


def _handle(conn: socket.socket, own_fds: tuple[int, ...], stamp: str, pools: Pools) -> bool:
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
        config_path = str(request.get("config_path", ""))
        pools.note_config(config_path, dict(request.get("env") or {}))
        pid = pools.hand_over(config_path, request, fds[0])
        if pid is None:
            args = parse_args(request["args"], cwd=request["bundle"])
            pid = fork_daemon(args, fds[0], config_path, dict(request.get("env") or {}),
                              double_fork=True,
                              close=(*own_fds, conn.fileno(), *pools.fds()))
        conn.send(json.dumps({"pid": pid}).encode())
        return True
    finally:
        for fd in fds:
            os.close(fd)


def _take(lock: int, patience: float = 1.0) -> bool:
    """The server lock; a stale server about to exit may still hold it for a moment."""
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
        own = (listener.fileno(), lock)
        pools = Pools(own)
        idle_since = time.monotonic()
        while True:
            timeout = IDLE_SECONDS if pools.active else IDLE_SECONDS - (
                time.monotonic() - idle_since)
            wakeup = pools.next_wakeup()
            if wakeup is not None:
                timeout = min(timeout, wakeup + 0.01)
            ready, _, _ = select.select([listener, *pools.sockets()], [], [], max(0.0, timeout))
            for sock in ready:
                if sock is not listener:
                    pools.on_readable(sock)
            if listener in ready:
                idle_since = time.monotonic()
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(5.0)
                    try:
                        if not _handle(conn, own, stamp, pools):
                            return
                    except (OSError, ValueError, KeyError, TypeError):
                        pass  # one bad request never takes the server down
            elif not ready and not pools.active and \
                    time.monotonic() - idle_since >= IDLE_SECONDS:
                return  # idle, and no pool to keep warm
            pools.fill()
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
        listener.close()
        os.close(lock)


def _log_beside(path: str) -> None:
    """The server's own log (pool members failing, refused requests): <socket>.log, 1 MiB
    and one rotated part (it lives on /run, i.e. in RAM)."""
    import logging
    import logging.handlers

    handler = logging.handlers.RotatingFileHandler(path + ".log", maxBytes=1 << 20,
                                                   backupCount=1)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def main(path: str) -> None:
    import setproctitle

    setproctitle.setproctitle(f"containerd-shim-graft-v2 fork-server {path}")
    os.chdir("/")  # not the bundle of the pod whose start spawned us
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)  # before its log goes there
    _log_beside(path)
    try:
        serve(path)
    finally:
        os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])

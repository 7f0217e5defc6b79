"""A pool member: a shim daemon forked before its pod exists, holding a warm VM.

The fork server (pool.py) forks it with one end of a SOCK_SEQPACKET pair. It prepares a warm
VM (shim/sandbox/warm.py) at low CPU priority, says {"ready": true}, and waits. A pod's
`start` request then arrives from the fork server — the same JSON and listening socket a
forked daemon gets — and the member becomes that pod's daemon in the same event loop (the
VM's connections belong to it), answering {"pid": N} first. If its VM dies, or the fork
server goes away, before a pod came, it stops the VM and exits; a VM that did not come up
is reported as {"failed": "..."}.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket

from .args import parse_args

log = logging.getLogger(__name__)

WAITING_NICE = 10  # a member's restore and idle VM yield the CPU to pods being started
_MAX_MESSAGE = 1 << 20


def _renice_tree(pid: int, nice: int) -> None:
    """Every thread of *pid* (nice is per thread on Linux: QEMU's vCPU threads included)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:
            pass


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


def _send(sock: socket.socket, message: dict) -> None:
    try:
        sock.send(json.dumps(message).encode())
    except OSError:
        pass  # the fork server is gone: what we do next does not depend on it


async def _wait_for_pod(sock: socket.socket, vm_exit: asyncio.Future) -> tuple[dict, int] | None:
    """The pod's request and listening fd; None if the VM died or the server went away."""
    waiting = asyncio.ensure_future(_readable(sock))
    try:
        await asyncio.wait({waiting, vm_exit}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
    if vm_exit.done():
        return None
    try:
        message, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 4)
    except OSError:
        return None
    if not message or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return None
    return json.loads(message), fds[0]


async def _member(sock: socket.socket, config_path: str) -> int:
    from shim.config import load_config
    from shim.sandbox.warm import prepare_warm_vm

    config = load_config(config_path or None)
    try:
        warm = await prepare_warm_vm(config, str(config.source or ""))
    except Exception as exc:  # noqa: BLE001 - reported to the server, which backs off
        _send(sock, {"failed": str(exc)[:2000]})
        return 1
    vm = warm.booted.hypervisor
    vm_exit = asyncio.ensure_future(vm.wait_exit())
    warm.mark_ready()
    _send(sock, {"ready": True})
    job = await _wait_for_pod(sock, vm_exit)
    if job is None:
        vm_exit.cancel()
        await warm.discard()
        return 0
    request, listen_fd = job
    vm_exit.cancel()
    os.setpriority(os.PRIO_PROCESS, 0, 0)
    if vm.pid is not None:
        _renice_tree(vm.pid, 0)
    from .daemon import serve_async
    from .daemon_process import become_pod_daemon

    args = parse_args(request["args"], cwd=request["bundle"])
    path = str(request.get("config_path", ""))
    become_pod_daemon(args, path, dict(request.get("env") or {}))
    _send(sock, {"pid": os.getpid()})
    sock.close()
    return await serve_async(args, listen_fd, path, warm)


def run_member(sock: socket.socket, config_path: str,
               environ: dict[str, str] | None = None) -> None:
    """Never returns (the forked member's whole life). *environ*: a pod start's, for this
    config (the fork server's own may lack e.g. GRAFT_GUEST_DIR)."""
    status = 1
    try:
        import setproctitle

        setproctitle.setproctitle(f"containerd-shim-graft-v2 pool-member {config_path}")
        if environ:
            os.environ.clear()
            os.environ.update(environ)
        os.setpriority(os.PRIO_PROCESS, 0, WAITING_NICE)
        from .logging_setup import replace_handlers

        replace_handlers(logging.NullHandler())  # failures go to the server as "failed"
        loop = asyncio.new_event_loop()
        try:
            status = loop.run_until_complete(_member(sock, config_path))
        finally:
            logging.shutdown()
    finally:
        os._exit(status)

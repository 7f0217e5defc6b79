"""`containerd-shim-graft-v2 delete`: clean up what is left of one container, whatever state
the daemon is in, and print a DeleteResponse (exit 137: killed)."""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

from shim.task.bundle import bundle_info, read_spec
from shim.task.rootfs import unmount_rootfs

from .args import ShimArgs
from . import socket_address

log = logging.getLogger(__name__)

KILLED_STATUS = 128 + signal.SIGKILL
# containerd gives the whole `delete` run 5 s (io.containerd.timeout.shim.cleanup): what we
# ask a live daemon must fit well inside, leaving time for the host-side cleanup.
DAEMON_BUDGET_SECONDS = 3.0
_RPC_TIMEOUT = 1.5


async def _ask_daemon(path: Path, container_id: str, is_sandbox: bool) -> None:
    """If our daemon still serves, have it kill, reap and delete the task (it knows the guest);
    for a sandbox, first shut down what the Sandbox API created (containerd 2.x asks for that
    itself, but a failed ShutdownSandbox must not leave the VM and the daemon behind)."""
    from shim.ttrpc import Client, TtrpcError

    try:
        async with asyncio.timeout(DAEMON_BUDGET_SECONDS):
            try:
                client = await asyncio.wait_for(Client.connect_unix(str(path)), _RPC_TIMEOUT)
            except (TtrpcError, OSError, TimeoutError):
                return
            try:
                if is_sandbox:
                    await _shutdown_sandbox(client, container_id)
                await _kill_wait_delete(client, container_id)
            finally:
                await client.close()
    except TimeoutError:
        log.info("delete: daemon at %s did not finish %s in %ss", path, container_id,
                 DAEMON_BUDGET_SECONDS)


async def _shutdown_sandbox(client, sandbox_id: str) -> None:
    from shim.api.containerd import SANDBOX_SERVICE, sandbox_pb2
    from shim.ttrpc import TtrpcError

    try:
        await client.call(SANDBOX_SERVICE.full_name, "ShutdownSandbox",
                          sandbox_pb2.ShutdownSandboxRequest(sandbox_id=sandbox_id),
                          sandbox_pb2.ShutdownSandboxResponse, timeout=_RPC_TIMEOUT)
    except TtrpcError as exc:  # NotFound: the pod was a pause container's, or is gone
        log.info("delete: ShutdownSandbox %s: %s", sandbox_id, exc)


async def _kill_wait_delete(client, container_id: str) -> None:
    from google.protobuf import empty_pb2
    from shim.api.containerd import TASK_SERVICE, shim_pb2
    from shim.ttrpc import TtrpcError

    # Delete refuses a task that has not exited: Wait gives the kill its effect first (it
    # answers at once for an exited task, NotFound for an unknown one).
    for method, request, response in (
            ("Kill", shim_pb2.KillRequest(id=container_id, signal=9, all=True), empty_pb2.Empty),
            ("Wait", shim_pb2.WaitRequest(id=container_id), shim_pb2.WaitResponse),
            ("Delete", shim_pb2.DeleteRequest(id=container_id), shim_pb2.DeleteResponse)):
        try:
            await client.call(TASK_SERVICE.full_name, method, request, response,
                              timeout=_RPC_TIMEOUT)
        except TtrpcError as exc:
            log.info("delete: %s %s: %s", method, container_id, exc)


def delete(args: ShimArgs, config_path: str) -> bytes:
    from google.protobuf import timestamp_pb2
    from shim.api.containerd import shim_pb2

    try:
        info = bundle_info(args.id, read_spec(args.bundle))
    except ValueError:
        info = None
    if info is not None:
        path = socket_address.socket_path(args.address, args.namespace, info.sandbox_id)
        if socket_address.accepts(path):
            asyncio.run(_ask_daemon(path, args.id, info.is_sandbox))
        elif info.is_sandbox:
            socket_address.remove(path)  # its daemon is dead
    unmount_rootfs(Path(args.bundle) / "rootfs")
    if info is None or info.is_sandbox:
        _cleanup_vm(args, config_path)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(time.time_ns())
    return shim_pb2.DeleteResponse(pid=0, exit_status=KILLED_STATUS,
                                   exited_at=stamp).SerializeToString()


def _cleanup_vm(args: ShimArgs, config_path: str) -> None:
    from shim.config import load_config
    from shim.sandbox.state import SandboxRef, cleanup_leftovers

    try:
        cleanup_leftovers(load_config(config_path or None),
                          SandboxRef(args.id, args.namespace, args.address))
    except Exception as exc:
        log.warning("delete: cleaning up sandbox %s: %s", args.id, exc)

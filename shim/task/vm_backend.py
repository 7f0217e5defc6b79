"""PodBackend on a real pod VM (shim.sandbox.Sandbox + the guest agent).

Decisions:
  * the CRI sandbox (pause) container *is* the VM: nothing runs in the guest for it, its task
    pid is the VMM's (started in the pod netns, so /proc/<pid>/ns/net is the pod's netns), it
    exits when the VM exits, and killing it stops the VM;
  * a container without CRI annotations (ctr run) is a pod of one: VM + container in the guest;
  * every pid reported to containerd is the VMM's: guest pids mean nothing on the host (and may
    collide with unrelated host processes); Pids lists the guest pids;
  * the last container removed tears the VM down — unless the VM was launched through the
    Sandbox API (launch_pod, containerd 2.x `sandboxer = "shim"`, no pause container): then it
    lives until stop_pod, and its app containers come and go.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal as signals
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from shim import failpoints
from shim.agent.client import AgentClient
from shim.agent.pacing import MinInterval
from shim.mounts import bind_mount, mounts_under, unmount_all_under
from shim.sandbox.sandbox import GUEST_SHARE_MOUNT
from shim.sandbox.state import LOCAL_NAMESPACE, SandboxRef
from shim.timeline import Timeline
from shim.ttrpc import Code, TtrpcError

from .backend import ContainerConfig, PodVm
from .bundle import ContainerKind, hostname, network_namespace
from .errors import FailedPrecondition, NotFound, Unavailable
from .guest_spec import HostBind, check_sandbox_namespaces, guest_spec
from .guest_undo import GuestUndo, ignoring_gone
from .metrics import metrics_from_agent, vm_metrics
from .process import ExitInfo
from .stdio import StdioSpec

if TYPE_CHECKING:
    from shim.sandbox.warm import WarmVm

log = logging.getLogger(__name__)

_MOUNTS_DIR = ".mounts"  # not a valid container id: never collides with a rootfs dir
OOM_EVENT_INTERVAL_SECONDS = 0.2


class _AgentStreams:
    def __init__(self, backend: "VmBackend", container_id: str, exec_id: str) -> None:
        self._backend, self._cid, self._eid = backend, container_id, exec_id
        self._output_seen = False

    def _saw(self, data: bytes) -> None:
        if data and not self._output_seen and not self._eid:
            self._output_seen = True
            self._backend.timeline.mark(f"{self._cid} first output")

    async def read_stdout(self) -> tuple[bytes, bool]:
        if not self._backend._guest(self._cid):
            return b"", True  # the pod VM itself: no guest process, no output
        r = await self._backend.agent.read_stdout(self._cid, self._eid)
        self._saw(r.data)
        return r.data, r.eof

    async def read_stderr(self) -> tuple[bytes, bool]:
        if not self._backend._guest(self._cid):
            return b"", True
        r = await self._backend.agent.read_stderr(self._cid, self._eid)
        self._saw(r.data)
        return r.data, r.eof

    async def write_stdin(self, data: bytes) -> int:
        written = await self._backend.agent.write_stdin(self._cid, self._eid, data)
        if written <= 0:
            raise BrokenPipeError(f"stdin of {self._cid}/{self._eid!r} accepts no data")
        return written

    async def close_stdin(self) -> None:
        await self._backend.agent.close_stdin(self._cid, self._eid)


class VmBackend:
    def __init__(self, config_path: str = "", namespace: str = LOCAL_NAMESPACE,
                 owner: str = "", timeline: Timeline | None = None,
                 warm: "WarmVm | None" = None) -> None:
        self._config_path = config_path
        self._warm = warm  # a VM restored ahead of this pod (warm pool), if it suits
        self._namespace = namespace
        self._owner = owner  # containerd's address: part of the sandbox's name on the host
        self.timeline = timeline or Timeline()
        self._sandbox = None           # shim.sandbox.sandbox.Sandbox once launched
        self._sandbox_id = ""
        self._vm_exit: asyncio.Future[ExitInfo] | None = None
        self._vm_watch: asyncio.Task | None = None
        self._kinds: dict[str, ContainerKind] = {}
        self._oom_handler: Callable[[str], None] = lambda container_id: None
        self._oom_watch: asyncio.Task | None = None
        self._stop_task: asyncio.Task | None = None
        self._undo = GuestUndo()
        self._vm_owned_by_task = False  # launched for a POD_VM/SINGLE task, not launch_pod

    def on_oom(self, handler: Callable[[str], None]) -> None:
        self._oom_handler = handler

    @property
    def agent(self) -> AgentClient:
        if self._sandbox is None:
            raise Unavailable("the pod VM is not running")
        return self._sandbox.agent

    def _guest(self, container_id: str) -> bool:
        return self._kinds.get(container_id) is not ContainerKind.POD_VM

    @property
    def _pid(self) -> int:
        return (self._sandbox.vmm_pid or 0) if self._sandbox is not None else 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def launch_pod(self, pod: PodVm) -> int:
        self.timeline.mark(f"{pod.sandbox_id} StartSandbox")  # the Sandbox API's pod start
        await self._launch(pod)
        return self._pid

    async def stop_pod(self) -> None:
        await self._teardown()

    async def wait_pod(self) -> ExitInfo:
        if self._vm_exit is None:
            raise FailedPrecondition("the pod VM was never launched")
        return await asyncio.shield(self._vm_exit)

    async def pod_metrics(self):
        if self._sandbox is None:
            raise FailedPrecondition("the pod VM is not running")
        return vm_metrics(self._pid)

    def pod_details(self) -> dict[str, str]:
        if self._sandbox is None:
            return {}
        return {"boot": self._sandbox.boot_path.describe(), "vcpus": str(self._sandbox.size.vcpus),
                "memory_mib": str(self._sandbox.size.memory_mib)}

    async def _launch(self, pod: PodVm) -> None:
        from shim.config import load_config
        from shim.sandbox.sandbox import Sandbox
        from shim.sandbox.warm import adopt_warm_vm

        if self._sandbox is not None or self._vm_exit is not None:
            raise FailedPrecondition(f"this shim already ran pod {self._sandbox_id}")
        graft_config = load_config(self._config_path or None)
        ref = SandboxRef(pod.sandbox_id, self._namespace, self._owner)
        warm, self._warm = self._warm, None
        if warm is not None:
            self._sandbox = await adopt_warm_vm(
                warm, ref, graft_config, netns=pod.netns, hostname=pod.hostname,
                resources=pod.resources, timeline=self.timeline)
        if self._sandbox is None:
            self._sandbox = await Sandbox.launch(
                ref, graft_config, netns=pod.netns, hostname=pod.hostname,
                resources=pod.resources, timeline=self.timeline)
        self._sandbox_id = pod.sandbox_id
        loop = asyncio.get_running_loop()
        self._vm_exit = loop.create_future()
        self._vm_watch = asyncio.ensure_future(self._watch_vm())
        self._oom_watch = asyncio.ensure_future(self._watch_oom())

    async def _watch_oom(self) -> None:
        pace = MinInterval(OOM_EVENT_INTERVAL_SECONDS)  # a guest answering at once cannot flood
        while self._sandbox is not None:
            await pace.wait()
            try:
                container_id = await self.agent.get_oom_event()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # agent gone (VM stopping) or no OOM support
                log.debug("OOM watch ended: %s", exc)
                return
            log.info("container %s hit its memory limit", container_id)
            self._oom_handler(container_id)

    async def _watch_vm(self) -> None:
        assert self._sandbox is not None and self._vm_exit is not None
        try:
            code = await self._sandbox.wait_vm_exit()
        except Exception as exc:
            log.warning("waiting for the VM failed: %s", exc)
            code = 255
        if code is None:
            code = 255
        elif code < 0:  # killed by a signal: shell convention
            code = 128 - code
        log.info("pod VM exited with %s", code)
        self._vm_exit.set_result(ExitInfo(code, time.time_ns()))

    async def create_container(self, config: ContainerConfig) -> int:
        self.timeline.mark(f"{config.id} create")
        failpoints.arm(self._config_path, config.spec)
        if config.kind in (ContainerKind.POD_VM, ContainerKind.SINGLE):
            check_sandbox_namespaces(config.spec)
            await self._launch(_pod_vm(config))
            self._vm_owned_by_task = True
        elif self._sandbox is None or config.sandbox_id != self._sandbox_id:
            raise NotFound(f"sandbox {config.sandbox_id} of container {config.id} "
                           "is not running in this shim")
        self._kinds[config.id] = config.kind
        if config.kind is ContainerKind.POD_VM:
            return self._pid
        assert self._sandbox is not None
        created = False
        try:
            spec, binds = guest_spec(config.spec, f"{GUEST_SHARE_MOUNT}/{_MOUNTS_DIR}/{config.id}")
            self._expose_binds(config.id, binds)
            guest_rootfs = self._sandbox.add_container_rootfs(config.id, config.rootfs)
            self.timeline.mark(f"{config.id} rootfs ready")
            failpoints.reach(failpoints.ROOTFS_BOUND)
            await self._undo.call((config.id, ""), self.agent.create_container(
                config.id, json.dumps(spec).encode(), guest_rootfs, stdin=config.stdio.has_stdin,
                runtime=self._sandbox.config.get("agent", "runtime")),
                undo=lambda: ignoring_gone(self.agent.remove_container(config.id, force=True)))
            created = True
            self.timeline.mark(f"{config.id} created")
            failpoints.reach(failpoints.CONTAINER_CREATED)
        except BaseException:
            if created:  # a step after the guest's create failed: the guest must not keep it
                with contextlib.suppress(Exception):
                    await self.agent.remove_container(config.id, force=True)
            self._remove_binds(config.id)
            self._sandbox.remove_container_rootfs(config.id)
            self._kinds.pop(config.id, None)
            if config.kind is ContainerKind.SINGLE:
                await self._teardown()
            raise
        return self._pid

    async def start_container(self, container_id: str) -> None:
        if self._guest(container_id):
            self.timeline.mark(f"{container_id} start")
            await self._undo.call((container_id, ""), self.agent.start_container(container_id),
                                  undo=lambda: ignoring_gone(self.agent.signal_process(
                                      container_id, "", signals.SIGKILL, all=True)))
            self.timeline.mark(f"{container_id} started")

    async def exec_process(self, container_id: str, exec_id: str, process_json: bytes,
                           stdio: StdioSpec) -> int:
        if not self._guest(container_id):
            raise FailedPrecondition(f"{container_id} is the pod VM: nothing to exec into")
        await self._undo.call((container_id, exec_id), self.agent.exec_process(
            container_id, exec_id, process_json, stdin=stdio.has_stdin),
            undo=lambda: self._undo_exec(container_id, exec_id))
        return self._pid

    async def _undo_exec(self, container_id: str, exec_id: str) -> None:
        await ignoring_gone(self.agent.signal_process(container_id, exec_id, signals.SIGKILL))
        await asyncio.wait_for(ignoring_gone(self.agent.wait_process(container_id, exec_id)), 10)
        await ignoring_gone(self.agent.delete_process(container_id, exec_id))

    async def delete_process(self, container_id: str, exec_id: str) -> None:
        if self._guest(container_id):
            await self.agent.delete_process(container_id, exec_id)

    async def wait_process(self, container_id: str, exec_id: str) -> ExitInfo:
        assert self._vm_exit is not None
        if not self._guest(container_id):
            return await asyncio.shield(self._vm_exit)
        waiter = asyncio.ensure_future(self.agent.wait_process(container_id, exec_id))
        try:
            done, _ = await asyncio.wait({waiter, self._vm_exit},
                                         return_when=asyncio.FIRST_COMPLETED)
            if waiter in done:
                r = waiter.result()
                return ExitInfo(r.exit_status, r.exited_at_ns or time.time_ns())
            return ExitInfo(255, self._vm_exit.result().exited_at_ns)  # the VM died under it
        finally:  # also when our caller is cancelled: the agent call is ours to end
            if not waiter.done():
                waiter.cancel()
                await asyncio.gather(waiter, return_exceptions=True)

    async def signal_process(self, container_id: str, exec_id: str, signal: int,
                             all: bool) -> None:
        if self._guest(container_id):
            await self.agent.signal_process(container_id, exec_id, signal, all=all)
        elif signal in (signals.SIGKILL, signals.SIGTERM, signals.SIGINT):
            # The pod VM: CRI only kills it after its app containers are gone. Kill returns at
            # once; Wait/the exit event report the VM's end, Delete waits for the teardown.
            self._begin_stop()

    async def remove_container(self, container_id: str) -> None:
        kind = self._kinds.pop(container_id, None)
        if kind is None:
            return
        if kind is not ContainerKind.POD_VM and self._sandbox is not None:
            try:
                if self._vm_exit is not None and not self._vm_exit.done():
                    await self._remove_in_guest(container_id)
            finally:
                self._remove_binds(container_id)
                self._sandbox.remove_container_rootfs(container_id)
        if not self._kinds and self._vm_owned_by_task:
            await self._teardown()

    async def _remove_in_guest(self, container_id: str) -> None:
        try:
            await self.agent.remove_container(container_id, force=True)
        except TtrpcError as exc:
            # The agent's connection is lost: the VM is dying (its exit may not be noticed yet)
            # and takes the container along. What is left is host-side: Delete goes on.
            if exc.code is not Code.UNAVAILABLE:
                raise
            log.info("remove %s: the guest agent is gone (%s)", container_id, exc.message)

    async def list_pids(self, container_id: str) -> list[int]:
        if not self._guest(container_id):
            return [self._pid]
        return await self.agent.list_processes(container_id)

    async def pause(self, container_id: str) -> None:
        if self._guest(container_id):
            await self.agent.pause_container(container_id)
        else:
            await self._sandbox.pause_vm()

    async def resume(self, container_id: str) -> None:
        if self._guest(container_id):
            await self.agent.resume_container(container_id)
        else:
            await self._sandbox.resume_vm()

    async def update(self, container_id: str, resources_json: bytes) -> None:
        if self._guest(container_id):
            await self.agent.update_container(container_id, resources_json)
        # The pod VM's own resources are fixed at boot: accepted, nothing to change.

    async def stats(self, container_id: str):
        if not self._guest(container_id):
            return vm_metrics(self._pid)
        return metrics_from_agent(await self.agent.stats_container(container_id))

    async def resize_pty(self, container_id: str, exec_id: str, rows: int, cols: int) -> None:
        await self.agent.tty_win_resize(container_id, exec_id, rows=rows, cols=cols)

    # -- host files the guest needs (CRI's hosts/resolv.conf/hostname, volumes) -----------------

    def _binds_dir(self, container_id: str) -> Path:
        assert self._sandbox is not None
        return self._sandbox.paths.shared_dir / _MOUNTS_DIR / container_id

    def _expose_binds(self, container_id: str, binds: list[HostBind]) -> None:
        if not binds:
            return
        directory = self._binds_dir(container_id)
        directory.mkdir(parents=True, exist_ok=True)
        for bind in binds:
            target = directory / bind.share_name
            if bind.source.is_dir():
                target.mkdir()
            else:
                target.touch()
            bind_mount(bind.source, target, readonly=bind.readonly, confined=True)

    def _remove_binds(self, container_id: str) -> None:
        if self._sandbox is None:
            return
        directory = self._binds_dir(container_id)
        if directory.exists():
            unmount_all_under(directory)  # first: never delete through a bind mount
            if not mounts_under(directory):
                shutil.rmtree(directory, ignore_errors=True)

    def streams(self, container_id: str, exec_id: str) -> _AgentStreams:
        return _AgentStreams(self, container_id, exec_id)

    def _begin_stop(self) -> None:
        if self._stop_task is None and self._sandbox is not None:
            self._stop_task = asyncio.ensure_future(self._sandbox.stop())

    async def _teardown(self) -> None:
        await self._undo.close()
        if self._oom_watch is not None:
            self._oom_watch.cancel()
            await asyncio.gather(self._oom_watch, return_exceptions=True)
            self._oom_watch = None
        self._begin_stop()
        if self._stop_task is not None:
            try:
                await asyncio.shield(self._stop_task)
            except Exception:
                log.exception("stopping the pod VM failed")
        if self._vm_watch is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._vm_watch), 10)
            except TimeoutError:
                self._vm_watch.cancel()
                await asyncio.gather(self._vm_watch, return_exceptions=True)
        self._sandbox = None
        self._stop_task = None

    async def close(self) -> None:
        self._kinds.clear()
        await self._teardown()


def _pod_vm(config: ContainerConfig) -> PodVm:
    """The pod VM a POD_VM/SINGLE task's spec asks for."""
    from shim.vmconfig.pod_resources import requested_resources

    return PodVm(config.sandbox_id, network_namespace(config.spec), hostname(config.spec),
                 requested_resources(config.spec))

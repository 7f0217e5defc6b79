"""Containers of the sandbox: lifecycle through a ContainerRuntime (native, crun or runc,
chosen per container), processes, stdio, cgroup views."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from . import bundle
from .cgroup import Cgroup, CgroupStats, cgroup_of
from .errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, RuntimeFailure
from .fsutil import remove_tree
from .oci_runtime import OciRuntime
from .oom import OomMonitor
from .pod import PodNamespaces
from .process import Process
from .reaper import ChildReaper, ExitInfo
from .runtime import SUPPORTED_RUNTIMES, ContainerRuntime, Launched, ProcessIO, Stdio
from .spawn import Spawner

log = logging.getLogger(__name__)

CREATED, RUNNING, PAUSED, STOPPED = "created", "running", "paused", "stopped"
_EXIT_GRACE_S = 10.0  # how long a removal waits for killed processes to be reaped


class Container:
    def __init__(self, container_id: str, runtime: ContainerRuntime, bundle_dir: str) -> None:
        self.id = container_id
        self.runtime = runtime
        self.bundle = bundle_dir
        self.status = CREATED
        self.init = Process(container_id, "", terminal=False)
        self.execs: dict[str, Process] = {}
        self.cgroup: Cgroup | None = None
        self.lock = asyncio.Lock()  # serializes lifecycle changes (start/pause/remove)

    def process(self, exec_id: str) -> Process:
        if not exec_id:
            return self.init
        try:
            return self.execs[exec_id]
        except KeyError:
            raise NotFound(f"no process {exec_id!r} in container {self.id}") from None

    def processes(self) -> list[Process]:
        return [self.init, *self.execs.values()]


class ContainerManager:
    def __init__(self, run_dir: str, cgroup_parent: str, default_runtime: str, no_pivot: bool,
                 spawner: Spawner, reaper: ChildReaper, oom: OomMonitor) -> None:
        self._bundles_dir = os.path.join(run_dir, "containers")
        self._sockets_dir = os.path.join(run_dir, "sockets")
        self._runtime_dir = os.path.join(run_dir, "runtime")
        self._cgroup_parent = "/" + cgroup_parent.strip("/")
        self.default_runtime = default_runtime
        self._no_pivot = no_pivot
        self._spawner = spawner
        self._reaper = reaper
        self._oom = oom
        self._runtimes: dict[str, ContainerRuntime] = {}
        self.pod = PodNamespaces(run_dir, reaper)
        self._containers: dict[str, Container] = {}
        self._reserved: set[str] = set()

    # -- lookups ----------------------------------------------------------------------------

    def get(self, container_id: str) -> Container:
        try:
            return self._containers[container_id]
        except KeyError:
            raise NotFound(f"no container {container_id!r}") from None

    def process(self, container_id: str, exec_id: str) -> Process:
        return self.get(container_id).process(exec_id)

    def runtime(self, name: str) -> ContainerRuntime:
        name = name or self.default_runtime
        if name not in SUPPORTED_RUNTIMES:
            raise InvalidArgument(f"unknown container runtime {name!r} "
                                  f"(supported: {', '.join(SUPPORTED_RUNTIMES)})")
        runtime = self._runtimes.get(name)
        if runtime is None:
            runtime = self._make_runtime(name)
            self._runtimes[name] = runtime
        return runtime

    def _make_runtime(self, name: str) -> ContainerRuntime:
        if name == "native":
            from .native.runtime import NativeRuntime  # ctypes & co. only when used

            return NativeRuntime(self._reaper, self._no_pivot)
        runtime = OciRuntime.find(name, self._runtime_dir, self._sockets_dir, self._spawner,
                                  self._reaper, self._no_pivot)
        if runtime is None:
            raise FailedPrecondition(f"OCI runtime {name} is not installed in the guest")
        return runtime

    # -- lifecycle --------------------------------------------------------------------------

    async def create(self, container_id: str, spec_json: bytes, rootfs_path: str,
                     want_stdin: bool, runtime_name: str) -> int:
        bundle.check_id("container id", container_id)
        if container_id in self._containers or container_id in self._reserved:
            raise AlreadyExists(f"container {container_id} already exists")
        runtime = self.runtime(runtime_name)
        spec = bundle.container_spec(spec_json, rootfs_path,
                                     f"{self._cgroup_parent}/{container_id}")
        rootfs_pin = bundle.open_rootfs(rootfs_path)
        try:
            await self._create(container_id, runtime, spec, want_stdin)
        finally:
            os.close(rootfs_pin)
        return self._containers[container_id].init.pid

    async def _create(self, container_id: str, runtime: ContainerRuntime, spec: dict,
                      want_stdin: bool) -> None:
        self.pod.ensure(self.pod.adapt(spec))
        self._reserved.add(container_id)
        bundle_dir = os.path.join(self._bundles_dir, container_id)
        container = Container(container_id, runtime, bundle_dir)
        try:
            os.makedirs(bundle_dir, mode=0o700)
            container.init.terminal = bool(spec["process"].get("terminal"))
            launched = await self._launch(container.init, want_stdin, lambda io: runtime.create(
                container_id, bundle_dir, spec, io))
        except BaseException:
            await self._discard_failed(container)
            self._reserved.discard(container_id)
            raise
        self._reserved.discard(container_id)
        container.cgroup = Cgroup(launched.cgroup or cgroup_of(container.init.pid)
                                  or spec["linux"]["cgroupsPath"])
        self._oom.watch(container_id, container.cgroup)
        container.init.on_exit(lambda _: self._on_init_exit(container))
        self._containers[container_id] = container
        log.info("created container %s (%s, pid %d)", container_id, runtime.name, container.init.pid)

    async def _launch(self, process: Process, want_stdin: bool, runtime_call) -> Launched:
        """Start `process` with runtime_call(ProcessIO) (a runtime's create/exec), wiring its
        stdio or terminal, and bind the pid it reports."""
        if process.terminal:
            launched: Launched = await runtime_call(ProcessIO(Stdio(), terminal=True))
            if launched.console_fd is None:
                raise RuntimeFailure(f"the runtime gave process {process.name} no terminal")
            process.attach_terminal(launched.console_fd, want_stdin)
        else:
            wiring = process.pipes(want_stdin)
            try:
                launched = await runtime_call(ProcessIO(wiring.stdio, terminal=False))
            except RuntimeFailure as exc:
                raise RuntimeFailure(_with_stderr(str(exc), process)) from None
            finally:
                wiring.close_child_ends()
        process.adopt(launched.pid, launched.exit)
        return launched

    def _on_init_exit(self, container: Container) -> None:
        container.status = STOPPED
        self._oom.check(container.id)
        info = container.init.exit_info()
        log.info("container %s init exited with status %s", container.id, info and info.status)

    async def start(self, container_id: str) -> None:
        container = self.get(container_id)
        async with container.lock:
            if container.status != CREATED:
                raise FailedPrecondition(f"container {container_id} is {container.status}, not created")
            await container.runtime.start(container_id)
            if container.status == CREATED:
                container.status = RUNNING

    async def exec(self, container_id: str, exec_id: str, process_json: bytes, want_stdin: bool) -> int:
        container = self.get(container_id)
        bundle.check_id("exec id", exec_id)
        if container.status != RUNNING:
            raise FailedPrecondition(f"cannot exec in container {container_id}: it is {container.status}")
        previous = container.execs.get(exec_id)
        if previous is not None:
            if not previous.exited:
                raise AlreadyExists(f"exec {exec_id} already exists in container {container_id}")
            previous.release()
        spec = bundle.exec_process(process_json)
        process = Process(container_id, exec_id, terminal=bool(spec.get("terminal")))
        container.execs[exec_id] = process
        try:
            await self._launch(process, want_stdin, lambda io: container.runtime.exec(
                container_id, container.bundle, spec, io))
        except BaseException:
            process.release()
            if container.execs.get(exec_id) is process:
                del container.execs[exec_id]
            raise
        log.info("exec %s in container %s: pid %d", exec_id, container_id, process.pid)
        return process.pid

    def delete_exec(self, container_id: str, exec_id: str) -> None:
        """The host is done with an exited exec: free its fds (pty, pipes) and buffers."""
        container = self.get(container_id)
        if not exec_id:
            raise InvalidArgument("the init process goes with RemoveContainer, not DeleteProcess")
        process = container.process(exec_id)
        if not process.exited:
            raise FailedPrecondition(f"exec {exec_id} in container {container_id} is still running")
        del container.execs[exec_id]
        process.release()

    async def wait(self, container_id: str, exec_id: str) -> ExitInfo:
        return await self.process(container_id, exec_id).wait()

    def signal(self, container_id: str, exec_id: str, sig: int, all_processes: bool) -> None:
        container = self.get(container_id)
        process = container.process(exec_id)
        if not 0 <= sig < signal.NSIG:  # 0: only whether it is there (as kill(2))
            raise InvalidArgument(f"invalid signal number {sig}")
        # `all` means the whole container only for its init: an exec's signal is the exec's
        # alone (as runc's shim does), or a probe's kill would take the container down.
        if all_processes and not exec_id and container.cgroup is not None and container.cgroup.exists():
            container.cgroup.signal_all(sig)
            return
        process.signal(sig)

    def list_pids(self, container_id: str) -> list[int]:
        container = self.get(container_id)
        return container.cgroup.pids() if container.cgroup is not None else []

    async def pause(self, container_id: str) -> None:
        container = self.get(container_id)
        async with container.lock:
            if container.status != RUNNING:
                raise FailedPrecondition(f"container {container_id} is {container.status}, not running")
            await container.runtime.pause(container_id)
            container.status = PAUSED

    async def resume(self, container_id: str) -> None:
        container = self.get(container_id)
        async with container.lock:
            if container.status != PAUSED:
                raise FailedPrecondition(f"container {container_id} is {container.status}, not paused")
            await container.runtime.resume(container_id)
            if container.status == PAUSED:
                container.status = RUNNING

    async def update(self, container_id: str, resources_json: bytes) -> None:
        container = self.get(container_id)
        resources = bundle.parse_object("resources_json", resources_json)
        if container.status == STOPPED:
            raise FailedPrecondition(f"container {container_id} is stopped")
        await container.runtime.update(container_id, resources)

    def stats(self, container_id: str) -> CgroupStats:
        container = self.get(container_id)
        return container.cgroup.stats() if container.cgroup is not None else CgroupStats()

    async def remove(self, container_id: str, force: bool) -> None:
        container = self.get(container_id)
        async with container.lock:
            if container.status in (RUNNING, PAUSED) and not force:
                raise FailedPrecondition(
                    f"container {container_id} is {container.status}: stop it first or force removal")
            if container.status == PAUSED and container.cgroup is not None:
                container.cgroup.signal_all(signal.SIGKILL)  # frozen tasks still die of SIGKILL
            await self._delete_runtime_state(container, force=force or container.status == PAUSED)
            await self._reap_all(container)
            self._containers.pop(container_id, None)
            self._oom.unwatch(container_id)
            for process in container.processes():
                process.release()
            remove_tree(container.bundle)
        log.info("removed container %s", container_id)

    async def remove_all(self) -> None:
        """Every container, then the pod's shared namespaces and /dev/shm."""
        for container_id in list(self._containers):
            try:
                await self.remove(container_id, force=True)
            except Exception as exc:  # keep going: free as much as possible
                log.error("removing container %s failed: %s", container_id, exc)
        await self.pod.destroy()

    async def _delete_runtime_state(self, container: Container, force: bool) -> None:
        try:
            await container.runtime.delete(container.id, force=force)
        except RuntimeFailure:
            if container.runtime.has_state(container.id):
                raise
            # Nothing left for the runtime to delete; our own cleanup still follows.

    async def _reap_all(self, container: Container) -> None:
        """Make sure no process of the container outlives its removal (nor stays a zombie)."""
        alive = [p for p in container.processes() if p.pid and not p.exited]
        for process in alive:
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if alive:
            done, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in alive],
                                               timeout=_EXIT_GRACE_S)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("container %s: %d processes not reaped after SIGKILL",
                            container.id, len(pending))

    async def _discard_failed(self, container: Container) -> None:
        """Undo a create that failed half-way."""
        try:
            if container.runtime.has_state(container.id):
                await container.runtime.delete(container.id, force=True)
        except Exception as exc:
            log.warning("cleanup of failed container %s: %s", container.id, exc)
        if container.init.pid and not container.init.exited:
            try:
                os.kill(container.init.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        container.init.release()
        remove_tree(container.bundle)


def _with_stderr(message: str, process: Process) -> str:
    """crun reports some early failures only on its stderr, which is the process's."""
    extra = process.stderr.peek().decode(errors="replace").strip()
    if extra and extra not in message:
        return f"{message} (stderr: {extra[-2048:]})"
    return message


"""Containers of the sandbox: lifecycle through the OCI runtime, processes, cgroup views."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import time

from . import bundle
from .cgroup import Cgroup, CgroupStats, cgroup_of
from .console_socket import ConsoleSocket
from .errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, RuntimeFailure
from .fsutil import read_text, remove_tree
from .oci_runtime import SUPPORTED_RUNTIMES, OciRuntime, Stdio
from .oom import OomMonitor
from .process import Process, receive_terminal
from .reaper import ChildReaper, ExitInfo
from .spawn import Spawner

log = logging.getLogger(__name__)

CREATED, RUNNING, PAUSED, STOPPED = "created", "running", "paused", "stopped"
_EXIT_GRACE_S = 10.0  # how long a removal waits for killed processes to be reaped


class Container:
    def __init__(self, container_id: str, runtime: OciRuntime, bundle_dir: str) -> None:
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
        self._runtimes: dict[str, OciRuntime] = {}
        self._containers: dict[str, Container] = {}
        self._reserved: set[str] = set()
        self._serial = itertools.count(1)

    # -- lookups ----------------------------------------------------------------------------

    def get(self, container_id: str) -> Container:
        try:
            return self._containers[container_id]
        except KeyError:
            raise NotFound(f"no container {container_id!r}") from None

    def process(self, container_id: str, exec_id: str) -> Process:
        return self.get(container_id).process(exec_id)

    def runtime(self, name: str) -> OciRuntime:
        name = name or self.default_runtime
        if name not in SUPPORTED_RUNTIMES:
            raise InvalidArgument(f"unknown OCI runtime {name!r} (supported: {', '.join(SUPPORTED_RUNTIMES)})")
        runtime = self._runtimes.get(name)
        if runtime is None:
            runtime = OciRuntime.find(name, os.path.join(self._runtime_dir, name),
                                      os.path.join(self._runtime_dir, "logs"), self._spawner,
                                      self._no_pivot)
            if runtime is None:
                raise FailedPrecondition(f"OCI runtime {name} is not installed in the guest")
            self._runtimes[name] = runtime
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
        self._reserved.add(container_id)
        bundle_dir = os.path.join(self._bundles_dir, container_id)
        container = Container(container_id, runtime, bundle_dir)
        try:
            os.makedirs(bundle_dir, mode=0o700)
            bundle.write_json(os.path.join(bundle_dir, "config.json"), spec)
            terminal = bool(spec["process"].get("terminal"))
            container.init.terminal = terminal
            pid_file = os.path.join(bundle_dir, "init.pid")

            async def runtime_call(stdio: Stdio, console: str | None) -> None:
                await runtime.create(container_id, bundle_dir, pid_file, stdio, console)

            await self._launch(container.init, want_stdin, pid_file, runtime_call)
        except BaseException:
            await self._discard_failed(container)
            self._reserved.discard(container_id)
            raise
        self._reserved.discard(container_id)
        container.cgroup = Cgroup(cgroup_of(container.init.pid) or spec["linux"]["cgroupsPath"])
        self._oom.watch(container_id, container.cgroup)
        container.init.on_exit(lambda _: self._on_init_exit(container))
        self._containers[container_id] = container
        log.info("created container %s (%s, pid %d)", container_id, runtime.name, container.init.pid)
        return container.init.pid

    async def _launch(self, process: Process, want_stdin: bool, pid_file: str, runtime_call) -> None:
        """Run a runtime command that starts `process` (create/exec), wiring its stdio, then
        adopt the pid the runtime wrote."""
        started_after = time.monotonic()
        if process.terminal:
            console = ConsoleSocket(os.path.join(self._sockets_dir_ready(), f"console-{next(self._serial)}.sock"))
            master = await receive_terminal(console, runtime_call(Stdio(), console.path))
            process.attach_terminal(master, want_stdin)
        else:
            wiring = process.pipes(want_stdin)
            try:
                await runtime_call(wiring.stdio, None)
            except RuntimeFailure as exc:
                raise RuntimeFailure(_with_stderr(str(exc), process)) from None
            finally:
                wiring.close_child_ends()
        pid = _read_pid(pid_file)
        process.adopt(pid, self._reaper.watch_adopted(pid, started_after))

    def _sockets_dir_ready(self) -> str:
        os.makedirs(self._sockets_dir, mode=0o700, exist_ok=True)
        return self._sockets_dir

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
        n = next(self._serial)
        process_file = os.path.join(container.bundle, f"exec-{n}.json")
        pid_file = os.path.join(container.bundle, f"exec-{n}.pid")

        async def runtime_call(stdio: Stdio, console: str | None) -> None:
            await container.runtime.exec(container_id, process_file, pid_file, stdio, console)

        try:
            bundle.write_json(process_file, spec)
            await self._launch(process, want_stdin, pid_file, runtime_call)
        except BaseException:
            process.release()
            if container.execs.get(exec_id) is process:
                del container.execs[exec_id]
            raise
        finally:
            for path in (process_file, pid_file):
                _unlink(path)
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
        path = os.path.join(container.bundle, f"resources-{next(self._serial)}.json")
        try:
            bundle.write_json(path, resources)
            await container.runtime.update(container_id, path)
        finally:
            _unlink(path)

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
        for container_id in list(self._containers):
            try:
                await self.remove(container_id, force=True)
            except Exception as exc:  # keep going: free as much as possible
                log.error("removing container %s failed: %s", container_id, exc)

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


def _read_pid(path: str) -> int:
    text = read_text(path).strip()
    if not text.isdigit():
        raise RuntimeFailure(f"the OCI runtime wrote no pid to {path}")
    return int(text)


def _with_stderr(message: str, process: Process) -> str:
    """crun reports some early failures only on its stderr, which is the process's."""
    extra = process.stderr.peek().decode(errors="replace").strip()
    if extra and extra not in message:
        return f"{message} (stderr: {extra[-2048:]})"
    return message


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

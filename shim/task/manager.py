"""The task domain: containers and their processes, driven by containerd's task API.

Ordering rules (containerd and CRI depend on them):
  * events leave in order create → start → exit → delete, exec-added → exec-started → exit;
    an exit is published only after its start (Start holds the process lock while it publishes,
    the exit monitor takes the same lock);
  * the exit event is queued *before* Wait callers wake (CRI learns of exits through Wait);
  * an exit is recorded exactly once; Wait may come before Start, or long after the exit;
  * the init process's exit is published after its execs' exits.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from google.protobuf import timestamp_pb2

from shim import events as topics
from shim.events import EventSink

from .backend import ContainerConfig, PodBackend
from .bundle import bundle_info, read_spec
from .errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from .process import ExitInfo, Process, State
from .rootfs import Mount, mount_rootfs, unmount_rootfs
from .spec_check import check_process, check_spec, runc_compatible
from .stdio import ProcessIO, StdioSpec

log = logging.getLogger(__name__)

UNKNOWN_EXIT = 255        # the process vanished with the VM: its real status is lost
OUTPUT_DRAIN_SECONDS = 2.0
EXEC_EXIT_GRACE_SECONDS = 2.0
MAX_SIGNAL = 64  # Linux: SIGRTMAX

# Ids end up in host and guest paths: accept what containerd's identifiers package accepts
# (letters, digits and inner [._-]), nothing that could climb out of a directory.
_VALID_ID = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")
_MAX_ID_LENGTH = 76


def validate_id(value: str, what: str) -> None:
    if not value:
        raise InvalidArgument(f"{what} is empty")
    if len(value) > _MAX_ID_LENGTH or not _VALID_ID.match(value):
        raise InvalidArgument(f"{what} {value!r} is not a valid identifier")


@dataclass
class _Proc:
    process: Process
    io: ProcessIO
    exec_json: bytes = b""   # an exec's OCI Process, sent to the agent at Start
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    monitor: asyncio.Task | None = None
    pending_size: tuple[int, int] | None = None  # (width, height) asked before an exec started


@dataclass
class _Container:
    config: ContainerConfig
    mounts: list[Mount]
    init: _Proc
    execs: dict[str, _Proc] = field(default_factory=dict)
    deleting: bool = False


@dataclass(frozen=True)
class ProcessStatus:
    container_id: str
    exec_id: str
    bundle: Path
    pid: int
    state: State
    stdio: StdioSpec
    exit: ExitInfo | None


@dataclass(frozen=True)
class CreateRequest:
    container_id: str
    bundle: Path
    mounts: list[Mount]
    stdio: StdioSpec


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp


class TaskManager:
    def __init__(self, backend: PodBackend, events: EventSink, namespace: str) -> None:
        self._backend = backend
        self._events = events
        self._namespace = namespace
        self._containers: dict[str, _Container] = {}
        self._creating: set[str] = set()
        self.empty = asyncio.Event()  # set whenever no container is left
        self.empty.set()
        backend.on_oom(self._publish_oom)

    def _publish_oom(self, container_id: str) -> None:
        from shim.api.containerd import events_pb2

        if container_id in self._containers:
            self._events.publish(topics.TASK_OOM, events_pb2.TaskOOM(container_id=container_id))

    # -- lookup -------------------------------------------------------------------------------

    def _container(self, container_id: str) -> _Container:
        try:
            return self._containers[container_id]
        except KeyError:
            raise NotFound(f"container {container_id} not found") from None

    def _proc(self, container_id: str, exec_id: str) -> _Proc:
        container = self._container(container_id)
        if not exec_id:
            return container.init
        try:
            return container.execs[exec_id]
        except KeyError:
            raise NotFound(f"exec {exec_id} not found in container {container_id}") from None

    @property
    def container_ids(self) -> list[str]:
        return list(self._containers)

    # -- create / start -------------------------------------------------------------------------

    async def create(self, req: CreateRequest) -> int:
        from shim.api.containerd import events_pb2, mount_pb2

        cid = req.container_id
        validate_id(cid, "container id")
        if cid in self._containers or cid in self._creating:
            raise AlreadyExists(f"container {cid} already exists")
        if not req.bundle.is_absolute():
            # A relative (or empty) bundle would resolve against the daemon's cwd: the
            # bundle of whichever container started this shim.
            raise InvalidArgument(f"bundle path {str(req.bundle)!r} is not absolute")
        try:
            spec = read_spec(req.bundle)
            info = bundle_info(cid, spec)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc
        if not spec:
            raise InvalidArgument(f"{req.bundle}/config.json is missing")
        check_spec(spec)
        spec = runc_compatible(spec)
        validate_id(info.sandbox_id, "sandbox id")
        self._creating.add(cid)
        self.empty.clear()
        rootfs = req.bundle / "rootfs"
        proc: _Proc | None = None
        try:
            if req.mounts:
                await mount_rootfs(req.mounts, rootfs)
            config = ContainerConfig(id=cid, bundle=req.bundle, spec=spec, rootfs=rootfs,
                                     stdio=req.stdio, kind=info.kind, sandbox_id=info.sandbox_id)
            io = ProcessIO(req.stdio, self._backend.streams(cid, ""), cid, self._namespace)
            await io.open()
            proc = _Proc(Process(cid, "", req.stdio), io)
            proc.process.pid = await self._backend.create_container(config)
        except BaseException:
            if proc is not None:
                await proc.io.close()
            if req.mounts:
                unmount_rootfs(rootfs)
            self._creating.discard(cid)
            self._update_empty()
            raise
        self._creating.discard(cid)
        self._containers[cid] = _Container(config, req.mounts, proc)
        proc.io.start()
        proc.monitor = asyncio.ensure_future(self._monitor(proc, is_init=True))
        self._events.publish(topics.TASK_CREATE, events_pb2.TaskCreate(
            container_id=cid, bundle=str(req.bundle),
            rootfs=[mount_pb2.Mount(type=m.type, source=m.source, target=m.target,
                                    options=list(m.options)) for m in req.mounts],
            io=events_pb2.TaskIO(stdin=req.stdio.stdin, stdout=req.stdio.stdout,
                                 stderr=req.stdio.stderr, terminal=req.stdio.terminal),
            pid=proc.process.pid))
        return proc.process.pid

    async def start(self, container_id: str, exec_id: str) -> int:
        from shim.api.containerd import events_pb2

        container = self._container(container_id)
        proc = self._proc(container_id, exec_id)
        async with proc.lock:
            proc.process.require(State.CREATED, action="start")
            if exec_id and container.init.process.state not in (State.RUNNING,):
                raise FailedPrecondition(
                    f"container {container_id} is {container.init.process.state.value}: "
                    "cannot start an exec in it")
            if exec_id:
                proc.process.pid = await self._backend.exec_process(
                    container_id, exec_id, proc.exec_json, proc.process.stdio)
                proc.io.start()
                proc.monitor = asyncio.ensure_future(self._monitor(proc, is_init=False))
                if proc.pending_size is not None:
                    try:
                        await self._apply_size(proc, *proc.pending_size)
                    except Exception as exc:  # cosmetic: the exec runs anyway
                        log.info("initial resize of %s: %s", proc.process.name, exc)
            else:
                await self._backend.start_container(container_id)
            proc.process.transition(State.RUNNING)
            if exec_id:
                self._events.publish(topics.TASK_EXEC_STARTED, events_pb2.TaskExecStarted(
                    container_id=container_id, exec_id=exec_id, pid=proc.process.pid))
            else:
                self._events.publish(topics.TASK_START, events_pb2.TaskStart(
                    container_id=container_id, pid=proc.process.pid))
        return proc.process.pid

    # -- exits ----------------------------------------------------------------------------------

    async def _monitor(self, proc: _Proc, is_init: bool) -> None:
        from shim.api.containerd import events_pb2

        p = proc.process
        try:
            info = await self._backend.wait_process(p.container_id, p.exec_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("wait for %s failed (%s): reporting it as exited", p.name, exc)
            info = ExitInfo(UNKNOWN_EXIT, time.time_ns())
        if not await proc.io.wait_output(OUTPUT_DRAIN_SECONDS):
            log.info("%s: output still open %ss after exit", p.name, OUTPUT_DRAIN_SECONDS)
        if is_init:
            await self._let_execs_exit_first(p.container_id)
        async with proc.lock:  # never before the start event
            if p.exit_info is not None:
                return
            self._events.publish(topics.TASK_EXIT, events_pb2.TaskExit(
                container_id=p.container_id, id=p.exec_id or p.container_id, pid=p.pid,
                exit_status=info.status, exited_at=_timestamp(info.exited_at_ns)))
            p.record_exit(info)  # wakes Wait callers, after the event is queued

    async def _let_execs_exit_first(self, container_id: str) -> None:
        container = self._containers.get(container_id)
        if container is None:
            return
        running = [asyncio.ensure_future(e.process.wait()) for e in container.execs.values()
                   if e.monitor is not None and e.process.exit_info is None]
        if not running:
            return
        try:
            await asyncio.wait(running, timeout=EXEC_EXIT_GRACE_SECONDS)
        finally:
            for waiter in running:  # ours: never left pending
                waiter.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def wait(self, container_id: str, exec_id: str) -> ExitInfo:
        return await self._proc(container_id, exec_id).process.wait()

    # -- delete ---------------------------------------------------------------------------------

    async def delete(self, container_id: str, exec_id: str) -> ProcessStatus:
        if exec_id:
            return await self._delete_exec(container_id, exec_id)
        return await self._delete_container(container_id)

    async def _delete_exec(self, container_id: str, exec_id: str) -> ProcessStatus:
        container = self._container(container_id)
        proc = self._proc(container_id, exec_id)
        proc.process.require(State.CREATED, State.STOPPED, action="delete")
        status = self._status(container, proc)
        proc.process.transition(State.DELETED)
        del container.execs[exec_id]
        await proc.io.close()
        # A never-started exec (its Start failed) has no monitor: wake its Wait callers.
        proc.process.record_exit(ExitInfo(UNKNOWN_EXIT, time.time_ns()))
        if proc.monitor is not None:  # the guest knows it: free its pty/pipes there too
            try:
                await self._backend.delete_process(container_id, exec_id)
            except Exception as exc:  # the VM may be gone; the host side is done anyway
                log.info("release of %s in the guest: %s", proc.process.name, exc)
        return status

    async def _end_exec(self, proc: _Proc) -> None:
        """The container is going away: its exec ends now. Wait callers wake, and an exec
        that was started gets its exit event (never one without a start)."""
        from shim.api.containerd import events_pb2

        if proc.monitor is not None:
            proc.monitor.cancel()
            await asyncio.gather(proc.monitor, return_exceptions=True)
        await proc.io.close()
        p = proc.process
        async with proc.lock:
            if p.exit_info is not None:
                return
            info = ExitInfo(UNKNOWN_EXIT, time.time_ns())
            if p.state in (State.RUNNING, State.PAUSED):
                self._events.publish(topics.TASK_EXIT, events_pb2.TaskExit(
                    container_id=p.container_id, id=p.exec_id, pid=p.pid,
                    exit_status=info.status, exited_at=_timestamp(info.exited_at_ns)))
            p.record_exit(info)

    async def _delete_container(self, container_id: str) -> ProcessStatus:
        from shim.api.containerd import events_pb2

        container = self._container(container_id)
        if container.deleting:
            raise NotFound(f"container {container_id} is being deleted")
        init = container.init
        init.process.require(State.CREATED, State.STOPPED, action="delete")
        container.deleting = True
        try:
            if init.process.exit_info is None:  # created, never started: make it go away
                try:
                    await self._backend.signal_process(container_id, "", 9, True)
                except Exception as exc:
                    log.info("kill of created %s: %s", container_id, exc)
                try:
                    await asyncio.wait_for(init.process.wait(), 10)
                except TimeoutError:
                    log.warning("%s did not report its exit; deleting anyway", container_id)
            for exec_proc in list(container.execs.values()):
                await self._end_exec(exec_proc)
            container.execs.clear()
        except BaseException:
            container.deleting = False  # e.g. the caller hung up: a retry must still work
            raise
        status = self._status(container, init)
        try:
            await self._backend.remove_container(container_id)
        finally:
            init.process.state = State.DELETED
            if init.monitor is not None:
                init.monitor.cancel()
                await asyncio.gather(init.monitor, return_exceptions=True)
            # No exit seen (it never reported one): Wait callers must still wake.
            init.process.record_exit(ExitInfo(UNKNOWN_EXIT, time.time_ns()))
            await init.io.close()
            if container.mounts:
                unmount_rootfs(container.config.rootfs)
            del self._containers[container_id]
            self._update_empty()
        exit_info = init.process.exit_info
        assert exit_info is not None
        status = replace(status, exit=exit_info)
        self._events.publish(topics.TASK_DELETE, events_pb2.TaskDelete(
            container_id=container_id, pid=status.pid, exit_status=exit_info.status,
            exited_at=_timestamp(exit_info.exited_at_ns), id=container_id))
        return status

    def _update_empty(self) -> None:
        if not self._containers and not self._creating:
            self.empty.set()

    # -- exec -------------------------------------------------------------------------------------

    async def exec(self, container_id: str, exec_id: str, process_json: bytes,
                   stdio: StdioSpec) -> None:
        from shim.api.containerd import events_pb2

        container = self._container(container_id)
        validate_id(exec_id, "exec id")
        if exec_id in container.execs:
            raise AlreadyExists(f"exec {exec_id} already exists in container {container_id}")
        if container.deleting:
            raise FailedPrecondition(f"container {container_id} is being deleted")
        container.init.process.require(State.RUNNING, action="exec in")
        try:
            process = json.loads(process_json)
        except ValueError as exc:
            raise InvalidArgument(f"exec {exec_id}: process spec is not JSON: {exc}") from exc
        check_process(process, f"exec {exec_id}: process")
        io = ProcessIO(stdio, self._backend.streams(container_id, exec_id), container_id,
                       self._namespace)
        proc = _Proc(Process(container_id, exec_id, stdio), io, exec_json=process_json)
        container.execs[exec_id] = proc  # reserve the id before awaiting
        try:
            await io.open()
        except BaseException:
            del container.execs[exec_id]
            raise
        self._events.publish(topics.TASK_EXEC_ADDED, events_pb2.TaskExecAdded(
            container_id=container_id, exec_id=exec_id))

    # -- signals and control --------------------------------------------------------------------

    async def kill(self, container_id: str, exec_id: str, signal: int, all: bool) -> None:
        proc = self._proc(container_id, exec_id)
        if not 0 <= signal <= MAX_SIGNAL:  # 0 only checks that the process is there
            raise InvalidArgument(f"signal {signal} is out of range [0, {MAX_SIGNAL}]")
        if proc.process.exit_info is not None or proc.process.state is State.DELETED:
            raise NotFound(f"process {proc.process.name} has already exited")
        if exec_id and proc.monitor is None:
            raise FailedPrecondition(f"exec {exec_id} has not been started")
        await self._backend.signal_process(container_id, exec_id, signal, all)

    async def pause(self, container_id: str) -> None:
        from shim.api.containerd import events_pb2

        init = self._container(container_id).init
        init.process.require(State.RUNNING, action="pause")
        await self._backend.pause(container_id)
        init.process.transition(State.PAUSED)
        self._events.publish(topics.TASK_PAUSED, events_pb2.TaskPaused(container_id=container_id))

    async def resume(self, container_id: str) -> None:
        from shim.api.containerd import events_pb2

        init = self._container(container_id).init
        init.process.require(State.PAUSED, action="resume")
        await self._backend.resume(container_id)
        init.process.transition(State.RUNNING)
        self._events.publish(topics.TASK_RESUMED, events_pb2.TaskResumed(container_id=container_id))

    async def close_io(self, container_id: str, exec_id: str) -> None:
        await self._proc(container_id, exec_id).io.close_stdin()

    async def resize_pty(self, container_id: str, exec_id: str, width: int, height: int) -> None:
        proc = self._proc(container_id, exec_id)
        if not proc.process.stdio.terminal:
            return  # as runc's shim: a process without a console ignores resizes
        if proc.process.exit_info is not None:
            raise FailedPrecondition(f"process {proc.process.name} has exited: cannot resize")
        async with proc.lock:
            if exec_id and proc.monitor is None:
                proc.pending_size = (width, height)  # the guest knows the exec only once started
                return
            await self._apply_size(proc, width, height)

    async def _apply_size(self, proc: _Proc, width: int, height: int) -> None:
        p = proc.process
        await self._backend.resize_pty(p.container_id, p.exec_id, rows=height, cols=width)

    async def update(self, container_id: str, resources_json: bytes) -> None:
        self._container(container_id).init.process.require(
            State.CREATED, State.RUNNING, State.PAUSED, action="update")
        await self._backend.update(container_id, resources_json)

    async def pids(self, container_id: str) -> list[int]:
        self._container(container_id)
        return await self._backend.list_pids(container_id)

    async def stats(self, container_id: str):
        self._container(container_id)
        return await self._backend.stats(container_id)

    # -- state ------------------------------------------------------------------------------------

    def _status(self, container: _Container, proc: _Proc) -> ProcessStatus:
        p = proc.process
        return ProcessStatus(container_id=p.container_id, exec_id=p.exec_id,
                             bundle=container.config.bundle, pid=p.pid, state=p.state,
                             stdio=p.stdio, exit=p.exit_info)

    def state(self, container_id: str, exec_id: str) -> ProcessStatus:
        return self._status(self._container(container_id), self._proc(container_id, exec_id))

    def task_pid(self, container_id: str) -> int:
        return self._container(container_id).init.process.pid if container_id in self._containers else 0

    async def close(self) -> None:
        """Daemon exit: stop monitors and pumps, undo mounts, tear the VM down."""
        for container in list(self._containers.values()):
            for proc in [container.init, *container.execs.values()]:
                if proc.monitor is not None:
                    proc.monitor.cancel()
                    await asyncio.gather(proc.monitor, return_exceptions=True)
                await proc.io.close()
            if container.mounts:
                unmount_rootfs(container.config.rootfs)
        self._containers.clear()
        await self._backend.close()
        self.empty.set()

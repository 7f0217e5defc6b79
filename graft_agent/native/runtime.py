"""The agent's own container runtime: a ContainerRuntime that clones container processes
itself (the way Kata's agent does) instead of exec'ing crun/runc for each step.

create: validate the spec into a plan, compile its seccomp profile, make the cgroup (limits,
device filter), clone the init straight into its namespaces and cgroup (clone3 with
CLONE_INTO_CGROUP); the child sets everything up and waits. start: tell it to exec. exec: clone
into the init's pid namespace and cgroup, setns into its other namespaces, exec.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from typing import Callable

from ..errors import FailedPrecondition, InvalidArgument, NotFound, RuntimeFailure
from ..reaper import ChildReaper
from ..runtime import Launched, ProcessIO
from ..spawn import DEVNULL, wait_readable
from . import child, linux as L
from .capabilities import last_cap
from .cgroups import NativeCgroup
from .fork import PidNamespaceSwitch, clone_child, handled_signals
from .process_spec import plan_process
from .resources import plan_resources
from .seccomp_filter import SeccompCompiler, SeccompProgram
from .spec import NAMESPACE_FLAGS, ContainerPlan, plan_container

log = logging.getLogger(__name__)

_SETUP_TIMEOUT_S = 60.0


class _Container:
    def __init__(self, plan: ContainerPlan, cgroup: NativeCgroup, seccomp: SeccompProgram | None) -> None:
        self.plan = plan
        self.cgroup = cgroup
        self.seccomp = seccomp
        self.pid = 0
        self.pidfd = -1
        self.control: socket.socket | None = None   # until the init exec'd

    def close(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


class NativeRuntime:
    name = "native"

    def __init__(self, reaper: ChildReaper, no_pivot: bool) -> None:
        self._reaper = reaper
        self._no_pivot = no_pivot
        self._containers: dict[str, _Container] = {}
        self._seccomp = SeccompCompiler()
        self._last_cap = last_cap()
        self._pidns = PidNamespaceSwitch()

    def _get(self, container_id: str) -> _Container:
        try:
            return self._containers[container_id]
        except KeyError:
            raise NotFound(f"native runtime: no container {container_id!r}") from None

    def has_state(self, container_id: str) -> bool:
        return container_id in self._containers

    # -- create / start ---------------------------------------------------------------------------

    async def create(self, container_id: str, bundle_dir: str, spec: dict, io: ProcessIO) -> Launched:
        plan = plan_container(spec)
        if io.terminal != plan.process.terminal:
            raise InvalidArgument("process.terminal and the requested stdio disagree")
        seccomp = self._seccomp.program(plan.seccomp) if plan.seccomp is not None else None
        cgroup = NativeCgroup.create(plan.cgroup_path, plan.resources)
        container = _Container(plan, cgroup, seccomp)
        join_fds: list[tuple[int, int]] = []
        pidns_fd = -1
        control = None
        try:
            for kind, path in plan.namespaces.join:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    raise InvalidArgument(f"linux.namespaces: cannot open the {kind} namespace "
                                          f"{path}: {exc.strerror}") from None
                if kind == "pid":
                    pidns_fd = fd
                else:
                    join_fds.append((fd, NAMESPACE_FLAGS[kind]))
            common, control, owned = self._channel(io, seccomp)
            setup = child.InitSetup(common, plan, join_fds, self._no_pivot)
            pid, exit_future = self._clone(child.init_body, setup, plan.namespaces.clone_flags,
                                           cgroup.fd, pidns_fd, common, owned)
        except BaseException:
            if control is not None:
                control.close()
            await cgroup.remove()
            raise
        finally:
            _close_all([fd for fd, _ in join_fds] + [pidns_fd])
        container.pid, container.control = pid, control
        self._containers[container_id] = container
        try:
            container.pidfd = L.pidfd_open(pid)
            console = await self._await_setup(control, exit_future, want_ready=True)
        except BaseException:
            await self.delete(container_id, force=True)
            raise
        log.debug("native: container %s created (pid %d)", container_id, pid)
        return Launched(pid, exit_future, console, cgroup.path)   # cloned into it

    async def start(self, container_id: str) -> None:
        container = self._get(container_id)
        control = container.control
        if control is None:
            raise FailedPrecondition(f"container {container_id} was already started")
        container.control = None
        try:
            control.send(child.START)
            message, fds = await _receive(control)   # end of file: it exec'd
            _close_all(fds)
            if message.startswith(child.ERROR):
                raise RuntimeFailure(f"native start of {container_id}: "
                                     f"{message[1:].decode(errors='replace')}")
        except (BrokenPipeError, ConnectionResetError):
            raise RuntimeFailure(f"native start of {container_id}: the init is gone") from None
        finally:
            control.close()

    # -- exec -------------------------------------------------------------------------------------

    async def exec(self, container_id: str, bundle_dir: str, process: dict, io: ProcessIO) -> Launched:
        container = self._get(container_id)
        plan = plan_process(process)
        if io.terminal != plan.terminal:
            raise InvalidArgument("process.terminal and the requested stdio disagree")
        if container.pidfd < 0:
            raise FailedPrecondition(f"container {container_id} has no init to join")
        flags = 0
        for kind in container.plan.namespaces.types - {"pid"}:
            flags |= NAMESPACE_FLAGS[kind]
        common, control, owned = self._channel(io, container.seccomp)
        setup = child.ExecSetup(common, plan, container.plan, container.pidfd, flags)
        pidns = container.pidfd if "pid" in container.plan.namespaces.types else -1
        try:
            pid, exit_future = self._clone(child.exec_body, setup, 0, container.cgroup.fd, pidns,
                                           common, owned)
        except BaseException:
            control.close()
            raise
        try:
            console = await self._await_setup(control, exit_future, want_ready=False)
        except BaseException:
            _kill(pid)
            raise
        finally:
            control.close()
        return Launched(pid, exit_future, console)

    # -- the clone itself -------------------------------------------------------------------------

    def _channel(self, io: ProcessIO, seccomp: SeccompProgram | None
                 ) -> tuple[child.ChildSetup, socket.socket, list[int]]:
        """The child's setup, our end of the control socket, and fds to close after the clone."""
        owned: list[int] = []
        stdio = None
        if not io.terminal:
            fds = []
            for fd in io.stdio:
                if fd == DEVNULL:
                    fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                    owned.append(fd)
                fds.append(fd)
            stdio = (fds[0], fds[1], fds[2])
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        return child.ChildSetup(theirs, stdio, seccomp, self._last_cap, handled_signals()), ours, owned

    def _clone(self, body: Callable, setup, flags: int, cgroup_fd: int, pidns_fd: int,
               common: child.ChildSetup, owned: list[int]) -> tuple[int, asyncio.Future]:
        """Clone the child, which runs `body(setup)` and never returns here."""
        try:
            pid = clone_child(lambda: child.run(body, setup), flags, cgroup_fd, pidns_fd, self._pidns)
            exit_future = self._reaper.watch_spawned(pid)
        finally:
            common.control.close()   # the child's end, in the child only from now on
            _close_all(owned)
        return pid, exit_future

    async def _await_setup(self, control: socket.socket, exit_future: asyncio.Future,
                           want_ready: bool) -> int | None:
        """Read the child's reports until it is ready (init) or has exec'd (exec)."""
        console = None
        try:
            async with asyncio.timeout(_SETUP_TIMEOUT_S):
                while True:
                    message, fds = await _receive(control)
                    if message == child.TERMINAL and fds and console is None:
                        console = fds.pop(0)
                    _close_all(fds)
                    if message == child.TERMINAL:
                        continue
                    if message == child.READY and want_ready:
                        return console
                    if message.startswith(child.ERROR):
                        raise RuntimeFailure(message[1:].decode(errors="replace"))
                    if not message:
                        if want_ready:
                            info = await asyncio.wait_for(asyncio.shield(exit_future), 5)
                            raise RuntimeFailure(f"the container's init exited during setup "
                                                 f"(status {info.status})")
                        return console
                    raise RuntimeFailure(f"unexpected message from the container's init: {message!r}")
        except TimeoutError:
            raise RuntimeFailure(f"the container's process did not finish its setup within "
                                 f"{_SETUP_TIMEOUT_S:.0f}s") from None
        except BaseException:
            if console is not None:
                os.close(console)
            raise

    # -- the rest of the lifecycle ----------------------------------------------------------------

    async def pause(self, container_id: str) -> None:
        await self._get(container_id).cgroup.freeze(True)

    async def resume(self, container_id: str) -> None:
        await self._get(container_id).cgroup.freeze(False)

    async def update(self, container_id: str, resources: dict) -> None:
        self._get(container_id).cgroup.apply(plan_resources(resources))

    async def delete(self, container_id: str, force: bool = False) -> None:
        container = self._get(container_id)
        if not force and container.control is None and container.cgroup.events().get("populated") == "1":
            raise FailedPrecondition(f"container {container_id} still has running processes")
        container.close()
        await container.cgroup.remove()   # kills whatever is left
        self._containers.pop(container_id, None)


async def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(sock, 65536, 4, socket.MSG_CMSG_CLOEXEC)
            return message, fds
        except BlockingIOError:
            await wait_readable(sock.fileno())
        except ConnectionResetError:
            return b"", []


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

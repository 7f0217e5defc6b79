"""The Sandbox API's domain: the one pod sandbox of this shim, driven by containerd 2.x.

With `sandboxer = "shim"` containerd's CRI creates no pause container. Per pod it runs CNI,
execs the shim's `start` (no config.json in the bundle), then CreateSandbox (netns path, CRI pod
config) → StartSandbox (the VM boots; its VMM pid is the pod's pid, /proc/<pid>/ns/* are the
pod's namespaces) → WaitSandbox kept pending. App containers then arrive as tasks on the same
socket. StopPodSandbox → StopSandbox; RemovePodSandbox → ShutdownSandbox (the shim exits) and
the shim's `delete`. A failed Create/Start is followed by ShutdownSandbox and `delete` too.

Rules: one sandbox per shim, with the shim's own id; Start only from CREATED; Stop, Wait,
Status, Shutdown work in every state (Stop and Shutdown are idempotent); WaitSandbox returns
once the sandbox ended (its VM exited or it was stopped before it ever started).
"""
from __future__ import annotations

import asyncio
import enum
import logging
import platform
import time
from dataclasses import dataclass

from google.protobuf.message import Message

from .backend import PodBackend, PodVm
from .errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from .manager import validate_id
from .process import ExitInfo

log = logging.getLogger(__name__)

NEVER_STARTED_EXIT = 0  # stopped before its VM existed: nothing failed
UNKNOWN_EXIT = 255      # the VM's end could not be observed
EXIT_RECORD_SECONDS = 15.0  # after stop_pod, for the VM's exit to be recorded


class SandboxState(enum.Enum):
    CREATED = "created"    # CreateSandbox recorded it; no VM yet
    STARTING = "starting"  # the VM is booting
    READY = "ready"        # the VM runs
    STOPPED = "stopped"    # the VM is gone (stopped or exited) or never came


@dataclass(frozen=True)
class SandboxStatus:
    sandbox_id: str
    pid: int
    state: SandboxState
    created_at_ns: int
    exit: ExitInfo | None
    info: dict[str, str]


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str  # GOARCH spelling, as containerd compares platforms


_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
           "s390x": "s390x", "riscv64": "riscv64"}


def guest_platform() -> Platform:
    """The guest runs the host's architecture (its kernel and initrd are built from the host's
    Debian packages), and Linux."""
    machine = platform.machine()
    return Platform("linux", _GOARCH.get(machine, machine))


@dataclass
class _Sandbox:
    pod: PodVm
    created_at_ns: int
    exited: asyncio.Future[ExitInfo]
    state: SandboxState = SandboxState.CREATED
    pid: int = 0


class SandboxController:
    def __init__(self, backend: PodBackend, shim_id: str) -> None:
        self._backend = backend
        self._shim_id = shim_id
        self._sandbox: _Sandbox | None = None
        self._shut_down = False
        self._lock = asyncio.Lock()         # start, stop and shutdown never overlap
        self._watch: asyncio.Task | None = None

    @property
    def active(self) -> bool:
        """A sandbox exists that was not shut down: the shim must not exit on its own."""
        return self._sandbox is not None and not self._shut_down

    def _get(self, sandbox_id: str) -> _Sandbox:
        if self._sandbox is None or self._sandbox.pod.sandbox_id != sandbox_id:
            raise NotFound(f"sandbox {sandbox_id} not found")
        return self._sandbox

    async def create(self, pod: PodVm) -> None:
        sandbox_id = pod.sandbox_id
        validate_id(sandbox_id, "sandbox id")
        if sandbox_id != self._shim_id:
            raise InvalidArgument(f"sandbox {sandbox_id}: this shim was started for "
                                  f"{self._shim_id}")
        if self._sandbox is not None:
            raise AlreadyExists(f"sandbox {sandbox_id} already exists")
        if self._shut_down:
            raise FailedPrecondition("this shim is shutting down")
        if pod.netns is not None and not pod.netns.exists():
            raise InvalidArgument(f"sandbox {sandbox_id}: netns {pod.netns} does not exist")
        self._sandbox = _Sandbox(pod, time.time_ns(), asyncio.get_running_loop().create_future())
        log.info("sandbox %s created (netns %s)", sandbox_id, pod.netns)

    async def start(self, sandbox_id: str) -> tuple[int, int]:
        """Boot the VM. → (pid, created_at_ns)."""
        async with self._lock:
            sandbox = self._get(sandbox_id)
            if sandbox.state is not SandboxState.CREATED:
                raise FailedPrecondition(f"sandbox {sandbox_id} is {sandbox.state.value}, "
                                         "not created")
            sandbox.state = SandboxState.STARTING
            try:
                sandbox.pid = await self._backend.launch_pod(sandbox.pod)
            except BaseException:
                sandbox.state = SandboxState.STOPPED
                self._end(sandbox, ExitInfo(NEVER_STARTED_EXIT, time.time_ns()))
                raise
            sandbox.state = SandboxState.READY
            self._watch = asyncio.ensure_future(self._watch_vm(sandbox))
            return sandbox.pid, sandbox.created_at_ns

    async def _watch_vm(self, sandbox: _Sandbox) -> None:
        try:
            info = await self._backend.wait_pod()
        except Exception as exc:
            log.warning("sandbox %s: waiting for its VM failed: %s",
                        sandbox.pod.sandbox_id, exc)
            info = ExitInfo(UNKNOWN_EXIT, time.time_ns())
        sandbox.state = SandboxState.STOPPED
        log.info("sandbox %s: its VM exited (%s)", sandbox.pod.sandbox_id, info.status)
        self._end(sandbox, info)

    @staticmethod
    def _end(sandbox: _Sandbox, info: ExitInfo) -> None:
        if not sandbox.exited.done():
            sandbox.exited.set_result(info)

    def platform(self, sandbox_id: str) -> Platform:
        self._get(sandbox_id)
        return guest_platform()

    async def stop(self, sandbox_id: str) -> None:
        async with self._lock:
            sandbox = self._get(sandbox_id)
            await self._stop(sandbox)

    async def _stop(self, sandbox: _Sandbox) -> None:
        if sandbox.state is SandboxState.READY:
            await self._backend.stop_pod()
            try:  # the watch records the VM's own exit status
                await asyncio.wait_for(asyncio.shield(sandbox.exited), EXIT_RECORD_SECONDS)
            except TimeoutError:
                log.warning("sandbox %s: the VM's exit was not seen after stopping it",
                            sandbox.pod.sandbox_id)
                self._end(sandbox, ExitInfo(UNKNOWN_EXIT, time.time_ns()))
        sandbox.state = SandboxState.STOPPED
        self._end(sandbox, ExitInfo(NEVER_STARTED_EXIT, time.time_ns()))

    async def wait(self, sandbox_id: str) -> ExitInfo:
        return await asyncio.shield(self._get(sandbox_id).exited)

    def status(self, sandbox_id: str, verbose: bool) -> SandboxStatus:
        sandbox = self._get(sandbox_id)
        exit_info = sandbox.exited.result() if sandbox.exited.done() else None
        running = sandbox.state is SandboxState.READY
        info = self._backend.pod_details() if verbose and running else {}
        return SandboxStatus(sandbox_id, sandbox.pid if running else 0, sandbox.state,
                             sandbox.created_at_ns, exit_info, info)

    def ping(self, sandbox_id: str) -> None:
        sandbox = self._get(sandbox_id)
        if sandbox.state is not SandboxState.READY:
            raise FailedPrecondition(f"sandbox {sandbox_id} is {sandbox.state.value}")

    async def metrics(self, sandbox_id: str) -> Message:
        sandbox = self._get(sandbox_id)
        if sandbox.state is not SandboxState.READY:
            raise FailedPrecondition(f"sandbox {sandbox_id} is {sandbox.state.value}")
        return await self._backend.pod_metrics()

    async def shutdown(self, sandbox_id: str) -> None:
        """Stop the sandbox (if still running); the shim may exit afterwards — also when this
        call is cut short (the shim's own teardown then stops the VM)."""
        sandbox = self._get(sandbox_id)
        self._shut_down = True
        async with self._lock:
            await self._stop(sandbox)

    async def close(self) -> None:
        """Daemon exit: stop watching (the task layer's close tears the VM down)."""
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None

"""The interface every container runtime of the agent implements (crun/runc through their
command line, or the agent's native one), chosen per container."""

from __future__ import annotations

import asyncio
from typing import NamedTuple, Protocol

from .reaper import ExitInfo
from .spawn import DEVNULL

SUPPORTED_RUNTIMES = ("native", "crun", "runc")


class Stdio(NamedTuple):
    """fds the container process gets as stdin/stdout/stderr (the caller keeps and closes them)."""
    stdin: int = DEVNULL
    stdout: int = DEVNULL
    stderr: int = DEVNULL


class ProcessIO(NamedTuple):
    """How a new process is wired: to `stdio`, or (terminal=True) to a new terminal whose
    master the runtime hands back in Launched.console_fd."""
    stdio: Stdio
    terminal: bool


class Launched(NamedTuple):
    pid: int
    exit: asyncio.Future[ExitInfo]   # resolved by the agent's reaper
    console_fd: int | None           # the terminal's master (the caller owns it)
    cgroup: str | None = None        # its cgroup, when the runtime knows it (else read from /proc)


class ContainerRuntime(Protocol):
    name: str

    async def create(self, container_id: str, bundle_dir: str, spec: dict, io: ProcessIO) -> Launched:
        """Set the container up; its init is created but waits for start()."""

    async def start(self, container_id: str) -> None: ...

    async def exec(self, container_id: str, bundle_dir: str, process: dict, io: ProcessIO) -> Launched:
        """Run another process in the running container."""

    async def pause(self, container_id: str) -> None: ...

    async def resume(self, container_id: str) -> None: ...

    async def update(self, container_id: str, resources: dict) -> None:
        """Apply new `linux.resources`."""

    async def delete(self, container_id: str, force: bool = False) -> None:
        """Forget the container (force: kill what still runs in it first)."""

    def has_state(self, container_id: str) -> bool:
        """Whether the runtime still holds anything of the container."""

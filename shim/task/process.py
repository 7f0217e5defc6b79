"""One process of a container (the init process or an exec) and its state machine."""
from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

from .errors import FailedPrecondition
from .stdio import StdioSpec


class State(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    DELETED = "deleted"


_ALLOWED: dict[State, frozenset[State]] = {
    State.CREATED: frozenset({State.RUNNING, State.STOPPED, State.DELETED}),
    State.RUNNING: frozenset({State.PAUSED, State.STOPPED}),
    State.PAUSED: frozenset({State.RUNNING, State.STOPPED}),
    State.STOPPED: frozenset({State.DELETED}),
    State.DELETED: frozenset(),
}


@dataclass(frozen=True)
class ExitInfo:
    status: int
    exited_at_ns: int


class Process:
    """Holds the state and the exit latch; the manager drives transitions."""

    def __init__(self, container_id: str, exec_id: str, stdio: StdioSpec, pid: int = 0) -> None:
        self.container_id = container_id
        self.exec_id = exec_id
        self.stdio = stdio
        self.pid = pid
        self.state = State.CREATED
        self._exit: asyncio.Future[ExitInfo] = asyncio.get_running_loop().create_future()

    @property
    def name(self) -> str:
        return f"{self.container_id}/{self.exec_id}" if self.exec_id else self.container_id

    def transition(self, target: State) -> None:
        if target not in _ALLOWED[self.state]:
            raise FailedPrecondition(
                f"process {self.name} is {self.state.value}: cannot become {target.value}")
        self.state = target

    def require(self, *states: State, action: str) -> None:
        if self.state not in states:
            raise FailedPrecondition(f"cannot {action} process {self.name}: it is {self.state.value}")

    @property
    def exit_info(self) -> ExitInfo | None:
        return self._exit.result() if self._exit.done() else None

    def record_exit(self, info: ExitInfo) -> bool:
        """Mark the process stopped and wake waiters; False if it had already exited."""
        if self._exit.done():
            return False
        if self.state is not State.DELETED:
            self.state = State.STOPPED
        self._exit.set_result(info)
        return True

    async def wait(self) -> ExitInfo:
        return await asyncio.shield(self._exit)

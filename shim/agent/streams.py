"""Moving a guest process's standard streams through the agent's RPCs.

Shared by `graft debug run` (host terminal/pipes) and the task service (fifos).
"""
from __future__ import annotations

from typing import AsyncIterator, Awaitable, Callable, Literal

from shim.agent.client import AgentClient
from shim.agent.pacing import IdleBackoff
from shim.ttrpc import Code, TtrpcError

Sink = Callable[[bytes], Awaitable[None]]


async def copy_output(agent: AgentClient, container_id: str, exec_id: str,
                      stream: Literal["stdout", "stderr"], sink: Sink) -> None:
    """Long-poll one output stream into *sink* until the agent reports EOF."""
    read = agent.read_stdout if stream == "stdout" else agent.read_stderr
    backoff = IdleBackoff()
    while True:
        chunk = await read(container_id, exec_id)
        if chunk.data:
            backoff.useful()
            await sink(chunk.data)
        if chunk.eof:
            return
        if not chunk.data:  # an empty long-poll answer: do not spin on it
            await backoff.empty()


async def copy_input(agent: AgentClient, container_id: str, exec_id: str,
                     source: AsyncIterator[bytes]) -> None:
    """Feed *source* to the process's stdin, then close it (EOF). Stops quietly
    when the process no longer takes input (it exited or closed its stdin):
    input nobody reads is not an error (`true < big-file` succeeds)."""
    async for data in source:
        view = memoryview(data)
        while view:
            try:
                written = await agent.write_stdin(container_id, exec_id, bytes(view))
            except TtrpcError as exc:
                if exc.code == Code.FAILED_PRECONDITION:
                    return
                raise
            if written <= 0:
                raise BrokenPipeError(f"stdin of {container_id}/{exec_id!r} accepts no data")
            view = view[written:]
    await agent.close_stdin(container_id, exec_id)

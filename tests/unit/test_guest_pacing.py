"""The host paces what a misbehaving guest answers: an OOM long poll that returns at once, or an
output long poll that answers "no data, not done" at once, must not make the host spin or flood
containerd. The guest agent is faked (it is the misbehaving party); the host code is real."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

from shim.agent.streams import copy_output
from shim.task.vm_backend import VmBackend


class InstantAgent:
    """Answers every long poll at once."""

    def __init__(self) -> None:
        self.calls = 0

    async def get_oom_event(self) -> str:
        self.calls += 1
        return "c1"

    async def read_stdout(self, container_id: str, exec_id: str):
        self.calls += 1
        return SimpleNamespace(data=b"", eof=False)


async def test_instant_oom_events_are_paced():
    backend = VmBackend()
    published: list[str] = []
    backend.on_oom(published.append)
    agent = InstantAgent()
    backend._sandbox = SimpleNamespace(agent=agent)
    watch = asyncio.ensure_future(backend._watch_oom())
    try:
        await asyncio.sleep(1.0)
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        backend._sandbox = None
    assert 1 <= len(published) <= 6, f"{len(published)} OOM events in 1 s"


async def test_empty_output_answers_are_paced_in_debug_run_streams():
    agent = InstantAgent()
    copying = asyncio.ensure_future(copy_output(agent, "c1", "", "stdout", _ignore))
    try:
        await asyncio.sleep(1.0)
    finally:
        copying.cancel()
        await asyncio.gather(copying, return_exceptions=True)
    assert agent.calls <= 12, f"{agent.calls} reads in 1 s: the host spins"


async def _ignore(data: bytes) -> None:
    pass

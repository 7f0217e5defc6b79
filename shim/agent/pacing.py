"""Pacing what the guest answers: the guest is not trusted to be well-behaved, and a long poll
that returns at once with nothing (or an event stream that never pauses) must not make the
host spin or flood containerd."""
from __future__ import annotations

import asyncio


class IdleBackoff:
    """Sleeps after every empty answer, doubling up to *longest*; a useful answer resets it."""

    def __init__(self, first: float = 0.01, longest: float = 1.0) -> None:
        self._first = first
        self._longest = longest
        self._delay = first

    async def empty(self) -> None:
        await asyncio.sleep(self._delay)
        self._delay = min(self._delay * 2, self._longest)

    def useful(self) -> None:
        self._delay = self._first


class MinInterval:
    """Lets a loop run at most once per *interval* seconds."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = 0.0

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now < self._next:
            await asyncio.sleep(self._next - now)
        self._next = max(now, self._next) + self._interval

"""OOM notifications: watches the oom_kill counter of each container's memory.events.

Polling happens only while the host waits in GetOOMEvent, once per interval; a container's
counter is also checked once more when its init exits (before the cgroup disappears).
"""

from __future__ import annotations

import asyncio
from collections import deque

from .cgroup import Cgroup


class OomMonitor:
    def __init__(self, interval: float = 1.0) -> None:
        self._interval = interval
        self._watched: dict[str, tuple[Cgroup, int]] = {}
        self._pending: deque[str] = deque(maxlen=1024)
        self._wakeup = asyncio.Event()

    def watch(self, container_id: str, cgroup: Cgroup) -> None:
        self._watched[container_id] = (cgroup, _oom_kills(cgroup))

    def unwatch(self, container_id: str) -> None:
        self._watched.pop(container_id, None)

    def check(self, container_id: str | None = None) -> None:
        """Compare counters now; new OOM kills become pending events."""
        ids = [container_id] if container_id is not None else list(self._watched)
        for cid in ids:
            entry = self._watched.get(cid)
            if entry is None:
                continue
            cgroup, seen = entry
            now = _oom_kills(cgroup)
            if now > seen:
                self._watched[cid] = (cgroup, now)
                self._pending.append(cid)
                self._wakeup.set()

    async def next_event(self) -> str:
        """Wait for the next container that had a process OOM-killed; returns its id."""
        while not self._pending:
            self.check()
            if self._pending:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), self._interval)
            except TimeoutError:
                pass
        return self._pending.popleft()


def _oom_kills(cgroup: Cgroup) -> int:
    return cgroup.memory_events().get("oom_kill", 0)

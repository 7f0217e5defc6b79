"""The agent's only waitpid() caller.

As PID 1 (or a child subreaper) the agent inherits every orphan: container processes whose
runtime (`crun create`, `crun exec --detach`) exited, and anything else that loses its parent.
One SIGCHLD handler reaps them all and hands each status to whoever registered for that pid.
Statuses nobody registered yet are kept for a while, because a container's pid becomes known
(from the runtime's --pid-file) only after the process may already have died.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import OrderedDict
from typing import NamedTuple


class ExitInfo(NamedTuple):
    status: int         # shell convention: exit code, or 128+signal when killed
    exited_at_ns: int   # wall clock, ns since the epoch
    reaped_at: float    # monotonic clock


def shell_status(wait_status: int) -> int:
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


class ChildReaper:
    def __init__(self, max_unclaimed: int = 1024) -> None:
        self._waiters: dict[int, asyncio.Future[ExitInfo]] = {}
        self._unclaimed: OrderedDict[int, ExitInfo] = OrderedDict()
        self._max_unclaimed = max_unclaimed
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self.reap()  # children that died before the handler existed

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGCHLD)
            self._loop = None

    def watch_spawned(self, pid: int) -> asyncio.Future[ExitInfo]:
        """Register a child we just spawned (synchronously after fork: it cannot be reaped yet,
        so any unclaimed status under this pid belongs to an older process)."""
        self._unclaimed.pop(pid, None)
        return self._future(pid)

    def watch_adopted(self, pid: int, started_after: float) -> asyncio.Future[ExitInfo]:
        """Register a process that became ours by reparenting; it was created after the
        monotonic time `started_after`, so older unclaimed statuses of the pid are stale."""
        info = self._unclaimed.pop(pid, None)
        if info is not None and info.reaped_at >= started_after:
            fut = self._future(pid)
            self._resolve(pid, info)
            return fut
        return self._future(pid)

    def _future(self, pid: int) -> asyncio.Future[ExitInfo]:
        fut = self._waiters.get(pid)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._waiters[pid] = fut
        return fut

    def _resolve(self, pid: int, info: ExitInfo) -> None:
        fut = self._waiters.pop(pid, None)
        if fut is not None:
            if not fut.done():
                fut.set_result(info)
            return
        self._unclaimed[pid] = info
        while len(self._unclaimed) > self._max_unclaimed:
            self._unclaimed.popitem(last=False)

    def reap(self) -> None:
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            self._resolve(pid, ExitInfo(shell_status(wait_status), time.time_ns(),
                                        time.monotonic()))

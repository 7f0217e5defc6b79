"""Child subreaper: orphans of our children are re-parented to the daemon and reaped here.

Processes we start ourselves are waited by their owners (asyncio subprocess watchers wait on
their own pid). So this reaper only collects zombies nobody claimed within a grace period;
it never calls waitpid(-1), which would steal statuses from those owners.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
GRACE_SECONDS = 2.0


def become_subreaper() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("PR_SET_CHILD_SUBREAPER failed: %s", os.strerror(ctypes.get_errno()))


def _zombie_children() -> set[int]:
    me = os.getpid()
    found: set[int] = set()
    for task in Path(f"/proc/{me}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in map(int, children):
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state == "Z":
                found.add(pid)
    return found


class Reaper:
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        loop.add_signal_handler(signal.SIGCHLD, wake.set)
        suspects: set[int] = set()
        try:
            while True:
                try:
                    await asyncio.wait_for(wake.wait(), GRACE_SECONDS)
                except TimeoutError:
                    pass
                wake.clear()
                await asyncio.sleep(GRACE_SECONDS)  # give owners their chance first
                zombies = _zombie_children()
                for pid in zombies & suspects:
                    try:
                        os.waitpid(pid, os.WNOHANG)
                        log.debug("reaped orphan %d", pid)
                    except ChildProcessError:
                        pass
                suspects = zombies
        finally:
            loop.remove_signal_handler(signal.SIGCHLD)

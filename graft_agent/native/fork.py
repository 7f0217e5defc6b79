"""Cloning a child of the agent that runs Python code of ours and then execs (or exits).

Signals are blocked across the clone, so none is handled by the agent's handlers in the
child (the child resets them before it unblocks), and the garbage collector is off, so no
finalizer of the agent's objects runs there. A pid namespace to be born in is entered as
pid_for_children around the clone and left right after.
"""

from __future__ import annotations

import gc
import os
import signal
from typing import Callable, NoReturn

from . import linux as L

ALL_SIGNALS = signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}


class PidNamespaceSwitch:
    """Enters a pid namespace for children and returns to the agent's own."""

    def __init__(self) -> None:
        self._own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)

    def enter(self, fd: int) -> None:
        L.setns(fd, L.CLONE_NEWPID)

    def leave(self) -> None:
        L.setns(self._own, L.CLONE_NEWPID)


def clone_child(body: Callable[[], NoReturn], flags: int = 0, cgroup_fd: int = -1,
                pidns_fd: int = -1, pidns: PidNamespaceSwitch | None = None) -> int:
    """Clone; the child runs body() (which must never return); the parent gets the pid."""
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, ALL_SIGNALS)
    gc_enabled = gc.isenabled()
    gc.disable()
    try:
        if pidns_fd >= 0:
            assert pidns is not None
            pidns.enter(pidns_fd)
        try:
            pid = L.clone3(flags, cgroup_fd)
        except BaseException:
            if pidns is not None and pidns_fd >= 0:
                pidns.leave()
            raise
        if pid == 0:
            try:
                body()
            finally:
                os._exit(127)
        if pidns is not None and pidns_fd >= 0:
            pidns.leave()
        return pid
    finally:
        if gc_enabled:
            gc.enable()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def handled_signals() -> list[int]:
    """Signals whose disposition is not the default here (for the child to reset: computed in
    the agent, where touching objects costs no copy-on-write faults)."""
    return [sig for sig in ALL_SIGNALS if signal.getsignal(sig) not in (None, signal.SIG_DFL)]

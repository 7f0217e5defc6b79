"""A container's cgroup v2 directory: statistics, member processes, signalling them all."""

from __future__ import annotations

import os
import signal
from typing import NamedTuple

from .fsutil import read_text

CGROUP_ROOT = "/sys/fs/cgroup"
UNLIMITED = (1 << 64) - 1  # what a "max" limit reads as in the statistics


class IoDevice(NamedTuple):
    major: int
    minor: int
    counters: dict[str, int]


class CgroupStats:
    """One sample of a cgroup's statistics files (absent files read as 0 / empty)."""

    def __init__(self, cpu: dict[str, int] | None = None, memory_current: int = 0,
                 memory_max: int = 0, swap_current: int = 0, swap_max: int = 0,
                 memory_stat: dict[str, int] | None = None,
                 memory_events: dict[str, int] | None = None, pids_current: int = 0,
                 pids_max: int = 0, io: list[IoDevice] | None = None) -> None:
        self.cpu = cpu or {}                      # cpu.stat
        self.memory_current = memory_current
        self.memory_max = memory_max
        self.swap_current = swap_current
        self.swap_max = swap_max
        self.memory_stat = memory_stat or {}      # memory.stat
        self.memory_events = memory_events or {}  # memory.events
        self.pids_current = pids_current
        self.pids_max = pids_max
        self.io = io or []


class Cgroup:
    def __init__(self, path: str) -> None:
        """`path` is the cgroup as seen in /proc/<pid>/cgroup (e.g. /graft/<id>)."""
        self.path = path
        self.dir = os.path.join(CGROUP_ROOT, path.lstrip("/"))

    def _file(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    def pids(self) -> list[int]:
        return [int(line) for line in read_text(self._file("cgroup.procs")).split() if line.isdigit()]

    def signal_all(self, sig: int) -> None:
        """Deliver sig to every process; SIGKILL uses cgroup.kill where the kernel has it
        (atomic, also catches processes forked meanwhile)."""
        if sig == signal.SIGKILL:
            try:
                with open(self._file("cgroup.kill"), "w") as f:
                    f.write("1")
                return
            except OSError:
                pass
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def memory_events(self) -> dict[str, int]:
        return _flat_keyed(read_text(self._file("memory.events")))

    def stats(self) -> CgroupStats:
        return CgroupStats(
            cpu=_flat_keyed(read_text(self._file("cpu.stat"))),
            memory_current=_single(self._file("memory.current")),
            memory_max=_single(self._file("memory.max")),
            swap_current=_single(self._file("memory.swap.current")),
            swap_max=_single(self._file("memory.swap.max")),
            memory_stat=_flat_keyed(read_text(self._file("memory.stat"))),
            memory_events=self.memory_events(),
            pids_current=_single(self._file("pids.current")),
            pids_max=_single(self._file("pids.max")),
            io=_io_stat(read_text(self._file("io.stat"))),
        )


def cgroup_of(pid: int) -> str | None:
    """The unified-hierarchy cgroup of a process, or None if it is gone."""
    for line in read_text(f"/proc/{pid}/cgroup").splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def _number(text: str) -> int:
    text = text.strip()
    if text == "max":
        return UNLIMITED
    try:
        return int(text)
    except ValueError:
        return 0


def _single(path: str) -> int:
    return _number(read_text(path, "0"))


def _flat_keyed(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = _number(parts[1])
    return out


def _io_stat(text: str) -> list[IoDevice]:
    devices = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or ":" not in parts[0]:
            continue
        major, _, minor = parts[0].partition(":")
        counters = {}
        for item in parts[1:]:
            key, _, value = item.partition("=")
            counters[key] = _number(value)
        devices.append(IoDevice(int(major), int(minor), counters))
    return devices

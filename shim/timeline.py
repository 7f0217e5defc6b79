"""When each step of a pod's start happened, as the shim saw it (wall clock, seconds).

One Timeline per shim daemon (one pod). Marks are kept in order and, once the sandbox has a
directory, rewritten to ``<run dir>/timeline.json`` after each mark (a few hundred bytes on
the state tmpfs), so `graft status --json` and bench/pods.py can read them while the pod runs.
Every mark is also logged at debug level.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

# `start` hands the daemon the wall-clock time containerd exec'd it.
START_EXEC_ENV = "GRAFT_SHIM_EXEC_AT"


def process_start_wall_time(pid: int | None = None) -> float:
    """When a process was exec'd (wall clock), from /proc: interpreter start-up included."""
    stat = Path(f"/proc/{pid or 'self'}/stat").read_text()
    start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK")


class Timeline:
    def __init__(self) -> None:
        self._marks: list[tuple[str, float]] = []
        self._path: Path | None = None

    def mark(self, step: str, at: float | None = None) -> None:
        when = time.time() if at is None else at
        self._marks.append((step, when))
        import logging  # here: `start` imports this module for START_EXEC_ENV only

        logging.getLogger(__name__).debug("timeline: %s at %.3f", step, when)
        self._write()

    def attach(self, directory: Path) -> None:
        """Persist into *directory* from now on (the marks so far included)."""
        self._path = directory / "timeline.json"
        self._write()

    def detach(self) -> None:
        self._path = None

    def marks(self) -> list[tuple[str, float]]:
        return list(self._marks)

    def _write(self) -> None:
        if self._path is None:
            return
        tmp = self._path.with_name(".timeline.json.tmp")
        try:
            tmp.write_text(json.dumps([{"step": s, "at": round(t, 6)} for s, t in self._marks]))
            os.replace(tmp, self._path)
        except OSError:  # the directory went away (teardown): nothing to record into
            pass


def read_timeline(directory: Path) -> list[tuple[str, float]]:
    try:
        return [(m["step"], float(m["at"])) for m in json.loads(
            (directory / "timeline.json").read_text())]
    except (OSError, ValueError, KeyError, TypeError):
        return []

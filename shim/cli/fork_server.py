"""`graft fork-server stop [--socket PATH]`: make the shim's fork server exit now.

The fork server (shim/shim_manager/forkserver.py) outlives the pods whose starts spawned it
for up to its idle timeout (for as long as it keeps a warm pool). Stopping it is safe: shim
daemons it forked keep running, its warm pool members see it go and stop their VMs, and the
next pod's `start` forks its daemon itself and spawns a new server. The default
socket is the one of this interpreter and graft tree, i.e. the server that shims launched
by a launcher written with this interpreter use (shim/cli/launcher.py). A socket left by a
server that was killed outright is removed.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

from shim.shim_manager import forkserver, handoff

EXIT_WAIT_S = 10.0


def _exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def stop_fork_server(path: str | None = None, wait_s: float = EXIT_WAIT_S) -> int | None:
    """Stop the server at *path* (default: this tree's) and wait until its process is
    gone; its pid, or None when no server answered there."""
    path = path or handoff.server_path()
    pid = handoff.stop_server(path)
    if pid is None:
        return None
    deadline = time.monotonic() + wait_s
    while not _exited(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"fork server pid {pid} ({path}) did not exit within {wait_s:.0f}s")
        time.sleep(0.02)
    return pid


def run_fork_server(action: str, path: str | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if action != "stop":
        raise ValueError(f"unknown fork-server action {action!r} (stop)")
    path = path or handoff.server_path()
    pid = stop_fork_server(path)
    if pid is None:
        print(f"no fork server at {path}", file=out)
    else:
        print(f"stopped the fork server at {path} (pid {pid})", file=out)
    if forkserver.remove_unserved_socket(path):
        print(f"removed {path} (its server had been killed)", file=out)
    return 0

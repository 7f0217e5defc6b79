"""Starting helper processes whose exit goes through the agent's ChildReaper.

asyncio.create_subprocess_* and subprocess.run would call waitpid() themselves and race the
reaper (which reaps every child), so the agent spawns with os.posix_spawn and waits on the
reaper's future instead.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import NamedTuple

from .reaper import ChildReaper, ExitInfo

DEVNULL = -1  # marker: connect this stdio slot to /dev/null

# Python ignores these; an exec'd program must start with default dispositions.
_RESET_SIGNALS = {signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGCHLD}


class Completed(NamedTuple):
    status: int
    stdout: bytes
    stderr: bytes

    def describe(self) -> str:
        text = (self.stderr or self.stdout).decode(errors="replace").strip()
        return f"exit status {self.status}" + (f": {text}" if text else "")


class Child:
    def __init__(self, pid: int, exit_future: asyncio.Future[ExitInfo]) -> None:
        self.pid = pid
        self._exit = exit_future

    @property
    def exited(self) -> bool:
        return self._exit.done()

    async def wait(self) -> ExitInfo:
        return await asyncio.shield(self._exit)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if not self._exit.done():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


class Spawner:
    def __init__(self, reaper: ChildReaper, env: dict[str, str] | None = None) -> None:
        self._reaper = reaper
        self._env = env

    def spawn(self, argv: list[str], *, stdin: int = DEVNULL, stdout: int = DEVNULL,
              stderr: int = DEVNULL, env: dict[str, str] | None = None) -> Child:
        """Start argv with the given fds as its stdio (the caller keeps and closes its fds).

        Raises FileNotFoundError/PermissionError if argv[0] cannot be executed.
        """
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            actions = [(os.POSIX_SPAWN_DUP2, null if fd == DEVNULL else fd, target)
                       for target, fd in ((0, stdin), (1, stdout), (2, stderr))]
            pid = os.posix_spawnp(argv[0], argv, env if env is not None else self._environ(),
                                  file_actions=actions, setsid=True, setsigmask=(),
                                  setsigdef=_RESET_SIGNALS)
        finally:
            os.close(null)
        return Child(pid, self._reaper.watch_spawned(pid))

    def _environ(self) -> dict[str, str]:
        return self._env if self._env is not None else dict(os.environ)

    async def run(self, argv: list[str], *, stdin: int = DEVNULL,
                  env: dict[str, str] | None = None) -> Completed:
        """Run argv to completion, capturing stdout and stderr. Cancelling kills the child."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            child = self.spawn(argv, stdin=stdin, stdout=out_w, stderr=err_w, env=env)
        except BaseException:
            for fd in (out_r, out_w, err_r, err_w):
                os.close(fd)
            raise
        os.close(out_w)
        os.close(err_w)
        try:
            out, err = await asyncio.gather(read_to_end(out_r), read_to_end(err_r))
            info = await child.wait()
        except BaseException:
            child.kill()
            raise
        finally:
            os.close(out_r)
            os.close(err_r)
        return Completed(info.status, out, err)

    async def wait_run(self, child: Child) -> ExitInfo:
        """Wait for a spawned child; cancelling kills it (never leaves a runaway helper)."""
        try:
            return await child.wait()
        except BaseException:
            child.kill()
            raise


async def wait_readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def wait_writable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_writer(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_writer(fd)


async def read_to_end(fd: int, limit: int = 1 << 20) -> bytes:
    """Read a pipe until EOF (keeping at most `limit` bytes; the rest is drained and dropped)."""
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    kept = 0
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            await wait_readable(fd)
            continue
        if not data:
            return b"".join(chunks)
        if kept < limit:
            chunks.append(data[: limit - kept])
            kept += len(chunks[-1])

"""Size-bounded logs of what a VMM and its guest print (console, VMM stdout/stderr).

The VMM writes into a pipe or socket the host reads, never into a file it could grow at the
guest's pace: the state dir is a tmpfs (host RAM). The host appends to `<path>` and, once it
holds `limit` bytes, renames it to `<path>.1` (dropping the older one) and starts afresh: at
most 2 x limit bytes per log, and the newest output always survives for tails.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 1 << 20
_CHUNK = 65536


def rotated(path: Path) -> Path:
    return path.with_name(path.name + ".1")


class BoundedLog:
    """Copies everything readable on `fd` (which it owns) into a rotating file, from the
    event loop; `closed()` completes once the writer side hung up and all was copied."""

    def __init__(self, fd: int, path: Path, limit: int | None = None) -> None:
        self._fd: int | None = fd
        self.path = path
        self._limit = DEFAULT_LIMIT if limit is None else limit
        self._file = open(path, "wb", buffering=0)
        self._size = 0
        self._done = asyncio.get_running_loop().create_future()
        os.set_blocking(fd, False)
        asyncio.get_running_loop().add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, _CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("%s: %s", self.path, exc)
            data = b""
        if not data:
            self.close()
            return
        try:
            self._append(data)
        except (OSError, ValueError) as exc:  # e.g. the run dir is gone: keep draining
            log.debug("%s: cannot write: %s", self.path, exc)

    def _append(self, data: bytes) -> None:
        while data:
            room = self._limit - self._size
            if room <= 0:
                self._rotate()
                room = self._limit
            self._file.write(data[:room])
            self._size += min(room, len(data))
            data = data[room:]

    def _rotate(self) -> None:
        self._file.close()
        os.replace(self.path, rotated(self.path))
        self._file = open(self.path, "wb", buffering=0)
        self._size = 0

    async def closed(self, timeout: float | None = None) -> None:
        """Wait until the writers are gone and everything was copied (then the log is closed)."""
        try:
            await asyncio.wait_for(asyncio.shield(self._done), timeout)
        except TimeoutError:
            self.close()  # a grandchild may hold the write end: stop copying anyway

    def close(self) -> None:
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
            self._file.close()
        if not self._done.done():
            self._done.set_result(None)


def console_log(path: Path, limit: int | None = None) -> tuple[BoundedLog, socket.socket]:
    """A bounded log at *path* and the connected socket the VMM writes its console to
    (pass it to the VMM, then close it here)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        return BoundedLog(ours.detach(), path, limit), theirs
    except BaseException:
        ours.close()
        theirs.close()
        raise


def read_tail(path: Path, max_bytes: int = 64 * 1024) -> bytes:
    """The last `max_bytes` of a bounded log (its rotated part included when needed)."""
    data = b""
    for part in (path, rotated(path)):
        try:
            with open(part, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - (max_bytes - len(data))))
                data = f.read() + data
        except OSError:
            pass
        if len(data) >= max_bytes:
            break
    return data

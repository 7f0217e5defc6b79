"""Output into a client's fifo (ctr's or CRI's), bounded by size and by the reader's presence,
never by how long the reader stays silent.

  * While a reader holds the fifo open, what the fifo cannot take yet waits in a backlog; once
    the backlog reaches BACKLOG_BYTES the writer waits for the reader (back-pressure, as runc's
    shim does): a slow but live reader loses nothing, however slow.
  * When no reader is left (the write end reports EPIPE: ctr went away, containerd restarts),
    the process must not block: the backlog keeps the newest BACKLOG_BYTES and drops older
    output. Each later write first checks whether a reader came back (a non-blocking open for
    writing succeeds only then); if so, the backlog flows to it.
  * At the end of output, `drain()` hands the backlog to a present reader, then the writer is
    closed, which gives the reader its EOF.

A keep-alive reader of our own exists only while opening: it lets the writer open without
blocking (or ENXIO) before the client opened its end.
"""
from __future__ import annotations

import asyncio
import logging
import os
import stat
import time

log = logging.getLogger(__name__)

BACKLOG_BYTES = 1 << 20
PROBE_INTERVAL_SECONDS = 0.2  # how often a write may look for a returning reader


class FifoSinkError(ValueError):
    pass


class FifoSink:
    def __init__(self, path: str, fd: int, name: str, cap: int = BACKLOG_BYTES) -> None:
        self._path = path
        self._fd: int | None = fd
        self._name = name
        self._cap = cap
        self._backlog = bytearray()
        self._reader_present = True  # until a write says otherwise
        self._watching = False
        self._dropped = 0
        self._next_probe = 0.0
        self._progress = asyncio.Event()  # set whenever the backlog shrank or the reader left
        os.set_blocking(fd, False)

    @classmethod
    def open(cls, path: str, name: str) -> "FifoSink":
        try:
            if not stat.S_ISFIFO(os.stat(path).st_mode):
                raise FifoSinkError(f"{name}: {path} is not a fifo")
            keepalive = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise FifoSinkError(f"{name}: fifo {path} does not exist") from exc
        try:
            writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        finally:
            os.close(keepalive)
        return cls(path, writer, name)

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    async def write(self, data: bytes) -> None:
        if self._fd is None:
            return
        self._backlog += data
        if not self._reader_present:
            self._probe_reader()
        self._flush()
        while self._reader_present and len(self._backlog) > self._cap and self._fd is not None:
            self._progress.clear()
            await self._progress.wait()  # back-pressure: the reader is there, only slow
        if len(self._backlog) > self._cap:  # nobody reads: keep only the newest output
            excess = len(self._backlog) - self._cap
            if not self._dropped:
                log.warning("stdio %s: no reader; dropping output beyond %d bytes",
                            self._name, self._cap)
            self._dropped += excess
            del self._backlog[:excess]

    async def drain(self) -> None:
        """End of output: wait until a present reader took the backlog (or it left)."""
        if not self._reader_present:
            self._probe_reader()
            self._flush()
        while self._backlog and self._reader_present and self._fd is not None:
            self._progress.clear()
            await self._progress.wait()

    def _probe_reader(self) -> None:
        now = time.monotonic()
        if now < self._next_probe:
            return
        self._next_probe = now + PROBE_INTERVAL_SECONDS
        try:  # without a reader this fails with ENXIO (we hold no reader of our own)
            os.close(os.open(self._path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        except OSError:
            return
        log.info("stdio %s: a reader is back", self._name)
        self._reader_present = True

    def _flush(self) -> None:
        while self._backlog and self._fd is not None and self._reader_present:
            try:
                written = os.write(self._fd, self._backlog)
            except BlockingIOError:
                break
            except BrokenPipeError:
                log.info("stdio %s: the reader went away", self._name)
                self._reader_present = False
                self._next_probe = time.monotonic() + PROBE_INTERVAL_SECONDS
                break
            except OSError as exc:
                log.info("stdio %s: %s; discarding output", self._name, exc)
                self._close_writer()
                break
            del self._backlog[:written]
            self._progress.set()
        want_writable = bool(self._backlog) and self._reader_present and self._fd is not None
        self._watch(want_writable)
        if not want_writable:
            self._progress.set()

    def _watch(self, on: bool) -> None:
        if on == self._watching or self._fd is None:
            return
        loop = asyncio.get_running_loop()
        if on:
            loop.add_writer(self._fd, self._flush)
        else:
            loop.remove_writer(self._fd)
        self._watching = on

    def _close_writer(self) -> None:
        self._watch(False)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._backlog.clear()
        self._progress.set()

    def close(self) -> None:
        if self._dropped:
            log.warning("stdio %s: %d bytes of output were dropped", self._name, self._dropped)
        self._close_writer()

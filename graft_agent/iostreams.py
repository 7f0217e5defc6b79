"""A process's standard streams as the host sees them: buffered output, writable input.

Output is drained from the pipe (or pty master) as soon as it is produced, into a bounded
buffer the host empties with long-poll reads; so a host that reads late loses nothing. When
the buffer is full the agent stops reading, and the process blocks in write() until the host
catches up (backpressure instead of unbounded memory).
"""

from __future__ import annotations

import asyncio
import errno
import os

from .errors import FailedPrecondition
from .spawn import wait_writable

DEFAULT_BUFFER_CAP = 1 << 20
_READ_CHUNK = 65536


class OutputStream:
    def __init__(self, fd: int | None, cap: int = DEFAULT_BUFFER_CAP) -> None:
        """`fd` is owned by the stream from now on; None makes an empty, already-ended stream."""
        self._fd = fd
        self._cap = cap
        self._buf = bytearray()
        self._eof = fd is None
        self._reading = False
        self._changed = asyncio.Event()
        if fd is not None:
            os.set_blocking(fd, False)
            self._resume()

    @property
    def eof(self) -> bool:
        """True once the writers are gone *and* the host has drained everything."""
        return self._eof and not self._buf

    def _resume(self) -> None:
        if not self._reading and self._fd is not None and not self._eof:
            asyncio.get_running_loop().add_reader(self._fd, self._on_readable)
            self._reading = True

    def _pause(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self._fd)
            self._reading = False

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            # A pty master reports EIO once the last slave fd is closed: that is its EOF
            # (and any other read error ends the stream too rather than spinning).
            data = b""
        if data:
            self._buf += data
            if len(self._buf) >= self._cap:
                self._pause()
        else:
            self._finish()
        self._changed.set()

    def _finish(self) -> None:
        self._pause()
        self._eof = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def peek(self) -> bytes:
        """What is readable right now, without consuming it (for error messages)."""
        while self._fd is not None and len(self._buf) < self._cap:
            try:
                data = os.read(self._fd, _READ_CHUNK)
            except OSError:
                break
            if not data:
                break
            self._buf += data
        return bytes(self._buf)

    async def read(self, max_len: int) -> tuple[bytes, bool]:
        """Wait until bytes are available or the stream ended; returns (data, eof)."""
        while not self._buf and not self._eof:
            self._changed.clear()
            await self._changed.wait()
        chunk = bytes(self._buf[:max_len])
        del self._buf[:max_len]
        if len(self._buf) < self._cap:
            self._resume()
        return chunk, self.eof

    def close(self) -> None:
        """Drop everything (the process is being removed); pending readers see EOF."""
        self._buf.clear()
        if not self._eof:
            self._finish()
        self._changed.set()


class InputStream:
    """A process's stdin. A write returns as soon as the reader took *some* bytes (the host
    sends the rest next), so a slow reader neither times the host out nor makes it guess how
    much went in; closing never waits behind a write stuck on a reader that does not read."""

    def __init__(self, fd: int, is_tty: bool) -> None:
        """`fd` (a pipe's write end or a dup of the pty master) is owned by the stream."""
        self._fd: int | None = fd
        self._is_tty = is_tty
        self._lock = asyncio.Lock()  # one writer at a time: chunks never interleave
        self._closing = asyncio.Event()
        self._discarded = False
        os.set_blocking(fd, False)

    async def write(self, data: bytes) -> int:
        """Write a prefix of `data` (at least one byte unless `data` is empty); its length."""
        if not data:
            return 0
        async with self._lock:
            try:
                while True:
                    if self._fd is None or self._closing.is_set():
                        raise FailedPrecondition("stdin is closed")
                    try:
                        return os.write(self._fd, data)
                    except BlockingIOError:
                        await self._writable_or_closing()
                    except OSError as exc:
                        if isinstance(exc, BrokenPipeError) or exc.errno in (errno.EIO, errno.EPIPE):
                            raise FailedPrecondition("stdin is closed: the process is gone") from None
                        raise
            finally:
                if self._discarded:
                    self._close_fd()  # discard() during the wait left the fd to us

    async def _writable_or_closing(self) -> None:
        assert self._fd is not None
        waits = {asyncio.ensure_future(wait_writable(self._fd)),
                 asyncio.ensure_future(self._closing.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def close(self) -> None:
        self._closing.set()  # wakes a stuck writer, which gives up the lock
        async with self._lock:
            if self._fd is None:
                return
            if self._is_tty:
                # A terminal has no half-close: send the EOF character (^D) the line discipline
                # turns into end-of-file for the reader; the master stays open for output.
                try:
                    os.write(self._fd, b"\x04")
                except OSError:
                    pass
            self._close_fd()

    def discard(self) -> None:
        self._closing.set()
        self._discarded = True
        if not self._lock.locked():  # else the writer closes it once out of its wait
            self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

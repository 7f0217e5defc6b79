"""The host channel: a virtio-serial port served as a ttrpc connection, forever.

virtio-serial has no connection semantics: the host side may disconnect and reconnect at any
time (the VM saved as a template and restored as clones, a shim restart). While the host is
away the port reads EOF and polls HUP, so the agent ends that ttrpc connection, waits for the
host to come back (HUP cleared) and serves a fresh one on the same, still open, port.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import time

log = logging.getLogger(__name__)

_VIRTIO_PORTS = "/sys/class/virtio-ports"
_RECONNECT_POLL_S = 0.01


def find_port(name: str, sys_dir: str = _VIRTIO_PORTS, dev_dir: str = "/dev") -> str | None:
    """The /dev node of the virtio-serial port named `name`, if the device exists yet."""
    try:
        ports = os.listdir(sys_dir)
    except FileNotFoundError:
        return None
    for port in sorted(ports):
        try:
            with open(os.path.join(sys_dir, port, "name")) as f:
                if f.read().strip() != name:
                    continue
        except OSError:
            continue
        dev = os.path.join(dev_dir, port)
        if os.path.exists(dev):
            return dev
    return None


async def wait_for_port(name: str, poll: float = 0.02) -> str:
    waited = 0.0
    while True:
        path = find_port(name)
        if path is not None:
            return path
        if waited and int(waited / poll) % 250 == 0:
            log.warning("still waiting for virtio-serial port %r (%.0fs)", name, waited)
        await asyncio.sleep(poll)
        waited += poll


class _WriteProtocol(asyncio.streams.FlowControlMixin):
    """Write-side protocol of a pipe-like fd that StreamWriter.wait_closed() can await."""

    def __init__(self) -> None:
        super().__init__()
        self._closed = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self._closed.done():
            self._closed.set_result(None)

    @property
    def lost(self) -> bool:
        return self._closed.done()

    def _get_close_waiter(self, stream: asyncio.StreamWriter) -> asyncio.Future:
        return self._closed


class PortStreams:
    """asyncio streams over a character device (reads and writes on separate dups)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 read_transport: asyncio.ReadTransport,
                 write_protocol: _WriteProtocol | None = None) -> None:
        self.reader = reader
        self.writer = writer
        self._read_transport = read_transport
        self._write_protocol = write_protocol

    @classmethod
    async def open(cls, fd: int) -> "PortStreams":
        """Takes ownership of `fd`."""
        loop = asyncio.get_running_loop()
        write_fd = os.dup(fd)
        reader = asyncio.StreamReader(limit=1 << 22)
        try:
            read_transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader),
                os.fdopen(fd, "rb", buffering=0, closefd=True))
        except BaseException:
            os.close(write_fd)
            raise
        try:
            transport, protocol = await loop.connect_write_pipe(
                _WriteProtocol, os.fdopen(write_fd, "wb", buffering=0, closefd=True))
        except BaseException:
            read_transport.close()
            raise
        return cls(reader, asyncio.StreamWriter(transport, protocol, reader, loop), read_transport,
                   protocol)

    async def close(self) -> None:
        """Drop both sides now (unsent bytes are moot: the session is over)."""
        # The ttrpc server closes the writer when a session ends; aborting a
        # transport whose connection is already lost raises AttributeError.
        if self._write_protocol is None or not self._write_protocol.lost:
            self.writer.transport.abort()
        self._read_transport.close()
        await asyncio.sleep(0)  # transports release their fds on the next loop iteration
        await asyncio.sleep(0)


def _host_connected(fd: int) -> bool:
    """POLLHUP means no host on the other end.

    Bytes that are already buffered are never dropped here: the guest driver delivers the
    data a host sends right after connecting before it processes that host's "port open"
    message, so bytes seen while POLLHUP is still set usually belong to the host that is
    just arriving (a restored clone's first health check)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return not any(events & select.POLLHUP for _, events in poller.poll(0))


_RETRY_OPEN = (errno.EBUSY,    # still held open by someone else
               errno.ENOENT, errno.ENXIO, errno.ENODEV)  # port unplugged for now
# While no host is connected, check this often that the device node still is our port.
_REPLUG_CHECK_S = 1.0


def _open_port(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno in _RETRY_OPEN:
            return None
        raise


def _same_device(fd: int, path: str) -> bool:
    try:
        return os.stat(path).st_rdev == os.fstat(fd).st_rdev
    except OSError:
        return False


async def _open_when_available(path: str) -> int:
    retry_delay = _RECONNECT_POLL_S
    while True:
        fd = _open_port(path)
        if fd is not None:
            return fd
        if retry_delay >= 1.0:
            log.warning("cannot open %s yet; retrying", path)
        await asyncio.sleep(retry_delay)
        retry_delay = min(retry_delay * 2, 2.0)


async def _wait_for_host(port: int, path: str) -> bool:
    """Wait until a host is connected (True), or until the port's device node went away or
    was replaced (False: reopen it)."""
    waited = 0.0
    while not _host_connected(port):
        await asyncio.sleep(_RECONNECT_POLL_S)
        waited += _RECONNECT_POLL_S
        if waited >= _REPLUG_CHECK_S:
            waited = 0.0
            if not _same_device(port, path):
                return False
    return True


async def serve_port(path: str, serve_connection) -> None:
    """Serve `serve_connection(reader, writer)` on the port, session after session, until
    cancelled.

    The port stays open from one session to the next (each session works on duplicates of
    one descriptor): closing a virtio port makes the guest driver discard whatever the host
    already sent, which would lose the first request of a host that connects while the
    previous session is being torn down.

    Left to the host's reconnect-on-timeout: the driver may show a new host's first bytes
    before it clears the old hang-up, so the old session can read a request and then its
    EOF; that request is cancelled with the session (its sender cannot be told apart from
    a host that really left). Not seen in practice after a restore (0 of 60 clones)."""
    sessions = 0
    while True:
        port = await _open_when_available(path)
        try:
            while await _wait_for_host(port, path):
                streams = await PortStreams.open(os.dup(port))
                sessions += 1
                log.info("host connected on %s (session %d)", path, sessions)
                began = time.monotonic()
                try:
                    await serve_connection(streams.reader, streams.writer)
                finally:
                    await streams.close()
                log.info("host left %s", path)
                if time.monotonic() - began < _RECONNECT_POLL_S:
                    # A session that ends at once (e.g. a read error while the host stays
                    # connected) must not become a busy loop; buffered bytes just wait.
                    await asyncio.sleep(_RECONNECT_POLL_S)
            log.warning("%s was unplugged or replaced; reopening it", path)
        finally:
            os.close(port)

"""The host channel: a virtio-serial port served as a ttrpc connection, forever.

virtio-serial has no connection semantics: the host side may disconnect and reconnect at any
time (the VM saved as a template and restored as clones, a shim restart). While the host is
away the port reads EOF and polls HUP, so the agent closes it, waits for the host to come
back (HUP cleared) and serves a fresh ttrpc connection on the same port.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select

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
        transport, protocol = await loop.connect_write_pipe(
            _WriteProtocol, os.fdopen(write_fd, "wb", buffering=0, closefd=True))
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
    """POLLHUP means no host on the other end; leftover bytes of a dead session are dropped."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    for _, events in poller.poll(0):
        if events & select.POLLHUP:
            try:
                while os.read(fd, 65536):
                    pass
            except OSError:
                pass
            return False
    return True


_RETRY_OPEN = (errno.EBUSY,    # the previous session's fd is still being released
               errno.ENOENT, errno.ENXIO, errno.ENODEV)  # port unplugged for now


def _open_port(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno in _RETRY_OPEN:
            return None
        raise


async def serve_port(path: str, serve_connection) -> None:
    """Serve `serve_connection(reader, writer)` on the port, session after session, until
    cancelled."""
    sessions = 0
    retry_delay = _RECONNECT_POLL_S
    while True:
        fd = _open_port(path)
        if fd is None:
            if retry_delay >= 1.0:
                log.warning("cannot open %s yet; retrying", path)
            await asyncio.sleep(retry_delay)
            retry_delay = min(retry_delay * 2, 2.0)
            continue
        retry_delay = _RECONNECT_POLL_S
        try:
            while not _host_connected(fd):
                await asyncio.sleep(_RECONNECT_POLL_S)
        except BaseException:
            os.close(fd)
            raise
        streams = await PortStreams.open(fd)
        sessions += 1
        log.info("host connected on %s (session %d)", path, sessions)
        try:
            await serve_connection(streams.reader, streams.writer)
        finally:
            await streams.close()
        log.info("host left %s", path)

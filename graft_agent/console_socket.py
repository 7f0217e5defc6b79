"""Receiving a container's pty master from the OCI runtime (--console-socket).

The runtime connects to a unix socket we listen on and sends the master side of the
container's terminal as SCM_RIGHTS ancillary data.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable

from .errors import FailedPrecondition
from .spawn import wait_readable


class ConsoleSocket:
    def __init__(self, path: str) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.bind(path)
            self._sock.listen(1)
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)

    async def receive_master(self) -> int:
        """Wait for the runtime to connect and hand over the pty master; returns its fd."""
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(self._sock)
        with conn:
            conn.setblocking(False)
            while True:
                try:
                    _, fds, _, _ = socket.recv_fds(conn, 4096, 4, socket.MSG_CMSG_CLOEXEC)
                except BlockingIOError:
                    await wait_readable(conn.fileno())
                    continue
                if not fds:
                    raise ConnectionError("the OCI runtime sent no terminal fd on the console socket")
                for extra in fds[1:]:
                    os.close(extra)
                return fds[0]

    def close(self) -> None:
        self._sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


async def receive_terminal(console: ConsoleSocket, runtime_call: Awaitable[None],
                           timeout: float = 10.0) -> int:
    """Await `runtime_call` (a runtime command given --console-socket) and return the pty
    master fd it sent. The console socket is closed in every case."""
    receiving = asyncio.ensure_future(console.receive_master())
    try:
        try:
            await runtime_call
        except BaseException:
            if receiving.done() and not receiving.cancelled() and receiving.exception() is None:
                os.close(receiving.result())
            raise
        try:
            async with asyncio.timeout(timeout):
                return await receiving
        except TimeoutError:
            raise FailedPrecondition(
                "the OCI runtime never sent the terminal on its console socket") from None
    finally:
        if not receiving.done():
            receiving.cancel()
            # asyncio.wait: the receiver's own outcome is not ours to raise, but a
            # cancellation of *this* task still propagates.
            await asyncio.wait([receiving])
            if not receiving.cancelled() and receiving.exception() is None:
                os.close(receiving.result())  # arrived just as we gave up on it
        console.close()

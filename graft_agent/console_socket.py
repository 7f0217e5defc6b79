"""Receiving a container's pty master from the OCI runtime (--console-socket).

The runtime connects to a unix socket we listen on and sends the master side of the
container's terminal as SCM_RIGHTS ancillary data.
"""

from __future__ import annotations

import asyncio
import os
import socket

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

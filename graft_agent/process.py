"""One process the host manages (a container's init or an exec): pid, exit, streams, terminal."""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct

from .errors import FailedPrecondition, NotFound
from .iostreams import InputStream, OutputStream
from .reaper import ExitInfo
from .runtime import Stdio
from .spawn import DEVNULL

_TIOCSWINSZ = 0x5414  # asm-generic/ioctls.h (x86, arm64); spares importing termios


class Process:
    def __init__(self, container_id: str, exec_id: str, terminal: bool) -> None:
        self.container_id = container_id
        self.exec_id = exec_id
        self.terminal = terminal
        self.pid = 0
        self.stdin: InputStream | None = None
        self.stdout = OutputStream(None)
        self.stderr = OutputStream(None)
        self._console_fd: int | None = None
        self._exit: asyncio.Future[ExitInfo] = asyncio.get_running_loop().create_future()

    @property
    def name(self) -> str:
        return f"{self.container_id}/{self.exec_id}" if self.exec_id else self.container_id

    @property
    def exited(self) -> bool:
        return self._exit.done()

    def exit_info(self) -> ExitInfo | None:
        return self._exit.result() if self._exit.done() else None

    def adopt(self, pid: int, exit_future: asyncio.Future[ExitInfo]) -> None:
        """Bind the real process (known once the runtime wrote its --pid-file)."""
        self.pid = pid
        exit_future.add_done_callback(self._on_exit)

    def _on_exit(self, fut: asyncio.Future[ExitInfo]) -> None:
        if not self._exit.done():
            self._exit.set_result(fut.result())

    def on_exit(self, callback) -> None:
        self._exit.add_done_callback(lambda _: callback(self))

    async def wait(self) -> ExitInfo:
        return await asyncio.shield(self._exit)

    def signal(self, sig: int) -> None:
        if self.exited or not self.pid:
            raise NotFound(f"process {self.name} already finished")
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            raise NotFound(f"process {self.name} already finished") from None

    async def write_stdin(self, data: bytes) -> int:
        if self.stdin is None:
            raise FailedPrecondition(f"process {self.name} has no stdin (or it was closed)")
        return await self.stdin.write(data)

    async def close_stdin(self) -> None:
        if self.stdin is not None:
            stdin, self.stdin = self.stdin, None
            await stdin.close()

    def resize(self, rows: int, cols: int) -> None:
        if self._console_fd is None:
            raise FailedPrecondition(f"process {self.name} has no terminal")
        fcntl.ioctl(self._console_fd, _TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def release(self) -> None:
        """Close every fd and buffer (the host is done with this process)."""
        if self.stdin is not None:
            self.stdin.discard()
            self.stdin = None
        self.stdout.close()
        self.stderr.close()
        if self._console_fd is not None:
            os.close(self._console_fd)
            self._console_fd = None

    # -- stdio wiring ------------------------------------------------------------------------

    def pipes(self, want_stdin: bool) -> "PipeWiring":
        return PipeWiring(self, want_stdin)

    def attach_terminal(self, master_fd: int, want_stdin: bool) -> None:
        """Take ownership of the pty master: output is read from it, input written to it."""
        self._console_fd = master_fd
        self.stdout = OutputStream(os.dup(master_fd))
        if want_stdin:
            self.stdin = InputStream(os.dup(master_fd), is_tty=True)


class PipeWiring:
    """Pipes for a non-terminal process: the runtime gets the child ends (which the process
    inherits); the agent keeps the other ends as the process's streams."""

    def __init__(self, process: Process, want_stdin: bool) -> None:
        self._child_fds: list[int] = []
        stdin_child = DEVNULL
        if want_stdin:
            stdin_child, stdin_ours = os.pipe()
            self._child_fds.append(stdin_child)
            process.stdin = InputStream(stdin_ours, is_tty=False)
        out_ours, out_child = os.pipe()
        err_ours, err_child = os.pipe()
        self._child_fds += [out_child, err_child]
        process.stdout = OutputStream(out_ours)
        process.stderr = OutputStream(err_ours)
        self.stdio = Stdio(stdin_child, out_child, err_child)

    def close_child_ends(self) -> None:
        """After the runtime started (or failed): only the process may keep these open."""
        for fd in self._child_fds:
            os.close(fd)
        self._child_fds.clear()

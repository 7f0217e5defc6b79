"""Host side of a process's standard streams, pumped to/from the guest agent's stream RPCs.

containerd hands us, per process, URIs for stdin/stdout/stderr:
  * a plain path or ``fifo://`` path: a named pipe the client (ctr, CRI) reads/writes;
  * ``file:///path``: append stdout and stderr to a file;
  * ``binary:///path?k=v``: start a logger that reads stdout on fd 3 and stderr on fd 4 and
    closes fd 5 once ready.

Rules that keep clients and containers from hanging:
  * an output fifo is bounded by size and by its reader's presence, never by silence: a slow
    reader gets back-pressure, a vanished one a bounded backlog (see fifo_sink.py);
  * the stdin fifo is opened O_RDONLY|O_NONBLOCK and read only when epoll says it is ready
    (a plain read would see EOF before the client opened it); no thread ever blocks in open(),
    which could otherwise hang the daemon's exit when the client never opens or deletes it;
  * writers are closed at the process's end of output, which gives the client its EOF.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit

from shim.agent.pacing import IdleBackoff

from .fifo_sink import FifoSink, FifoSinkError

log = logging.getLogger(__name__)

STDIN_DRAIN_SECONDS = 5.0
LOGGER_READY_SECONDS = 10.0
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class StdioSpec:
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False

    @property
    def has_stdin(self) -> bool:
        return bool(self.stdin)


class ProcessStreams(Protocol):
    """The guest side of one process's streams (agent long-poll RPCs)."""

    async def read_stdout(self) -> tuple[bytes, bool]: ...
    async def read_stderr(self) -> tuple[bytes, bool]: ...
    async def write_stdin(self, data: bytes) -> int: ...
    async def close_stdin(self) -> None: ...


class StdioError(ValueError):
    pass


# -- output sinks ------------------------------------------------------------------------------

class Sink:
    async def write(self, data: bytes) -> None:
        raise NotImplementedError

    async def drain(self) -> None:
        """End of output: wait until what was written reached the reader."""

    def close(self) -> None:
        pass


class DiscardSink(Sink):
    async def write(self, data: bytes) -> None:
        pass


class PipeSink(Sink):
    """Non-blocking writes to a logger's pipe: back-pressure is the logger's business."""

    def __init__(self, fd: int, name: str) -> None:
        self._fd: int | None = fd
        self._name = name
        os.set_blocking(fd, False)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and self._fd is not None:
            try:
                view = view[os.write(self._fd, view):]
            except BlockingIOError:
                await _wait_writable(self._fd)
            except OSError as exc:  # EPIPE: the logger is gone; discard from now on
                log.info("stdio %s: reader gone (%s); discarding output", self._name, exc)
                self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class FileSink(Sink):
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    async def write(self, data: bytes) -> None:
        if self._fd is not None:
            await asyncio.to_thread(_write_all, self._fd, data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


async def _wait_writable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_writer(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_writer(fd)


def open_fifo_sink(path: str, name: str) -> "Sink | FifoSink":
    try:
        return FifoSink.open(path, name)
    except FifoSinkError as exc:
        raise StdioError(str(exc)) from exc


# -- stdin source -------------------------------------------------------------------------------

class FifoSource:
    """Reads the client's stdin fifo without ever blocking a thread.

    Opened O_RDONLY|O_NONBLOCK at once. A read() before any writer connected would return EOF,
    so we only read after epoll reports the fifo ready: that happens on data, or on hang-up
    once a writer has come and gone (a fifo that never had a writer reports nothing).
    Once *closing* is set (CloseIO: the client sends nothing more), what is still buffered
    in the fifo is returned, then EOF, even though the client may still hold its end open.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd: int | None = None
        self._pollable = True  # False for a regular file or /dev/null: epoll refuses them

    async def open(self) -> bool:
        try:
            self._fd = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            log.warning("stdin %s: cannot open: %s", self._path, exc)
            return False
        return True

    async def read(self, closing: asyncio.Event) -> bytes:
        """Next chunk; b"" at EOF (the client closed its end, or *closing* and drained)."""
        assert self._fd is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._pollable:
                # Files and /dev/null never block: read them to their end (or until CloseIO).
                return b"" if closing.is_set() else os.read(self._fd, _CHUNK)
            if closing.is_set():
                try:
                    return os.read(self._fd, _CHUNK)
                except BlockingIOError:
                    return b""  # drained: nothing more is coming
            ready = loop.create_future()
            try:
                loop.add_reader(self._fd, lambda: ready.done() or ready.set_result(None))
            except PermissionError:  # EPERM: not pollable, so never blocking
                self._pollable = False
                continue
            closed = asyncio.ensure_future(closing.wait())
            try:
                await asyncio.wait({ready, closed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                loop.remove_reader(self._fd)
                closed.cancel()
                await asyncio.gather(closed, return_exceptions=True)
            if not ready.done():
                continue  # closing: drain on the next turn
            try:
                return os.read(self._fd, _CHUNK)
            except BlockingIOError:
                continue

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# -- one process's stdio ---------------------------------------------------------------------------

class ProcessIO:
    """Opens the host ends of one process's stdio and pumps them; owns its tasks."""

    def __init__(self, spec: StdioSpec, streams: ProcessStreams, container_id: str,
                 namespace: str) -> None:
        self.spec = spec
        self._streams = streams
        self._container_id = container_id
        self._namespace = namespace
        self._stdout: Sink | FifoSink = DiscardSink()
        self._stderr: Sink | FifoSink = DiscardSink()
        self._stdin: FifoSource | None = None
        self._logger: asyncio.subprocess.Process | None = None
        self._output_tasks: list[asyncio.Task] = []
        self._stdin_task: asyncio.Task | None = None
        self._stdin_closing = asyncio.Event()
        self._output_done = asyncio.Event()
        self._closed = False

    async def open(self) -> None:
        try:
            await self._open_outputs()
            if self.spec.stdin:
                self._stdin = FifoSource(_path_of(self.spec.stdin))
        except BaseException:
            await self.close()
            raise

    async def _open_outputs(self) -> None:
        out, err = self.spec.stdout, self.spec.stderr
        scheme = urlsplit(out).scheme if out else ""
        if scheme == "binary":
            self._stdout, self._stderr = await self._start_logger(out)
        elif scheme == "file":
            path = _path_of(out)
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            self._stdout = FileSink(fd)
            self._stderr = FileSink(os.dup(fd))
        else:
            if out:
                self._stdout = open_fifo_sink(_path_of(out), f"{self._container_id} stdout")
            if err and not self.spec.terminal:
                self._stderr = open_fifo_sink(_path_of(err), f"{self._container_id} stderr")

    async def _start_logger(self, uri: str) -> tuple[Sink, Sink]:
        parts = urlsplit(uri)
        argv = [parts.path]
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            argv += [key, value] if value else [key]
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        ready_r, ready_w = os.pipe()
        env = dict(os.environ, CONTAINER_ID=self._container_id,
                   CONTAINER_NAMESPACE=self._namespace)

        try:
            # A tiny trampoline puts the pipes on fds 3, 4, 5 and execs the logger; doing it in
            # a preexec_fn could clobber subprocess's own error pipe.
            self._logger = await asyncio.create_subprocess_exec(
                sys.executable, "-S", "-c", _FD_TRAMPOLINE, str(out_r), str(err_r),
                str(ready_w), *argv, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=env,
                pass_fds=(out_r, err_r, ready_w), start_new_session=True)
        except OSError as exc:
            for fd in (out_r, out_w, err_r, err_w, ready_r, ready_w):
                os.close(fd)
            raise StdioError(f"cannot start logger {argv[0]}: {exc}") from exc
        for fd in (out_r, err_r, ready_w):
            os.close(fd)
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_reader(ready_r, lambda: ready.done() or ready.set_result(None))
        try:
            # Ready when the logger closes (or writes to) fd 5.
            await asyncio.wait_for(ready, LOGGER_READY_SECONDS)
        except TimeoutError:
            log.warning("logger %s not ready after %ss; continuing", argv[0], LOGGER_READY_SECONDS)
        finally:
            loop.remove_reader(ready_r)
            os.close(ready_r)
        return PipeSink(out_w, "logger stdout"), PipeSink(err_w, "logger stderr")

    def start(self) -> None:
        """Start pumping (after the agent knows the process)."""
        self._output_tasks.append(asyncio.ensure_future(
            self._pump_out(self._streams.read_stdout, self._stdout, "stdout")))
        if not self.spec.terminal:
            self._output_tasks.append(asyncio.ensure_future(
                self._pump_out(self._streams.read_stderr, self._stderr, "stderr")))
        if self._stdin is not None:
            self._stdin_task = asyncio.ensure_future(self._pump_in(self._stdin))

        pumps = list(self._output_tasks)

        async def all_output() -> None:
            await asyncio.gather(*pumps, return_exceptions=True)
            self._output_done.set()
        self._output_tasks.append(asyncio.ensure_future(all_output()))

    async def wait_output(self, timeout: float) -> bool:
        """Wait until stdout/stderr reached EOF (writers closed); False on timeout."""
        if not self._output_tasks:
            return True
        try:
            await asyncio.wait_for(self._output_done.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _pump_out(self, read: Callable[[], Awaitable[tuple[bytes, bool]]], sink: "Sink | FifoSink",
                        name: str) -> None:
        backoff = IdleBackoff()
        try:
            while True:
                data, eof = await read()
                if data:
                    backoff.useful()
                    await sink.write(data)
                if eof:
                    await sink.drain()
                    return
                if not data:  # a long poll must not answer "nothing, not done": do not spin
                    await backoff.empty()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # agent gone: nothing more will come
            log.info("%s %s pump ended: %s", self._container_id, name, exc)
        finally:
            sink.close()

    async def _pump_in(self, source: FifoSource) -> None:
        try:
            if await source.open():
                while data := await source.read(self._stdin_closing):
                    view = memoryview(data)
                    while view:
                        view = view[await self._streams.write_stdin(bytes(view)):]
        except asyncio.CancelledError:
            source.close()
            raise  # torn down (or CloseIO gave up waiting, and closes it itself)
        except Exception as exc:
            log.info("%s stdin pump ended: %s", self._container_id, exc)
        source.close()
        try:  # however the input ended, the process gets its EOF
            await self._streams.close_stdin()
        except Exception as exc:
            log.info("%s close stdin: %s", self._container_id, exc)

    async def close_stdin(self) -> None:
        """containerd's CloseIO: the client will send no more input.

        ctr calls it as soon as its own stdin reaches EOF, possibly before we have read its
        last bytes from the fifo: the pump forwards what is buffered, then closes the guest's
        stdin. Before the process started, the pump does so once it starts.
        """
        if self._stdin is None or self._stdin_closing.is_set():
            return
        self._stdin_closing.set()
        task = self._stdin_task
        if task is None:
            return  # not started: start() runs the pump, which drains and closes at once
        try:
            await asyncio.wait_for(asyncio.shield(task), STDIN_DRAIN_SECONDS)
        except TimeoutError:
            log.warning("%s: stdin still flowing %ss after CloseIO; closing it",
                        self._container_id, STDIN_DRAIN_SECONDS)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            try:
                await self._streams.close_stdin()
            except Exception as exc:
                log.info("%s close stdin: %s", self._container_id, exc)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in [*self._output_tasks, self._stdin_task] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._stdin is not None:
            self._stdin.close()
        self._stdout.close()
        self._stderr.close()
        if self._logger is not None:
            try:
                await asyncio.wait_for(self._logger.wait(), 5)
            except TimeoutError:
                self._logger.kill()
                await self._logger.wait()


_FD_TRAMPOLINE = """
import fcntl, os, sys
originals = [int(fd) for fd in sys.argv[1:4]]
sources = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in originals]
for fd in originals:
    os.close(fd)  # the logger must hold only fds 3-5, or fd 5 would never reach EOF
for target, fd in zip((3, 4, 5), sources):
    os.dup2(fd, target)
for fd in sources:
    os.close(fd)
os.execv(sys.argv[4], sys.argv[4:])
"""


def _path_of(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme in ("", "fifo", "file", "binary"):
        return parts.path if parts.scheme else uri
    raise StdioError(f"unsupported stdio URI scheme {parts.scheme!r} in {uri!r}")


__all__ = ["ProcessIO", "ProcessStreams", "StdioError", "StdioSpec"]

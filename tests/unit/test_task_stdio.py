"""Host-side stdio against real fifos and files, the guest side faked (one layer):
stdin that is not a fifo, stdin pumps that fail, slow and vanished output readers, and a guest
whose long polls answer at once with nothing."""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from shim.task.fifo_sink import BACKLOG_BYTES, FifoSink
from shim.task.manager import CreateRequest
from shim.task.stdio import ProcessIO, StdioSpec


class ScriptedStreams:
    """The guest end of one process's streams, answering as told."""

    def __init__(self, output: list[bytes] | None = None, empty_forever: bool = False,
                 fail_writes: bool = False) -> None:
        self._output = list(output or [])
        self._empty_forever = empty_forever
        self._fail_writes = fail_writes
        self.reads = 0
        self.stdin = bytearray()
        self.stdin_closed = asyncio.Event()

    async def read_stdout(self) -> tuple[bytes, bool]:
        self.reads += 1
        if self._empty_forever:
            return b"", False
        if self._output:
            return self._output.pop(0), False
        return b"", True

    async def read_stderr(self) -> tuple[bytes, bool]:
        return b"", True

    async def write_stdin(self, data: bytes) -> int:
        if self._fail_writes:
            raise OSError("the guest refused the write")
        self.stdin += data
        return len(data)

    async def close_stdin(self) -> None:
        self.stdin_closed.set()


async def _run_io(spec: StdioSpec, streams: ScriptedStreams) -> ProcessIO:
    io = ProcessIO(spec, streams, "c1", "test")
    await io.open()
    io.start()
    return io


@pytest.mark.parametrize("content", [None, b"from a file\n" * 1000])
async def test_stdin_that_is_not_a_fifo_is_read_and_closed(tmp_path: Path, content):
    """/dev/null and regular files cannot be polled (epoll says EPERM): they are read
    directly, and the process gets its EOF instead of waiting on stdin forever."""
    if content is None:
        path = "/dev/null"
    else:
        path = str(tmp_path / "input")
        Path(path).write_bytes(content)
    streams = ScriptedStreams()
    io = await _run_io(StdioSpec(stdin=path), streams)
    try:
        await asyncio.wait_for(streams.stdin_closed.wait(), 5)
        assert bytes(streams.stdin) == (content or b"")
    finally:
        await io.close()


async def test_a_failed_stdin_write_still_closes_the_guest_stdin(tmp_path: Path):
    fifo = tmp_path / "in"
    os.mkfifo(fifo)
    streams = ScriptedStreams(fail_writes=True)
    io = await _run_io(StdioSpec(stdin=str(fifo)), streams)
    writer = await asyncio.to_thread(os.open, fifo, os.O_WRONLY)
    try:
        os.write(writer, b"lost")
        await asyncio.wait_for(streams.stdin_closed.wait(), 5)
    finally:
        os.close(writer)
        await io.close()


async def test_empty_answers_from_the_guest_are_paced():
    streams = ScriptedStreams(empty_forever=True)
    io = await _run_io(StdioSpec(), streams)
    try:
        await asyncio.sleep(1.0)
    finally:
        await io.close()
    assert streams.reads <= 12, f"{streams.reads} reads in 1 s: the host spins"


async def test_a_slow_reader_loses_nothing(tmp_path: Path):
    """A reader silent for longer than any fixed patience (6 s) still gets every byte."""
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    chunks = [bytes([65 + i % 26]) * 65536 for i in range(8)]  # 512 KiB: far beyond the pipe
    streams = ScriptedStreams(output=list(chunks))
    io = await _run_io(StdioSpec(stdout=str(fifo)), streams)
    try:
        await asyncio.sleep(6.0)
        os.set_blocking(reader, True)
        received = await asyncio.to_thread(_read_to_eof, reader)
    finally:
        os.close(reader)
        await io.close()
    assert received == b"".join(chunks)


def _read_to_eof(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    return data


async def test_without_a_reader_the_backlog_is_bounded_and_flows_to_a_new_reader(tmp_path):
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    sink = FifoSink.open(str(fifo), "test")  # nobody ever opened the read end
    try:
        started = time.monotonic()
        for i in range(5 * 16):  # 5 MiB
            await sink.write(bytes([i % 256]) * 65536)
        assert time.monotonic() - started < 2  # never blocked on the missing reader
        assert sink.backlog == BACKLOG_BYTES
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            await asyncio.sleep(0.3)  # past the probe interval
            await sink.write(b"last")
            received = b""
            drained = asyncio.ensure_future(sink.drain())
            while not drained.done() or received[-4:] != b"last":
                try:
                    received += os.read(reader, 65536)
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            await drained
        finally:
            os.close(reader)
        assert received.endswith(b"last")
        assert len(received) <= BACKLOG_BYTES + 4 and len(received) >= BACKLOG_BYTES
    finally:
        sink.close()


async def test_a_reader_that_leaves_does_not_block_the_process(tmp_path: Path):
    fifo = tmp_path / "out"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    sink = FifoSink.open(str(fifo), "test")
    try:
        await sink.write(b"x" * 200_000)
        writing = asyncio.ensure_future(sink.write(b"y" * (2 * BACKLOG_BYTES)))
        await asyncio.sleep(0.1)
        assert not writing.done()  # a present reader: back-pressure
        os.close(reader)
        reader = -1
        await asyncio.wait_for(writing, 5)  # it left: the write completes, output is dropped
        assert sink.backlog <= BACKLOG_BYTES
        await asyncio.wait_for(sink.drain(), 5)
    finally:
        if reader >= 0:
            os.close(reader)
        sink.close()


async def test_manager_forwards_dev_null_stdin(bundle):
    """Through the task manager: Create with stdin=/dev/null, the guest's stdin gets closed."""
    from shim.events import RecordingSink
    from shim.task.manager import TaskManager
    from test_task_manager import FakeBackend  # same directory

    backend = FakeBackend()
    manager = TaskManager(backend, RecordingSink(), "test")
    try:
        await manager.create(CreateRequest("c1", bundle, [], StdioSpec(stdin="/dev/null")))
        await manager.start("c1", "")
        for _ in range(100):
            if backend.proc("c1").stdin_closed:
                break
            await asyncio.sleep(0.02)
        assert backend.proc("c1").stdin_closed
    finally:
        await manager.close()

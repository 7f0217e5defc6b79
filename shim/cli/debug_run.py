"""`graft debug run ROOTFS -- CMD ARGS...`: cold-boot (or restore) a VM, run
CMD in a container on ROOTFS, stream stdio, exit with CMD's status, tear
everything down (like `runsc do`)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import termios
import threading
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Awaitable

from shim.agent.streams import copy_input, copy_output
from shim.config import GraftConfig
from shim.oci import default_spec
from shim.sandbox.sandbox import Sandbox

log = logging.getLogger(__name__)

CONTAINER_ID = "main"
INTERRUPTED_STATUS = 130  # as a shell reports a command stopped by Ctrl-C
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


@dataclass(frozen=True)
class DebugRunRequest:
    rootfs: Path
    command: tuple[str, ...]
    terminal: bool
    env: tuple[str, ...] = ()
    cwd: str = "/"


def _stdin_chunks(fd: int) -> AsyncIterator[bytes]:
    """Host stdin as an async iterator. A daemon thread does the blocking
    reads, so a stdin nobody types into never holds up the exit."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=16)

    def reader() -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            try:
                asyncio.run_coroutine_threadsafe(queue.put(data), loop).result()
            except Exception:  # the loop is gone: we are exiting
                return
            if not data:
                return

    threading.Thread(target=reader, name="stdin-reader", daemon=True).start()

    async def chunks() -> AsyncIterator[bytes]:
        while data := await queue.get():
            yield data

    return chunks()


def _fd_sink(fd: int):
    """Write to a host fd. Once its reader is gone (`| head -1`), further
    output is dropped: the container runs on and its status still counts."""
    reader_gone = False

    async def sink(data: bytes) -> None:
        nonlocal reader_gone
        view = memoryview(data)
        while view and not reader_gone:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                await asyncio.sleep(0.01)
            except BrokenPipeError:
                reader_gone = True
    return sink


@contextlib.contextmanager
def _raw_terminal(fd: int, enabled: bool):
    if not (enabled and os.isatty(fd)):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class _SignalRequests:
    """Agent calls started from signal handlers (forwarded signals, window
    resizes): owned here, so none outlives the run and a failure (e.g. the
    process already exited) is logged, not lost."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def start(self, call: Awaitable[None]) -> None:
        task = asyncio.ensure_future(call)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("forwarding to the container failed: %s", task.exception())

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class LaunchInterrupted(Exception):
    """A signal arrived before the container started; everything was removed."""


async def run_in_vm(config: GraftConfig, request: DebugRunRequest) -> int:
    if not request.rootfs.is_dir():
        raise FileNotFoundError(f"rootfs {request.rootfs} is not a directory")
    loop = asyncio.get_running_loop()
    sandbox_id = f"debug-{secrets.token_hex(6)}"
    spec = default_spec(list(request.command), terminal=request.terminal,
                        env=list(request.env), cwd=request.cwd)
    # Until the container exists, a signal aborts the launch (which cleans up
    # after itself); from then on signals are forwarded to the container.
    launching = asyncio.current_task()
    assert launching is not None
    for signum in FORWARDED_SIGNALS:
        loop.add_signal_handler(signum, lambda s=signum: launching.cancel(f"signal {s}"))
    try:
        sandbox = await Sandbox.launch(sandbox_id, config)
    except asyncio.CancelledError:
        raise LaunchInterrupted("interrupted while the VM was starting") from None
    finally:
        for signum in FORWARDED_SIGNALS:
            loop.remove_signal_handler(signum)
    requests = _SignalRequests()
    try:
        agent = sandbox.agent
        guest_rootfs = sandbox.add_container_rootfs(CONTAINER_ID, request.rootfs.resolve())
        await agent.create_container(CONTAINER_ID, json.dumps(spec).encode(), guest_rootfs,
                                     stdin=True, runtime=config.get("agent", "runtime"))
        for signum in FORWARDED_SIGNALS:
            loop.add_signal_handler(signum, lambda s=signum: requests.start(
                agent.signal_process(CONTAINER_ID, "", int(s))))
        if request.terminal and os.isatty(1):
            async def resize() -> None:
                cols, rows = os.get_terminal_size(1)
                if rows and cols:  # a fresh pty may report 0x0: nothing to copy
                    await agent.tty_win_resize(CONTAINER_ID, "", rows, cols)
            loop.add_signal_handler(signal.SIGWINCH, lambda: requests.start(resize()))
            await resize()
        with _raw_terminal(0, request.terminal):
            async with asyncio.TaskGroup() as tg:
                tg.create_task(copy_output(agent, CONTAINER_ID, "", "stdout", _fd_sink(1)))
                if not request.terminal:
                    tg.create_task(copy_output(agent, CONTAINER_ID, "", "stderr", _fd_sink(2)))
                stdin_task = tg.create_task(
                    copy_input(agent, CONTAINER_ID, "", _stdin_chunks(0)))
                await agent.start_container(CONTAINER_ID)
                status = await agent.wait_process(CONTAINER_ID, "")
                # The process is gone: nobody will read more input.
                stdin_task.cancel()
        await agent.remove_container(CONTAINER_ID, force=True)
        return status.exit_status
    finally:
        for signum in (*FORWARDED_SIGNALS, signal.SIGWINCH):
            loop.remove_signal_handler(signum)
        await requests.cancel_all()
        await sandbox.stop()


def debug_run(config: GraftConfig, request: DebugRunRequest) -> int:
    try:
        return asyncio.run(run_in_vm(config, request))
    except LaunchInterrupted as exc:
        print(f"graft: {exc}", file=sys.stderr)
        return INTERRUPTED_STATUS


__all__ = ["DebugRunRequest", "LaunchInterrupted", "debug_run", "run_in_vm"]

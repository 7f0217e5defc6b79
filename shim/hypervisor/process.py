"""Supervision of a VMM child process.

The VMM is started so that it can never outlive its owner
(PR_SET_PDEATHSIG=SIGKILL, checked against a parent that died before the
prctl), optionally inside a network namespace (setns in the child before
exec), with stdout/stderr going to a file whose tail goes into error
messages. Its exit is noticed by an owned watcher task.

PDEATHSIG fires when the *thread* that forked the child ends; asyncio forks
from the event-loop thread, so run the owner's loop in a thread that lives as
long as the VMs it owns (normally the main thread).
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from .base import HypervisorError, VmExited
from .bounded_log import BoundedLog, read_tail

PR_SET_PDEATHSIG = 1
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
# Resolved here, in the parent: the child must not dlopen/dlsym after fork.
_prctl = _libc.prctl
_setns = _libc.setns

T = TypeVar("T")

log = logging.getLogger(__name__)

# How long a failed VMM request waits to see whether the VMM is exiting.
_DYING_GRACE = 0.5
_LOG_DRAIN_SECONDS = 2.0  # after the VMM exited, for output still in the pipe


def _child_setup(owner_pid: int, netns_fd: int | None) -> None:
    """Runs in the forked child, before exec. Failures abort the exec."""
    if _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != owner_pid:  # owner died before the prctl took effect
        os._exit(1)
    if netns_fd is not None and _setns(netns_fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns(CLONE_NEWNET) failed")


def tail_of_file(path: Path, lines: int = 20, max_bytes: int = 64 * 1024) -> str:
    data = read_tail(path, max_bytes)
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


class VmmProcess:
    """One running VMM process. Create with :meth:`spawn`."""

    @property
    def log_path(self) -> Path:
        return self._logs[0].path

    def relocate_logs(self, old_dir: Path, new_dir: Path) -> None:
        """The run dir holding the logs was renamed from *old_dir* to *new_dir*."""
        for each in self._logs:
            each.path = new_dir / each.path.relative_to(old_dir)

    def __init__(self, proc: asyncio.subprocess.Process, name: str, logs: Sequence[BoundedLog],
                 exited: asyncio.Event | None = None,
                 on_exit: Callable[[int], None] | None = None) -> None:
        self._proc = proc
        self.name = name
        self._logs = list(logs)  # [stdout+stderr, then what the caller handed over]
        # Set once the process is reaped; may be an event owned by the caller.
        self.exited = exited if exited is not None else asyncio.Event()
        self._on_exit = on_exit  # called with the exit status once reaped
        self._watcher = asyncio.create_task(self._watch(), name=f"{name}-exit-watch")

    @classmethod
    async def spawn(cls, argv: Sequence[str], *, name: str, log_path: Path,
                    netns: Path | None = None, pass_fds: Sequence[int] = (),
                    logs: Sequence[BoundedLog] = (),
                    exited: asyncio.Event | None = None,
                    on_exit: Callable[[int], None] | None = None) -> "VmmProcess":
        """Start *argv*; its stdout+stderr go to *log_path* (a BoundedLog, truncated).
        *logs* (other outputs of the VMM, e.g. its console) are owned from now on: closed
        once the VMM exited and they were drained."""
        netns_fd: int | None = None
        log_read, log_write = os.pipe()
        log_writer = os.fdopen(log_write, "wb")  # ours until the child has its copy
        try:
            output = BoundedLog(log_read, log_path)
        except BaseException:
            os.close(log_read)
            log_writer.close()
            for extra in logs:
                extra.close()
            raise
        try:
            if netns is not None:
                try:
                    netns_fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    raise HypervisorError(f"cannot open network namespace {netns}: {exc.strerror}") from exc
            owner = os.getpid()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=subprocess.DEVNULL, stdout=log_writer, stderr=log_writer,
                    pass_fds=tuple(pass_fds), close_fds=True,
                    # Own session: terminal signals meant for the owner do
                    # not reach the VMM; owner death does (PDEATHSIG).
                    start_new_session=True,
                    preexec_fn=lambda: _child_setup(owner, netns_fd))
            except FileNotFoundError as exc:
                raise HypervisorError(f"{name}: binary {argv[0]!r} not found") from exc
            except PermissionError as exc:
                raise HypervisorError(f"{name}: binary {argv[0]!r} not executable") from exc
            except subprocess.SubprocessError as exc:
                where = f" (entering netns {netns})" if netns is not None else ""
                raise HypervisorError(f"{name}: child setup failed{where}: {exc}") from exc
        except BaseException:
            for each in (output, *logs):
                each.close()
            raise
        finally:
            log_writer.close()
            if netns_fd is not None:
                os.close(netns_fd)
        return cls(proc, name, [output, *logs], exited, on_exit)

    async def _watch(self) -> None:
        try:
            await self._proc.wait()
            for each in self._logs:  # its last words, for tails
                await each.closed(timeout=_LOG_DRAIN_SECONDS)
        finally:
            for each in self._logs:
                each.close()
            if self._proc.returncode is not None:
                self.exited.set()
                if self._on_exit is not None:
                    try:
                        self._on_exit(self._proc.returncode)
                    except Exception:  # a reporting hook must not break supervision
                        log.exception("%s exit hook failed", self.name)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once reaped (negative signal number if killed)."""
        return self._proc.returncode

    def log_tail(self, lines: int = 20) -> str:
        return tail_of_file(self.log_path, lines)

    def kill(self) -> None:
        if self._proc.returncode is None:
            try:
                self._proc.kill()
            except ProcessLookupError:
                pass

    async def wait(self) -> int:
        await self.exited.wait()
        rc = self._proc.returncode
        assert rc is not None
        return rc

    async def stop(self, grace: float = 0.0) -> int:
        """Wait up to *grace* seconds for a voluntary exit, then SIGKILL;
        always reaps."""
        if grace > 0:
            try:
                await asyncio.wait_for(self.exited.wait(), grace)
            except TimeoutError:
                pass
        self.kill()
        return await self.wait()

    async def close(self) -> None:
        """Kill, reap and stop the watcher. Idempotent."""
        await self.stop()
        await self._watcher


async def race_exit(aw: Awaitable[T], process: VmmProcess, *, timeout: float | None,
                    what: str, describe: Callable[[str], str]) -> T:
    """Await *aw* unless the VMM exits first (VmExited) or *timeout* passes
    (HypervisorError). Error messages carry the VMM's log and console tails.

    If *aw* fails while the VMM is dying (a closed socket is usually the
    first sign), VmExited is raised instead of the socket error."""
    work = asyncio.ensure_future(aw)
    exit_wait = asyncio.ensure_future(process.exited.wait())

    def exited_error() -> VmExited:
        return VmExited(describe(f"{process.name} exited (status {process.returncode}) during {what}"))

    try:
        done, _ = await asyncio.wait({work, exit_wait}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            exc = work.exception()
            if exc is None:
                return work.result()
            if not isinstance(exc, HypervisorError):
                try:
                    await asyncio.wait_for(asyncio.shield(exit_wait), _DYING_GRACE)
                except TimeoutError:
                    pass
                if process.exited.is_set():
                    raise exited_error() from exc
            raise exc
        if exit_wait in done:
            raise exited_error()
        raise HypervisorError(describe(f"timed out after {timeout:.1f}s during {what}"))
    finally:
        for fut in (work, exit_wait):
            if not fut.done():
                fut.cancel()
        await asyncio.gather(work, exit_wait, return_exceptions=True)


class Describer:
    """Builds error messages that end with the VMM log and console tails."""

    def __init__(self, vm_id: str, process_log: Path, console_log: Path) -> None:
        self.vm_id = vm_id
        self.process_log = process_log
        self.console_log = console_log

    def __call__(self, message: str) -> str:
        parts = [f"VM {self.vm_id}: {message}"]
        log = tail_of_file(self.process_log)
        if log:
            parts.append(f"--- VMM output (tail) ---\n{log}")
        console = tail_of_file(self.console_log)
        if console:
            parts.append(f"--- console (tail) ---\n{console}")
        return "\n".join(parts)

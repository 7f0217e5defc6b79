"""Driving an OCI runtime binary (crun or runc) through its command line.

Every invocation gets its own --log file (JSON lines) so the runtime's own complaints never mix
with a container's stdout/stderr, and a failure's message carries the runtime's words.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal

from .errors import RuntimeFailure
from .fsutil import which
from .spawn import DEVNULL, Spawner

log = logging.getLogger(__name__)

SUPPORTED_RUNTIMES = ("crun", "runc")


class Stdio:
    """fds the runtime (and through it the container process) gets as stdin/stdout/stderr."""

    def __init__(self, stdin: int = DEVNULL, stdout: int = DEVNULL, stderr: int = DEVNULL) -> None:
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr


class OciRuntime:
    def __init__(self, name: str, binary: str, state_root: str, log_dir: str,
                 spawner: Spawner, no_pivot: bool) -> None:
        self.name = name
        self.binary = binary
        self.state_root = state_root
        self._log_dir = log_dir
        self._spawner = spawner
        self._no_pivot = no_pivot
        self._serial = itertools.count(1)

    @classmethod
    def find(cls, name: str, state_root: str, log_dir: str, spawner: Spawner,
             no_pivot: bool) -> "OciRuntime | None":
        binary = which(name)
        if binary is None:
            return None
        os.makedirs(state_root, mode=0o700, exist_ok=True)
        os.makedirs(log_dir, mode=0o700, exist_ok=True)
        return cls(name, binary, state_root, log_dir, spawner, no_pivot)

    # -- container lifecycle ----------------------------------------------------------------

    async def create(self, container_id: str, bundle: str, pid_file: str, stdio: Stdio,
                     console_socket: str | None = None) -> None:
        args = ["--bundle", bundle, "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        if self._no_pivot:
            args.append("--no-pivot")
        await self._run_with_stdio("create", args + [container_id], stdio)

    async def exec(self, container_id: str, process_file: str, pid_file: str, stdio: Stdio,
                   console_socket: str | None = None) -> None:
        args = ["--detach", "--pid-file", pid_file, "--process", process_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        await self._run_with_stdio("exec", args + [container_id], stdio)

    async def start(self, container_id: str) -> None:
        await self._run("start", [container_id])

    async def pause(self, container_id: str) -> None:
        await self._run("pause", [container_id])

    async def resume(self, container_id: str) -> None:
        await self._run("resume", [container_id])

    async def update(self, container_id: str, resources_file: str) -> None:
        await self._run("update", ["--resources", resources_file, container_id])

    async def kill(self, container_id: str, sig: int = signal.SIGKILL, all_processes: bool = False) -> None:
        await self._run("kill", (["--all"] if all_processes else []) + [container_id, str(sig)])

    async def delete(self, container_id: str, force: bool = False) -> None:
        await self._run("delete", (["--force"] if force else []) + [container_id])

    def has_state(self, container_id: str) -> bool:
        return os.path.exists(os.path.join(self.state_root, container_id))

    # -- plumbing ---------------------------------------------------------------------------

    def _argv(self, log_file: str, args: list[str]) -> list[str]:
        argv = [self.binary, "--root", self.state_root, "--log", log_file,
                "--log-format", "json", *args]
        log.debug("running %s", " ".join(argv))
        return argv

    def _log_file(self, command: str) -> str:
        return os.path.join(self._log_dir, f"{command}-{next(self._serial)}.log")

    async def _run(self, command: str, args: list[str]) -> None:
        log_file = self._log_file(command)
        try:
            result = await self._spawner.run(self._argv(log_file, [command, *args]))
            if result.status != 0:
                raise self._failure(command, result.status, log_file,
                                    (result.stderr or result.stdout).decode(errors="replace"))
        finally:
            _unlink(log_file)

    async def _run_with_stdio(self, command: str, args: list[str], stdio: Stdio) -> None:
        """Run a command whose stdio is handed down to a container process (create, exec).

        Its stderr is then usually the container's, so the error text comes from the log file;
        when the process gets a terminal instead (stdio all /dev/null), the runtime's own
        output is captured too, for errors it reports before its log is set up."""
        log_file = self._log_file(command)
        capture_r = capture_w = -1
        if stdio.stdout == DEVNULL and stdio.stderr == DEVNULL:
            capture_r, capture_w = os.pipe()
            stdio = Stdio(stdio.stdin, capture_w, capture_w)
        try:
            try:
                child = self._spawner.spawn(self._argv(log_file, [command, *args]), stdin=stdio.stdin,
                                            stdout=stdio.stdout, stderr=stdio.stderr)
            finally:
                if capture_w >= 0:
                    os.close(capture_w)
            info = await self._spawner.wait_run(child)
            if info.status != 0:
                said = _read_available(capture_r) if capture_r >= 0 else b""
                raise self._failure(command, info.status, log_file, said.decode(errors="replace"))
        finally:
            _unlink(log_file)
            if capture_r >= 0:
                os.close(capture_r)

    def _failure(self, command: str, status: int, log_file: str, fallback: str) -> RuntimeFailure:
        detail = read_log_errors(log_file) or fallback.strip() or "no error message"
        return RuntimeFailure(f"{self.name} {command} failed (exit status {status}): {detail}")


def read_log_errors(path: str, limit: int = 4096) -> str:
    """The messages of a runtime's JSON log (crun and runc agree on {"level", "msg"})."""
    try:
        with open(path, "rb") as f:
            raw = f.read()[-64 * 1024:]
    except OSError:
        return ""
    import json

    messages = []
    for line in raw.decode(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            messages.append(line)
            continue
        if isinstance(entry, dict) and entry.get("level", "error") in ("error", "fatal", "panic"):
            messages.append(str(entry.get("msg", line)))
    text = "; ".join(messages)
    return text[-limit:]


def _read_available(fd: int, limit: int = 65536) -> bytes:
    """What is in a pipe right now (a surviving writer must not make us wait for EOF)."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, limit)
    except BlockingIOError:
        return b""


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

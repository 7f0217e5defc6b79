"""Driving an OCI runtime binary (crun or runc) through its command line (a ContainerRuntime).

Every invocation gets its own --log file (JSON lines) so the runtime's own complaints never mix
with a container's stdout/stderr, and a failure's message carries the runtime's words.
"""

from __future__ import annotations

import itertools
import logging
import os
import time

from . import bundle
from .console_socket import ConsoleSocket, receive_terminal
from .errors import RuntimeFailure
from .fsutil import read_text, which
from .reaper import ChildReaper
from .runtime import Launched, ProcessIO, Stdio
from .spawn import DEVNULL, Spawner

log = logging.getLogger(__name__)

CLI_RUNTIMES = ("crun", "runc")


class OciRuntime:
    """crun or runc: every operation is one invocation of the binary; the container's init
    and execs reparent to the agent (PID 1 / subreaper) once the runtime exits."""

    def __init__(self, name: str, binary: str, state_root: str, log_dir: str, sockets_dir: str,
                 spawner: Spawner, reaper: ChildReaper, no_pivot: bool) -> None:
        self.name = name
        self.binary = binary
        self.state_root = state_root
        self._log_dir = log_dir
        self._sockets_dir = sockets_dir
        self._spawner = spawner
        self._reaper = reaper
        self._no_pivot = no_pivot
        self._bundles: dict[str, str] = {}
        self._serial = itertools.count(1)

    @classmethod
    def find(cls, name: str, runtime_dir: str, sockets_dir: str, spawner: Spawner,
             reaper: ChildReaper, no_pivot: bool) -> "OciRuntime | None":
        binary = which(name)
        if binary is None:
            return None
        state_root = os.path.join(runtime_dir, name)
        log_dir = os.path.join(runtime_dir, "logs")
        for directory in (state_root, log_dir, sockets_dir):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        return cls(name, binary, state_root, log_dir, sockets_dir, spawner, reaper, no_pivot)

    # -- container lifecycle ----------------------------------------------------------------

    async def create(self, container_id: str, bundle_dir: str, spec: dict, io: ProcessIO) -> Launched:
        bundle.write_json(os.path.join(bundle_dir, "config.json"), spec)
        self._bundles[container_id] = bundle_dir
        pid_file = os.path.join(bundle_dir, "init.pid")
        args = ["--bundle", bundle_dir, "--pid-file", pid_file]
        if self._no_pivot:
            args.append("--no-pivot")
        return await self._launch("create", args, container_id, pid_file, io)

    async def exec(self, container_id: str, bundle_dir: str, process: dict, io: ProcessIO) -> Launched:
        n = next(self._serial)
        process_file = os.path.join(bundle_dir, f"exec-{n}.json")
        pid_file = os.path.join(bundle_dir, f"exec-{n}.pid")
        try:
            bundle.write_json(process_file, process)
            return await self._launch("exec", ["--detach", "--pid-file", pid_file,
                                               "--process", process_file], container_id, pid_file, io)
        finally:
            for path in (process_file, pid_file):
                _unlink(path)

    async def _launch(self, command: str, args: list[str], container_id: str, pid_file: str,
                      io: ProcessIO) -> Launched:
        """Run create/exec, whose process reparents to us; adopt the pid the runtime wrote."""
        started_after = time.monotonic()
        master = None
        if io.terminal:
            console = ConsoleSocket(os.path.join(self._sockets_dir, f"console-{next(self._serial)}.sock"))
            master = await receive_terminal(console, self._run_with_stdio(
                command, args + ["--console-socket", console.path, container_id], Stdio()))
        else:
            await self._run_with_stdio(command, args + [container_id], io.stdio)
        try:
            pid = _read_pid(pid_file)
        except BaseException:
            if master is not None:
                os.close(master)
            raise
        return Launched(pid, self._reaper.watch_adopted(pid, started_after), master)

    async def start(self, container_id: str) -> None:
        await self._run("start", [container_id])

    async def pause(self, container_id: str) -> None:
        await self._run("pause", [container_id])

    async def resume(self, container_id: str) -> None:
        await self._run("resume", [container_id])

    async def update(self, container_id: str, resources: dict) -> None:
        path = os.path.join(self._bundles.get(container_id, self.state_root),
                            f"resources-{next(self._serial)}.json")
        try:
            bundle.write_json(path, resources)
            await self._run("update", ["--resources", path, container_id])
        finally:
            _unlink(path)

    async def delete(self, container_id: str, force: bool = False) -> None:
        await self._run("delete", (["--force"] if force else []) + [container_id])
        self._bundles.pop(container_id, None)

    def has_state(self, container_id: str) -> bool:
        if os.path.exists(os.path.join(self.state_root, container_id)):
            return True
        self._bundles.pop(container_id, None)
        return False

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


def _read_pid(path: str) -> int:
    text = read_text(path).strip()
    if not text.isdigit():
        raise RuntimeFailure(f"the OCI runtime wrote no pid to {path}")
    return int(text)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

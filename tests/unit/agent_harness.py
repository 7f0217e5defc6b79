"""Running the real guest agent on the host for tests (shared by tests/unit/test_agent_*.py).

The agent runs as a normal process (`--listen unix:... --no-init --isolate --isolate-net`):
private mount/UTS/network namespaces, so it can mount cgroup2 at its own /sys/fs/cgroup (this
host's /sys/fs/cgroup is a cgroup v1 tmpfs; crun/runc pick their cgroup mode from it), set a
hostname and configure links without touching the host. Containers run with the real crun/runc.

Host quirk: root here lacks CAP_SYS_RESOURCE, so crun's eBPF device filter (it raises
RLIMIT_MEMLOCK first) fails; test specs therefore carry no linux.resources.devices rules.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from google.protobuf import message_factory

from graft_agent.api import SERVICE_NAME, agent_pb2 as pb
from shim.ttrpc import Client, TtrpcError

ROOT = Path(__file__).resolve().parents[2]
_SERVICE = pb.DESCRIPTOR.services_by_name["AgentService"]
_serial = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_serial)}"


def spec(args: list[str], terminal: bool = False, env: list[str] | None = None) -> bytes:
    return json.dumps({
        "ociVersion": "1.0.2",
        "process": {"terminal": terminal, "user": {"uid": 0, "gid": 0}, "args": args,
                    "env": env or ["PATH=/bin", "TERM=xterm"], "cwd": "/"},
        "root": {"path": "rootfs-is-replaced-by-the-agent", "readonly": True},
        "hostname": "ctr",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
        ],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
                  "maskedPaths": ["/proc/kcore", "/proc/keys"],
                  "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]},
    }).encode()


def process_json(args: list[str], terminal: bool = False) -> bytes:
    return json.dumps({"terminal": terminal, "user": {"uid": 0, "gid": 0}, "args": args,
                       "env": ["PATH=/bin", "TERM=xterm"], "cwd": "/"}).encode()


def seccomp_binding_dir(workdir: Path) -> Path | None:
    """A directory holding only Debian's python3-seccomp extension (built for CPython 3.11),
    so this interpreter can import `seccomp` without the rest of dist-packages."""
    found = sorted(Path("/usr/lib/python3/dist-packages").glob("seccomp.cpython-311-*.so"))
    if not found:
        return None
    directory = workdir / "seccomp-binding"
    directory.mkdir(exist_ok=True)
    link = directory / found[0].name
    if not link.exists():
        link.symlink_to(found[0])
    return directory


def host_cgroup2_root() -> Path:
    """Where the host mounts the unified hierarchy (the agent's cgroups show up there)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if " - cgroup2 " in line:
            return Path(line.split()[4])
    raise RuntimeError("no cgroup2 hierarchy mounted on this host")


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


class AgentProcess:
    """One agent process with its own run dir, socket and cgroup parent."""

    def __init__(self, workdir: Path, runtime: str = "crun") -> None:
        self.workdir = workdir
        self.socket = str(workdir / "agent.sock")
        self.run_dir = workdir / "run"
        self.cgroup_parent = unique("graft-test")
        self.log_path = workdir / "agent.log"
        self.runtime = runtime
        self.proc: subprocess.Popen | None = None
        self.pids_seen: set[int] = set()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def cgroup_dir(self) -> Path:
        return host_cgroup2_root() / self.cgroup_parent

    def start(self, timeout: float = 20.0) -> None:
        binding = seccomp_binding_dir(self.workdir)
        env = dict(os.environ, PYTHONPATH=":".join([str(ROOT)] + ([str(binding)] if binding else [])))
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "graft_agent", "--listen", f"unix:{self.socket}", "--no-init",
             "--isolate", "--isolate-net", "--run-dir", str(self.run_dir),
             "--cgroup-parent", self.cgroup_parent, "--runtime", self.runtime,
             "--log-level", "debug"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent did not listen within {timeout}s:\n{self.log()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def leftovers(self) -> list[str]:
        """Everything the agent should have released once it is gone."""
        found = []
        for runtime in ("crun", "runc"):
            state = self.run_dir / "runtime" / runtime
            if state.exists() and any(state.iterdir()):
                found.append(f"{runtime} state: {sorted(p.name for p in state.iterdir())}")
        bundles = self.run_dir / "containers"
        if bundles.exists() and any(bundles.iterdir()):
            found.append(f"bundles: {sorted(p.name for p in bundles.iterdir())}")
        if self.cgroup_dir.exists():
            found.append(f"cgroup {self.cgroup_dir}")
        alive = sorted(pid for pid in self.pids_seen if process_alive(pid))
        if alive:
            found.append(f"processes still alive: {alive}")
        return found


class AgentClient:
    """ttrpc client of the agent API; response types come from the service descriptor."""

    def __init__(self, client: Client, agent: AgentProcess) -> None:
        self.client = client
        self.agent = agent

    @classmethod
    async def connect(cls, agent: AgentProcess) -> "AgentClient":
        deadline = time.monotonic() + 10
        while True:
            try:
                return cls(await Client.connect_unix(agent.socket), agent)
            except TtrpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def call(self, method: str, request, timeout: float | None = 60.0):
        response_type = message_factory.GetMessageClass(_SERVICE.methods_by_name[method].output_type)
        response = await self.client.call(SERVICE_NAME, method, request, response_type, timeout=timeout)
        if method in ("CreateContainer", "ExecProcess"):
            self.agent.pids_seen.add(response.pid)
        return response

    async def close(self) -> None:
        await self.client.close()

    # -- conveniences -----------------------------------------------------------------------

    async def create(self, cid: str, args: list[str], rootfs: Path, *, stdin: bool = False,
                     terminal: bool = False, runtime: str = "") -> int:
        response = await self.call("CreateContainer", pb.CreateContainerRequest(
            container_id=cid, oci_spec_json=spec(args, terminal), rootfs_path=str(rootfs),
            stdin=stdin, runtime=runtime))
        return response.pid

    async def start(self, cid: str) -> None:
        await self.call("StartContainer", pb.ContainerRequest(container_id=cid))

    async def exec(self, cid: str, exec_id: str, args: list[str], *, stdin: bool = False,
                   terminal: bool = False) -> int:
        response = await self.call("ExecProcess", pb.ExecProcessRequest(
            container_id=cid, exec_id=exec_id, process_json=process_json(args, terminal),
            stdin=stdin))
        return response.pid

    async def wait(self, cid: str, exec_id: str = "", timeout: float = 60.0) -> int:
        response = await self.call("WaitProcess", pb.ProcessRequest(container_id=cid, exec_id=exec_id),
                                   timeout=timeout)
        return response.exit_status

    async def signal(self, cid: str, sig: int, exec_id: str = "", all: bool = False) -> None:
        await self.call("SignalProcess", pb.SignalProcessRequest(
            container_id=cid, exec_id=exec_id, signal=sig, all=all))

    async def read_all(self, cid: str, exec_id: str = "", stream: str = "stdout",
                       timeout: float = 60.0) -> bytes:
        method = "ReadStdout" if stream == "stdout" else "ReadStderr"
        data = b""
        async with asyncio.timeout(timeout):
            while True:
                response = await self.call(method, pb.ReadStreamRequest(container_id=cid, exec_id=exec_id))
                data += response.data
                if response.eof:
                    return data

    async def read_until(self, cid: str, needle: bytes, exec_id: str = "",
                         timeout: float = 30.0) -> bytes:
        data = b""
        async with asyncio.timeout(timeout):
            while needle not in data:
                response = await self.call("ReadStdout", pb.ReadStreamRequest(container_id=cid, exec_id=exec_id))
                data += response.data
                if response.eof:
                    break
        return data

    async def remove(self, cid: str, force: bool = True) -> None:
        await self.call("RemoveContainer", pb.RemoveContainerRequest(container_id=cid, force=force))

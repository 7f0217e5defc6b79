"""What a graft pod may leave on the host, for tests against a private containerd: VMM and
shim processes, mounts under the graft state dir and the bundles (the pod's share tmpfs
included), the shim socket in /run/containerd/s, the pod's tap, ingress qdisc and tc redirects.

PodLeaks checks one pod by its id; NodeLeaks checks everything of one containerd and graft
state dir, for when no id is known (a RunPodSandbox that failed returns none): run dirs,
VMMs and shims, mounts, sockets that appeared since it was made, taps and qdiscs in the pod
netns containerd still has, and children a shim fork server did not reap."""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import psutil

from shim.config import load_config, parse_config
from shim.shim_manager.daemon_process import SHIM_NAME, is_shim_process
from shim.sandbox.state import SANDBOXES_DIR, SandboxRef, run_dir as state_run_dir
from shim.network import DEFAULT_TAP_NAME
from shim.shim_manager.socket_address import SOCKET_DIR, socket_path

TASK_DIR = "io.containerd.runtime.v2.task"


def _cmdlines() -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if raw:
                out[int(entry.name)] = raw.decode(errors="replace").rstrip("\0").split("\0")
    return out


def vmm_pids(run_dir: Path) -> list[int]:
    """VMM processes of one sandbox (their command line names its run dir)."""
    marker = f"{run_dir}/"
    return [pid for pid, argv in _cmdlines().items()
            if argv[0].rsplit("/", 1)[-1].startswith(("qemu-system", "cloud-hypervisor"))
            and any(marker in arg for arg in argv)]


def sandbox_run_dir(containerd_address: str, namespace: str, sandbox_id: str,
                    state_dir: Path) -> Path:
    """Where the shim keeps that containerd's sandbox (shim/sandbox/state.py)."""
    config = parse_config({"runtime": {"state_dir": str(state_dir)}})
    return state_run_dir(config, SandboxRef(sandbox_id, namespace, containerd_address))


def shim_pids(address: str, container_id: str | None = None) -> list[int]:
    """Shim daemons (and start/delete runs) of this containerd, optionally for one id."""
    found = []
    for pid, argv in _cmdlines().items():
        if not is_shim_process(argv, address):
            continue
        if container_id is None or f" -id {container_id} " in " ".join(argv) + " ":
            found.append(pid)
    return found


def mount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)),
                                 line.split()[4]))
    return points


def _under(path: str, prefix: Path) -> bool:
    return path == str(prefix) or path.startswith(f"{prefix}/")


def netns_links(netns: Path) -> list[str]:
    done = subprocess.run(["nsenter", f"--net={netns}", "ip", "-o", "link"], capture_output=True,
                          text=True, timeout=10)
    if done.returncode != 0:
        return []  # the netns is gone: nothing can be left in it
    return [line.split(":")[1].strip().split("@")[0] for line in done.stdout.splitlines()]


def netns_ingress_qdisc(netns: Path, device: str) -> bool:
    done = subprocess.run(["nsenter", f"--net={netns}", "tc", "qdisc", "show", "dev", device,
                           "ingress"], capture_output=True, text=True, timeout=10)
    return done.returncode == 0 and "ingress" in done.stdout


def netns_leaks(netns: Path, device: str = "eth0") -> list[str]:
    """graft's tap, tc redirects and the ingress qdisc it adds, in one pod netns."""
    found = []
    if DEFAULT_TAP_NAME in netns_links(netns):
        found.append(f"tap {DEFAULT_TAP_NAME} in {netns}")
    if "mirred" in netns_redirects(netns, device):
        found.append(f"tc redirect on {device} in {netns}")
    if netns_ingress_qdisc(netns, device):
        found.append(f"ingress qdisc on {device} in {netns}")
    return found


def netns_redirects(netns: Path, device: str) -> str:
    done = subprocess.run(["nsenter", f"--net={netns}", "tc", "filter", "show", "dev", device,
                           "ingress"], capture_output=True, text=True, timeout=10)
    return done.stdout if done.returncode == 0 else ""


class PodLeaks:
    """What one graft pod (VM) may leave on the host."""

    def __init__(self, containerd, sandbox_id: str, namespace: str, container_ids: list[str],
                 netns: Path | None = None, state_dir: Path | None = None) -> None:
        self.containerd = containerd
        self.sandbox_id = sandbox_id
        self.namespace = namespace
        self.container_ids = container_ids
        self.netns = netns
        self.state_dir = state_dir or load_config(containerd.layout.graft_config).state_dir

    @property
    def run_dir(self) -> Path:
        return sandbox_run_dir(self.containerd.address, self.namespace, self.sandbox_id,
                               self.state_dir)

    @property
    def bundles(self) -> list[Path]:
        base = self.containerd.layout.base / "state" / TASK_DIR / self.namespace
        return [base / cid for cid in self.container_ids]

    @property
    def socket(self) -> Path:
        return socket_path(self.containerd.address, self.namespace, self.sandbox_id)

    def leaks(self) -> list[str]:
        found = [f"VMM pid {pid}" for pid in vmm_pids(self.run_dir)]
        found += [f"shim pid {pid}" for cid in {self.sandbox_id, *self.container_ids}
                  for pid in shim_pids(self.containerd.address, cid)]
        for point in mount_points():
            if any(_under(point, p) for p in (self.run_dir, *self.bundles)):
                found.append(f"mount {point}")
        if self.run_dir.exists():
            found.append(f"state dir {self.run_dir}")
        if self.socket.exists():
            found.append(f"socket {self.socket}")
        if self.netns is not None:
            found += netns_leaks(self.netns)
        return found

    def assert_no_leaks(self, deadline_s: float = 20) -> None:
        _assert_none(self.leaks, deadline_s, f"pod {self.sandbox_id}")


def _assert_none(leaks, deadline_s: float, whose: str) -> None:
    deadline = time.monotonic() + deadline_s
    while (found := leaks()) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not found, f"left behind by {whose}: {found}"


def shim_sockets() -> set[Path]:
    directory = SOCKET_DIR
    return set(directory.iterdir()) if directory.is_dir() else set()


def fork_server_children() -> list[str]:
    """Processes a graft shim fork server still has as children: it double-forks every
    daemon and reaps the middle child at once, so any child is a leak (or a zombie)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline.startswith(f"{SHIM_NAME} fork-server "):
            try:
                found += [f"fork server {proc.pid} child {child.pid} ({child.status()})"
                          for child in proc.children()]
            except psutil.Error:
                continue
    return found


class NodeLeaks:
    """Everything graft pods of one private containerd and one graft state dir may leave.
    Make it before the pods it checks: sockets that exist already are not theirs."""

    def __init__(self, containerd, state_dir: Path) -> None:
        self.containerd = containerd
        self.state_dir = state_dir
        self._sockets_before = shim_sockets()

    @property
    def netns_dir(self) -> Path:
        # netns_mounts_under_state_dir = true (hack/containerd/private_containerd.py)
        return self.containerd.layout.base / "state" / "io.containerd.grpc.v1.cri" / "netns"

    def leaks(self) -> list[str]:
        sandboxes = self.state_dir / SANDBOXES_DIR
        found = [f"state dir {entry}" for entry in sorted(sandboxes.iterdir())] \
            if sandboxes.is_dir() else []
        marker, pool = f"{self.state_dir}/", f"{self.state_dir}/pool/"
        # A warm pool's VMs wait for pods by design (the fork server owns them): not a leak.
        found += [f"VMM pid {pid}" for pid, argv in _cmdlines().items()
                  if argv[0].rsplit("/", 1)[-1].startswith(("qemu-system", "cloud-hypervisor"))
                  and any(marker in arg for arg in argv)
                  and not any(pool in arg for arg in argv)]
        found += [f"shim pid {pid}" for pid in shim_pids(self.containerd.address)]
        bundles = self.containerd.layout.base / "state" / TASK_DIR
        found += [f"mount {point}" for point in mount_points()
                  if _under(point, sandboxes) or _under(point, bundles)]
        found += [f"socket {path}" for path in sorted(shim_sockets() - self._sockets_before)]
        if self.netns_dir.is_dir():
            for netns in sorted(self.netns_dir.iterdir()):
                found += netns_leaks(netns)
        return found + fork_server_children()

    def assert_no_leaks(self, deadline_s: float = 20) -> None:
        _assert_none(self.leaks, deadline_s, f"the pods of {self.containerd.address}")

"""The README's main command after set-up (hack/demo.sh → python3 -m hack.demo), for real:
a private containerd 1.6 with CRI, runc, QEMU under TCG, the bridge CNI; then checked from
the outside (not with the demo's own leftover check): no process, mount, link or directory
of the demo remains — also when it is interrupted in the middle of a cold pod start."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "hack" / "containerd"))

from leaks import mount_points  # noqa: E402
from shim.shim_manager.handoff import server_path  # noqa: E402
from testing import containerd_missing, skip_or_fail, vm_missing  # noqa: E402
DEMO_TIMEOUT_S = 600


@pytest.fixture
def demo_dir():
    skip_or_fail(containerd_missing() or vm_missing())
    parent = Path(tempfile.mkdtemp(prefix="g-demo-", dir="/run"))  # short: socket paths
    yield parent / "d"
    for leftover in (parent / "d", parent / "d.lock"):
        assert not leftover.exists(), f"{leftover} is left"
    parent.rmdir()


def _demo(base: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hack.demo", "--dir", str(base)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _cmdlines() -> list[tuple[int, str]]:
    """(pid, argv joined) of every other process; a process title's padding dropped."""
    return [(p.pid, " ".join(a for a in p.info["cmdline"] if a))
            for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and p.pid != os.getpid()]


def _assert_nothing_left(base: Path) -> None:
    """Independently of the demo: its processes, mounts, bridge and directory."""
    fork_server = f"containerd-shim-graft-v2 fork-server {server_path()}"
    deadline = time.monotonic() + 10
    while True:
        procs = [f"{pid}: {argv}" for pid, argv in _cmdlines()
                 if f"{base}/" in argv or argv == fork_server]
        mounts = [m for m in mount_points() if m == str(base) or m.startswith(f"{base}/")]
        if not (procs or mounts) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert not procs, procs
    assert not mounts, mounts
    assert not base.exists()


def test_demo_runs_runc_cold_and_template_pods_then_leaves_nothing(demo_dir: Path) -> None:
    proc = _demo(demo_dir)
    out, _ = proc.communicate(timeout=DEMO_TIMEOUT_S)
    assert proc.returncode == 0, out
    # Each pod served its page over HTTP from its pod IP: runc's sees the host, graft's a VM.
    pages = dict(re.findall(r"^  (demo-\w+): hello from pod \1: (\d+ CPU, \d+ MiB RAM), kernel",
                            out, re.M))
    assert set(pages) == {"demo-runc", "demo-cold", "demo-template"}, out
    host_mib = psutil.virtual_memory().total // (1 << 20)
    runc_cpus, runc_mib = map(int, re.findall(r"\d+", pages["demo-runc"]))
    assert runc_cpus == os.cpu_count() and abs(runc_mib - host_mib) <= 1, pages
    for name in ("demo-cold", "demo-template"):
        cpus, mib = map(int, re.findall(r"\d+", pages[name]))
        assert cpus == 1 and mib < 256, pages  # the VM's (config: 1 vCPU, 256 MiB)
    # The table: boot path and why, from `graft status --json`.
    assert re.search(r"^demo-runc +runc +10\.222\.\S+ +\d+\.\d+ s +- +\d+\.\d MiB +no VM",
                     out, re.M), out
    assert re.search(r"^demo-cold +graft .* MiB +cold: templates disabled$", out, re.M), out
    assert re.search(rf"^demo-template +graft .* MiB +restored: template {demo_dir}/tpl/tpl-",
                     out, re.M), out
    assert "stopped the fork server at" in out
    assert re.search(r"^\[ *\d+\.\d+s\]     nothing left: ", out, re.M), out
    assert out.rstrip().splitlines()[-1].startswith("demo: OK in "), out
    _assert_nothing_left(demo_dir)


def test_demo_interrupted_during_a_cold_pod_start_cleans_up(demo_dir: Path) -> None:
    proc = _demo(demo_dir)
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "==> cold graft pod" in line:
                break
        deadline = time.monotonic() + 60
        while not any(argv.startswith("qemu-system") and f"{demo_dir}/" in argv
                      for _, argv in _cmdlines()):
            assert time.monotonic() < deadline, "no QEMU of the cold pod came up"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # as Ctrl-C: the VM is booting, CRI call in flight
        rest, _ = proc.communicate(timeout=DEMO_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out = "".join(lines) + rest
    assert proc.returncode == 130, out
    assert "nothing left: " in out, out
    assert out.rstrip().splitlines()[-1] == \
        "demo: FAILED: interrupted (everything it started was stopped)", out
    _assert_nothing_left(demo_dir)

"""The node installer (deploy/installer) against real, private containerds — the system's
1.6 and Debian sid's 2.1 — each started on the config `containerd config default` prints
for that release (hack/containerd/private_containerd.py `fresh`):

install → containerd restarted with the graft handler → a graft pod through CRI (restored
from the template `graft factory init` built) prints its output → install again changes
nothing at all → removal gives back the original config byte for byte and leaves nothing of
graft (files, shim link, template tmpfs, VMs, state dir).

graft is installed from wheels built from this checkout into a private prefix and runs on
Debian's /usr/bin/python3 (which has none of graft's dependencies: the install must bring
them). Never touches the machine's /etc/containerd or /usr/local/bin.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "hack" / "containerd"))
sys.path.insert(0, str(ROOT / "e2e"))

import compat  # noqa: E402
import private_containerd  # noqa: E402
from leaks import PodLeaks, mount_points, shim_pids, vmm_pids  # noqa: E402
from testing import (GUEST_DIR, Containerd, containerd_missing, skip_or_fail,  # noqa: E402
                     vm_missing)

from deploy.installer.containerd_config import RUNTIMES_PATH  # noqa: E402

pytestmark = [pytest.mark.containerd, pytest.mark.vm]

NODE_PYTHON = "/usr/bin/python3"
RELEASES = {"1.6": None, "2.1": "sid"}  # version → Debian suite of compat.py (None: system)


@dataclass
class Node:
    """A private containerd playing a node's, and where the installer puts graft."""
    containerd: Containerd
    prefix: Path
    state_dir: Path
    version: int  # of the config file

    @property
    def layout(self) -> private_containerd.Layout:
        return self.containerd.layout

    @property
    def graft_config(self) -> Path:
        return self.prefix / "etc" / "configuration.toml"

    @property
    def template_path(self) -> Path:
        return self.state_dir / "template"

    @property
    def backup(self) -> Path:
        return self.layout.config.with_name("config.toml.graft-orig")

    def installer_args(self, wheels: Path) -> list[str]:
        return ["--prefix", str(self.prefix), "--containerd-config", str(self.layout.config),
                "--restart-command",
                f"{sys.executable} {ROOT / 'hack/containerd/private_containerd.py'} restart "
                f"{self.layout.base}",
                "--shim-dir", str(self.layout.bin), "--wheels", str(wheels),
                "--guest-image", str(GUEST_DIR), "--python", NODE_PYTHON,
                "--set", f"runtime.state_dir={self.state_dir}",
                "--set", f"factory.template_path={self.template_path}"]

    def containerd_pid(self) -> int:
        return int(self.layout.pid.read_text())


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """graft's wheel from this checkout (generated protos included) and its dependencies'."""
    src = tmp_path_factory.mktemp("graft-src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("shim", "graft_agent"):
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheels")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet",
                           "--disable-pip-version-check", "--no-build-isolation", "-w", str(out),
                           str(src)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(params=list(RELEASES))
def node(request):
    skip_or_fail(containerd_missing())
    skip_or_fail(vm_missing())
    if not Path(NODE_PYTHON).is_file():
        pytest.skip(f"{NODE_PYTHON} missing")
    suite = RELEASES[request.param]
    bin_dir = None
    if suite is not None:
        try:
            bin_dir = compat.fetch(suite)
        except compat.FetchError as exc:  # no network and nothing cached: not graft's failure
            pytest.skip(f"containerd from Debian {suite} unavailable: {exc}")
    base = Path(tempfile.mkdtemp(prefix="gdep-", dir="/tmp"))  # short: socket paths
    layout = private_containerd.Layout(base)
    # Short: the sandbox's sockets under it must stay within 107 bytes.
    state_dir = Path(f"/run/gd-{os.getpid()}-{request.param.replace('.', '')}")
    try:
        private_containerd.start(layout, containerd_bin=bin_dir, fresh=True)
        version = tomllib.loads(layout.config.read_text())["version"]
        yield Node(Containerd(layout), base / "graft", state_dir, version)
    finally:
        _teardown(layout, state_dir)


def _teardown(layout: private_containerd.Layout, state_dir: Path) -> None:
    """After a failed test: stop everything, unmount the template, drop the state dir."""
    private_containerd.purge(layout)
    private_containerd.unmount_under(state_dir)
    shutil.rmtree(state_dir, ignore_errors=True)


def _installer(node: Node, wheels: Path, action: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("GRAFT_GUEST_DIR", "GRAFT_CONFIG")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-m", "deploy.installer", action,
                           *node.installer_args(wheels)], capture_output=True, text=True,
                          timeout=900, env=env)
    assert done.returncode == 0, f"installer {action}: {done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def _snapshot(node: Node) -> dict[str, object]:
    """Everything the installer may touch: paths, sizes, modes, mtimes, link targets."""
    entries: dict[str, object] = {"containerd pid": node.containerd_pid()}
    for top in (node.prefix, node.layout.bin, node.state_dir):
        for path in [top, *top.rglob("*")]:
            st = path.lstat()
            entries[str(path)] = (st.st_size, st.st_mode, st.st_mtime_ns,
                                  os.readlink(path) if path.is_symlink() else None)
    for path in (node.layout.config, node.backup):
        entries[str(path)] = path.read_bytes()
    return entries


def _leftovers(node: Node) -> list[str]:
    found = [str(p) for p in (node.prefix, node.backup, node.state_dir) if p.exists()]
    found += [f"{p} in the shim dir" for p in node.layout.bin.iterdir()]
    found += [f"mount {p}" for p in mount_points() if p.startswith(str(node.state_dir))]
    found += [f"shim pid {pid}" for pid in shim_pids(node.containerd.address)]
    found += [f"VM pid {pid}" for pid in vmm_pids(node.state_dir)]  # pods' and the template's
    return found


def _run_pod(node: Node) -> None:
    pytest.importorskip("cri_api.v1.api_pb2",
                        reason="pip install --no-deps container-runtime-interface-api==2.0.1")
    from cri_client import Client

    client = Client(node.containerd.address, node.layout.base / "cri-client")
    try:
        pod = client.run_pod("deploy-pod", "graft")
        try:
            cid = client.create_start(pod, "app", ["sh", "-c", "echo deployed-$((6*7))"])
            assert " stdout F deployed-42\n" in client.logs(cid, "deployed-42", timeout=60)
            status = subprocess.run([str(node.prefix / "bin" / "graft"), "status", "--json"],
                                    capture_output=True, text=True, timeout=60, check=True)
            boxes = {b["id"]: b for b in json.loads(status.stdout)["sandboxes"]}
            assert boxes[pod]["boot_path"] == "restored", boxes[pod]
            leftovers = PodLeaks(node.containerd, pod, "k8s.io", [pod, cid],
                                 state_dir=node.state_dir)
        finally:
            client.stop_remove(pod)
        leftovers.assert_no_leaks()
    finally:
        client.close()


def _handler(node: Node) -> dict:
    table = tomllib.loads(node.layout.config.read_text())
    for key in RUNTIMES_PATH[node.version]:
        table = table[key]
    return table["graft"]


def test_install_run_reinstall_remove(node: Node, wheels: Path):
    original = node.layout.config.read_bytes()
    pid_before = node.containerd_pid()

    _installer(node, wheels, "install")
    handler = _handler(node)
    assert handler["runtime_type"] == "io.containerd.graft.v2"
    assert handler["options"] == {"ConfigPath": str(node.graft_config)}
    assert handler["pod_annotations"] == ["io.graft.*"]
    assert handler.get("sandboxer") == ("podsandbox" if node.version == 3 else None)
    assert node.backup.read_bytes() == original
    assert node.containerd_pid() != pid_before, "containerd was not restarted"
    shim = node.layout.bin / "containerd-shim-graft-v2"
    assert os.readlink(shim) == str(node.prefix / "bin" / "containerd-shim-graft-v2")
    config = tomllib.loads(node.graft_config.read_text())
    assert config["factory"]["enable_template"] is True
    assert config["guest"]["image_dir"] == str(node.prefix / "share" / "guest")

    _run_pod(node)

    before = _snapshot(node)
    _installer(node, wheels, "install")
    after = _snapshot(node)
    assert after == before, {k: (before.get(k), after.get(k)) for k in before.keys() | after
                             if before.get(k) != after.get(k)}

    pid_installed = node.containerd_pid()
    _installer(node, wheels, "remove")
    assert node.layout.config.read_bytes() == original
    assert node.containerd_pid() != pid_installed, "containerd was not restarted"
    node.containerd.ctr("version")
    assert _leftovers(node) == []

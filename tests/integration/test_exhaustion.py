"""Resource exhaustion through a real private containerd 1.6 and its CRI: the pod is refused
with an error that names what is missing, and nothing of it is left (NodeLeaks).

  * host memory too small for another VM (a config whose guest RAM exceeds the host's);
  * the QEMU binary missing, or not executable;
  * the guest image missing;
  * the state dir not writable (a read-only mount);
  * no PCI slot left for the pod's NIC ([hypervisor] hotplug_root_ports = 0, cold boot).
    Taps are not a shared pool: each pod's tap lives in its own netns (one name per netns);
  * the template tmpfs full: pods still restore from the template (a clone never writes
    there), and `graft factory init` on a tmpfs without room says so and leaves nothing.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "hack" / "containerd")]

import private_containerd  # noqa: E402
from graft_node import GraftNode, template_node  # noqa: E402
from leaks import mount_points, vmm_pids  # noqa: E402
from testing import containerd, skip_or_fail, vm_missing  # noqa: E402,F401

pytestmark = [pytest.mark.containerd, pytest.mark.vm]

grpc = pytest.importorskip("grpc")
pytest.importorskip("cri_api.v1.api_pb2",
                    reason="pip install --no-deps container-runtime-interface-api==2.0.1")


@pytest.fixture(scope="module")
def node(containerd):
    skip_or_fail(vm_missing())
    with template_node(containerd) as node:
        yield node


def _refused(node: GraftNode, name: str, *expected: str, state_dir: Path | None = None) -> str:
    leaks = node.leak_check(state_dir)
    with pytest.raises(grpc.RpcError) as refused:
        node.cri.run_pod(name, "graft")
    details = refused.value.details()
    for text in expected:
        assert text in details, details
    node.remove_all_pods()
    leaks.assert_no_leaks()
    return details


def _mem_total_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no MemTotal")


def test_host_memory_too_small_for_another_vm(node):
    huge = 2 * _mem_total_mib()
    node.configure(template=True, memory_mib=huge, max_memory_mib=huge)
    _refused(node, "ex-memory", "host memory too small for another VM",
             f"guest RAM {huge} MiB", "MiB available (MemAvailable)")


def test_qemu_binary_missing(node, tmp_path):
    node.configure(template=True, binary=str(tmp_path / "no-qemu"))
    _refused(node, "ex-no-qemu", f"[hypervisor] binary {tmp_path / 'no-qemu'} does not exist")


def test_qemu_binary_not_executable(node, tmp_path):
    binary = tmp_path / "qemu-system-x86_64"
    binary.write_bytes(Path("/usr/bin/qemu-system-x86_64").read_bytes()[:4096])
    binary.chmod(0o644)
    node.configure(template=True, binary=str(binary))
    _refused(node, "ex-qemu-mode", f"[hypervisor] binary {binary} is not an executable file")


def test_guest_image_missing(node, tmp_path):
    empty = tmp_path / "guest"
    empty.mkdir()
    node.configure(template=False, guest_dir=empty)
    # $GRAFT_GUEST_DIR beats the config: containerd (so the shim) inherits ours.
    overridden = "GRAFT_GUEST_DIR" in os.environ
    if overridden:
        _restart_with_env(node, GRAFT_GUEST_DIR=str(empty))
    try:
        _refused(node, "ex-guest", f"guest image file {empty}/vmlinux is missing",
                 "run `graft guest build`")
    finally:
        if overridden:
            _restart_with_env(node)


def test_state_dir_not_writable(node):
    read_only = Path(tempfile.mkdtemp(prefix="g-ro-", dir="/run"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "graft-ro", str(read_only)],
                   check=True)
    try:
        node.configure(template=True, state_dir=read_only)
        _refused(node, "ex-ro", f"[runtime] state_dir {read_only} is not writable",
                 "Read-only file system", state_dir=read_only)
    finally:
        subprocess.run(["umount", str(read_only)], check=True)
        read_only.rmdir()


def test_no_pci_slot_left_for_the_nic(node):
    node.configure(template=False, hotplug_root_ports=0)
    _refused(node, "ex-pci", "no free PCIe root port",
             "[hypervisor] hotplug_root_ports (0) are in use")


def test_pods_still_restore_when_the_template_tmpfs_is_full(node):
    node.configure(template=True)
    filler = node.template_path / "filler"
    st = os.statvfs(node.template_path)
    subprocess.run(["fallocate", "-l", str(st.f_bavail * st.f_frsize), str(filler)], check=True)
    try:
        assert os.statvfs(node.template_path).f_bavail == 0
        leaks = node.leak_check()
        pod = node.cri.run_pod("ex-tmpfs-full", "graft")
        try:
            assert node.boot_path(pod)["restored"] is True, node.boot_path(pod)
            cid = node.cri.create_start(pod, "app", ["sleep", "1000"])
            assert node.cri.exec_sync(cid, ["true"], 60).exit_code == 0
        finally:
            node.cri.stop_remove(pod)
        leaks.assert_no_leaks()
    finally:
        filler.unlink()


def test_factory_init_on_a_full_tmpfs_says_so_and_leaves_nothing(node):
    """A tmpfs is grown as a template needs; its inodes are not: fill those."""
    from shim.factory.build import TemplateTmpfsFull, init_template

    path = Path(tempfile.mkdtemp(prefix="g-full-", dir="/run"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=16,mode=0700",
                    "graft-full", str(path)], check=True)
    try:
        for i in range(64):
            try:
                (path / f"f{i}").touch()
            except OSError:
                break
        config = node.configure(template=True, template_path=path)
        with pytest.raises(TemplateTmpfsFull) as full:
            asyncio.run(init_template(config))
        assert f"template tmpfs {path} is full" in str(full.value)
        assert "inodes free" in str(full.value)
        assert not [p for p in path.iterdir() if p.name.startswith("tpl-")]
        assert not vmm_pids(node.state_dir / "factory")
        factory = node.state_dir / "factory"
        assert not factory.exists() or not list(factory.iterdir())
    finally:
        for point in sorted((p for p in mount_points() if p == str(path)), reverse=True):
            subprocess.run(["umount", point], check=True)
        path.rmdir()


def _restart_with_env(node: GraftNode, **env: str) -> None:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        node.reconnect()
        private_containerd.terminate(node.containerd.layout)
        private_containerd.launch(node.containerd.layout)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

"""shim/sandbox/preflight.py: what the host lacks for one more pod VM, named."""
from __future__ import annotations

from pathlib import Path

import pytest

from shim.config import parse_config
from shim.sandbox import preflight
from shim.ttrpc import Code
from shim.vmconfig.hypervisor_config import GuestImageMissing
from shim.vmconfig.pod_resources import PodResources


def _meminfo(tmp_path: Path, available_kib: int) -> Path:
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal: 99999999 kB\nMemFree: 1 kB\nMemAvailable: {available_kib} kB\n")
    return path


def _world(tmp_path: Path, **hypervisor) -> tuple:
    guest = tmp_path / "guest"
    guest.mkdir(exist_ok=True)
    for name in ("vmlinux", "initrd.img"):
        (guest / name).write_bytes(b"x")
    vmm = tmp_path / "vmm"
    vmm.write_bytes(b"#!/bin/true\n")
    vmm.chmod(0o755)
    config = parse_config({"runtime": {"state_dir": str(tmp_path / "state")},
                           "guest": {"image_dir": str(guest)},
                           "hypervisor": {"binary": str(vmm), **hypervisor}})
    return config, guest, vmm


def test_a_ready_host_passes(tmp_path, monkeypatch):
    monkeypatch.delenv("GRAFT_GUEST_DIR", raising=False)
    config, _, _ = _world(tmp_path)
    preflight.check_host(config)
    assert (tmp_path / "state").is_dir() and list((tmp_path / "state").iterdir()) == []


def test_memory_refusal_names_the_numbers(tmp_path):
    with pytest.raises(preflight.HostExhausted) as refused:
        preflight.check_memory(4096, meminfo=_meminfo(tmp_path, 1024 * 1024))
    message = str(refused.value)
    assert refused.value.code is Code.RESOURCE_EXHAUSTED
    assert f"needs {4096 + preflight.VMM_OVERHEAD_MIB} MiB" in message
    assert "guest RAM 4096 MiB" in message and "1024 MiB available (MemAvailable)" in message
    preflight.check_memory(512, meminfo=_meminfo(tmp_path, 1024 * 1024))


def test_vm_memory_covers_the_pods_limit_up_to_the_hot_add_cap(tmp_path):
    config, _, _ = _world(tmp_path, memory_mib=256, max_memory_mib=1024)
    assert preflight.vm_memory_mib(config, None) == 256
    assert preflight.vm_memory_mib(config, PodResources(memory_mib=100)) == 256
    assert preflight.vm_memory_mib(config, PodResources(memory_mib=700)) == 700
    assert preflight.vm_memory_mib(config, PodResources(memory_mib=4000)) == 1024


def test_vmm_binary_missing_or_not_executable(tmp_path):
    config, _, vmm = _world(tmp_path)
    vmm.chmod(0o644)
    with pytest.raises(preflight.VmmBinaryMissing, match=r"\[hypervisor\] binary .* not an executable"):
        preflight.check_vmm_binary(config)
    vmm.unlink()
    with pytest.raises(preflight.VmmBinaryMissing, match=r"\[hypervisor\] binary .* does not exist"):
        preflight.check_vmm_binary(config)


def test_vmm_not_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    config = parse_config({"hypervisor": {"binary": ""}})
    with pytest.raises(preflight.VmmBinaryMissing, match="qemu-system-x86_64 is not on PATH"):
        preflight.check_vmm_binary(config)


def test_guest_image_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("GRAFT_GUEST_DIR", raising=False)
    config, guest, _ = _world(tmp_path)
    (guest / "initrd.img").unlink()
    with pytest.raises(GuestImageMissing, match="initrd.img is missing: run `graft guest build`"):
        preflight.check_host(config)


def test_state_dir_with_a_file_in_the_way(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(preflight.StateDirUnusable, match=r"\[runtime\] state_dir .* not writable"):
        preflight.check_state_dir(blocker / "state")
    # A read-only mount (root ignores mode bits): tests/integration/test_exhaustion.py

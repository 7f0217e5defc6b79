"""Accelerator detection: AUTO → KVM only with a vendor KVM module and a
usable /dev/kvm (a kvm_pvm-only host like this one gets TCG)."""
from __future__ import annotations

from pathlib import Path

import pytest

from shim.hypervisor import Accelerator
from shim.hypervisor.accel import AcceleratorProbe, probe_accelerator, resolve_accelerator


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    d = tmp_path / "module"
    d.mkdir()
    return d


def test_no_vendor_module_means_tcg(sysfs: Path, tmp_path: Path) -> None:
    (sysfs / "kvm_pvm").mkdir()  # /dev/kvm through kvm_pvm does not count
    dev = tmp_path / "kvm"
    dev.write_bytes(b"")
    probe = probe_accelerator(sysfs, dev)
    assert probe.accelerator is Accelerator.TCG
    assert "kvm_intel" in probe.reason


@pytest.mark.parametrize("module", ["kvm_intel", "kvm_amd"])
def test_vendor_module_and_openable_device_means_kvm(sysfs: Path, tmp_path: Path, module: str) -> None:
    (sysfs / module).mkdir()
    dev = tmp_path / "kvm"
    dev.write_bytes(b"")
    assert probe_accelerator(sysfs, dev).accelerator is Accelerator.KVM


def test_vendor_module_without_device_means_tcg(sysfs: Path, tmp_path: Path) -> None:
    (sysfs / "kvm_intel").mkdir()
    probe = probe_accelerator(sysfs, tmp_path / "missing")
    assert probe.accelerator is Accelerator.TCG
    assert "unusable" in probe.reason


def test_forced_choice_wins_over_probe() -> None:
    kvm = AcceleratorProbe(Accelerator.KVM, "test")
    tcg = AcceleratorProbe(Accelerator.TCG, "test")
    assert resolve_accelerator(Accelerator.TCG, kvm) is Accelerator.TCG
    assert resolve_accelerator(Accelerator.KVM, tcg) is Accelerator.KVM
    assert resolve_accelerator(Accelerator.AUTO, kvm) is Accelerator.KVM
    assert resolve_accelerator(Accelerator.AUTO, tcg) is Accelerator.TCG


def test_this_host_probe_returns_a_concrete_choice() -> None:
    probe = probe_accelerator()
    assert probe.accelerator in (Accelerator.KVM, Accelerator.TCG)
    if not any(Path("/sys/module", m).exists() for m in ("kvm_intel", "kvm_amd")):
        assert probe.accelerator is Accelerator.TCG

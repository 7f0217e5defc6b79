"""Which accelerator a VM can use on this host.

Hardware KVM is only trusted when a real vendor module (kvm_intel/kvm_amd) is
loaded: some hosts expose /dev/kvm through other modules (e.g. kvm_pvm) under
which a stock guest kernel hangs, so /dev/kvm alone proves nothing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .base import Accelerator

KVM_VENDOR_MODULES = ("kvm_intel", "kvm_amd")


@dataclass(frozen=True)
class AcceleratorProbe:
    accelerator: Accelerator  # KVM or TCG, never AUTO
    reason: str  # human readable, for `graft check` and logs


def probe_accelerator(sys_module: Path = Path("/sys/module"),
                      dev_kvm: Path = Path("/dev/kvm")) -> AcceleratorProbe:
    """Detect what AUTO means on this host."""
    modules = [m for m in KVM_VENDOR_MODULES if (sys_module / m).exists()]
    if not modules:
        return AcceleratorProbe(
            Accelerator.TCG,
            f"no {' or '.join(KVM_VENDOR_MODULES)} module loaded: using TCG")
    try:
        fd = os.open(dev_kvm, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return AcceleratorProbe(
            Accelerator.TCG, f"{modules[0]} loaded but {dev_kvm} unusable ({exc.strerror}): using TCG")
    os.close(fd)
    return AcceleratorProbe(Accelerator.KVM, f"{modules[0]} loaded and {dev_kvm} opens: using KVM")


def resolve_accelerator(requested: Accelerator, probe: AcceleratorProbe | None = None) -> Accelerator:
    """A forced choice wins; AUTO becomes what the host supports."""
    if requested is not Accelerator.AUTO:
        return requested
    return (probe or probe_accelerator()).accelerator

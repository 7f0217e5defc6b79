"""VM primitives: the Hypervisor interface and its QEMU and Cloud Hypervisor
drivers. Template policy lives in shim.factory, not here."""
from .accel import AcceleratorProbe, probe_accelerator, resolve_accelerator
from .base import (Accelerator, FileBackedMemoryConfig, Hypervisor, HypervisorConfig,
                   HypervisorError, NetworkDevice, VmExited, VmPaths)
from .kernel_params import FAST_BOOT_KERNEL_PARAMS

__all__ = [
    "Accelerator", "AcceleratorProbe", "FAST_BOOT_KERNEL_PARAMS", "FileBackedMemoryConfig",
    "Hypervisor", "HypervisorConfig", "HypervisorError", "NetworkDevice", "VmExited", "VmPaths",
    "probe_accelerator", "resolve_accelerator",
]

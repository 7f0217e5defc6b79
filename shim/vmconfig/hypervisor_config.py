"""GraftConfig → HypervisorConfig (the one place that knows both)."""
from __future__ import annotations

from pathlib import Path

from shim.config import GraftConfig
from shim.errors import FailedPrecondition
from shim.hypervisor.kernel_params import FAST_BOOT_KERNEL_PARAMS, SMALL_SWIOTLB_PARAM
from shim.hypervisor.base import Accelerator, FileBackedMemoryConfig, HypervisorConfig


class GuestImageMissing(FailedPrecondition):
    """The kernel or initrd is not there: `graft guest build` has not run."""


def guest_image_paths(config: GraftConfig) -> tuple[Path, Path]:
    image = config.guest_image_dir
    kernel, initrd = image / "vmlinux", image / "initrd.img"
    for path in (kernel, initrd):
        if not path.is_file():
            raise GuestImageMissing(
                f"guest image file {path} is missing: run `graft guest build` "
                f"(or set [guest] image_dir / GRAFT_GUEST_DIR)")
    return kernel, initrd


def hypervisor_config(config: GraftConfig,
                      file_backed_memory: FileBackedMemoryConfig | None = None,
                      boot_nic_mac: str = "") -> HypervisorConfig:
    kernel, initrd = guest_image_paths(config)
    hv = lambda name: config.get("hypervisor", name)  # noqa: E731
    # Memory hot-add needs both a slot and room above memory_mib; without
    # either the VM gets no slots at all (same machine as before hot-add).
    # Only the QEMU driver hot-adds memory.
    hot_add = (hv("kind") == "qemu" and hv("memory_slots") > 0
               and hv("max_memory_mib") > hv("memory_mib"))
    # User params come last so they can override ours (the kernel keeps the last).
    params = (list(FAST_BOOT_KERNEL_PARAMS) + ([SMALL_SWIOTLB_PARAM] if hot_add else [])
              + str(hv("kernel_params")).split())
    return HypervisorConfig(
        kernel=kernel,
        initrd=initrd,
        kernel_params=tuple(params),
        vcpus=hv("vcpus"),
        max_vcpus=hv("max_vcpus"),
        memory_mib=hv("memory_mib"),
        memory_slots=hv("memory_slots") if hot_add else 0,
        max_memory_mib=hv("max_memory_mib") if hot_add else 0,
        accelerator=Accelerator(hv("accelerator")),
        binary=Path(hv("binary")) if hv("binary") else None,
        file_backed_memory=file_backed_memory,
        vmgenid=hv("vmgenid"),
        hotplug_root_ports=hv("hotplug_root_ports"),
        boot_nic_mac=boot_nic_mac,
    )

"""What the host must offer before a pod VM is made, checked before anything is created.

Each check names what is missing: a state dir that cannot be written, a VMM binary that is
absent or not executable, a guest image that was never built, or too little memory for the
VM's RAM. A pod refused here leaves nothing behind (no run dir, no process, no tap). Memory is
judged like a kubelet eviction threshold would: MemAvailable against the guest RAM the VM may
end up with (boot RAM, or what the pod asks for up to the hot-add limit) plus the VMM's own
overhead — a clone starts out sharing its template's pages, but its guest may touch them all.
Pods checked at the same moment may each still fit alone: this is a guard, not a reservation.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from shim.config import GraftConfig
from shim.errors import FailedPrecondition, GraftError
from shim.ttrpc import Code
from shim.vmconfig.hypervisor_config import guest_image_paths
from shim.vmconfig.pod_resources import PodResources

# QEMU's own RSS beside guest RAM under TCG (translation cache, device state), rounded up.
VMM_OVERHEAD_MIB = 96


class HostExhausted(GraftError):
    """The host lacks a resource the VM needs (ResourceExhausted at the RPC edge)."""

    code = Code.RESOURCE_EXHAUSTED


class StateDirUnusable(FailedPrecondition):
    pass


class VmmBinaryMissing(FailedPrecondition):
    pass


def check_host(config: GraftConfig, resources: PodResources | None = None) -> None:
    """Raise the first thing the host lacks for one more pod VM."""
    check_state_dir(config.state_dir)
    check_vmm_binary(config)
    guest_image_paths(config)  # GuestImageMissing names the file and how to build it
    check_memory(vm_memory_mib(config, resources))


def check_state_dir(state_dir: Path) -> None:
    """Create it if needed and prove a file can be written there (as root, mode bits do not
    tell: a read-only mount, a full tmpfs or a file in the way do)."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.TemporaryFile(dir=state_dir):
            pass
    except OSError as exc:
        raise StateDirUnusable(f"[runtime] state_dir {state_dir} is not writable: "
                               f"{exc.strerror or exc}") from exc


def check_vmm_binary(config: GraftConfig) -> Path:
    configured = str(config.get("hypervisor", "binary"))
    kind = str(config.get("hypervisor", "kind"))
    if configured:
        path = Path(configured)
        if not path.exists():
            raise VmmBinaryMissing(f"[hypervisor] binary {path} does not exist")
        if not path.is_file() or not os.access(path, os.X_OK):
            raise VmmBinaryMissing(f"[hypervisor] binary {path} is not an executable file")
        return path
    from shim.factory.template import DEFAULT_BINARIES

    name = DEFAULT_BINARIES.get(kind, kind)
    found = shutil.which(name)
    if found is None:
        raise VmmBinaryMissing(f"{name} is not on PATH ({os.environ.get('PATH', '')}): install "
                               f"it or set [hypervisor] binary")
    return Path(found)


def vm_memory_mib(config: GraftConfig, resources: PodResources | None) -> int:
    """The most guest RAM this pod's VM gets: boot RAM, grown to the pod's memory limit up to
    [hypervisor] max_memory_mib."""
    base = int(config.get("hypervisor", "memory_mib"))
    asked = resources.memory_mib if resources is not None else None
    if asked is None or asked <= base:
        return base
    return min(asked, max(base, int(config.get("hypervisor", "max_memory_mib"))))


def available_mib(meminfo: Path = Path("/proc/meminfo")) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    raise OSError(f"no MemAvailable in {meminfo}")


def check_memory(guest_mib: int, what: str = "another VM",
                 meminfo: Path = Path("/proc/meminfo")) -> None:
    needed = guest_mib + VMM_OVERHEAD_MIB
    available = available_mib(meminfo)
    if needed > available:
        raise HostExhausted(
            f"host memory too small for {what}: it needs {needed} MiB (guest RAM "
            f"{guest_mib} MiB + {VMM_OVERHEAD_MIB} MiB VMM overhead), the host has "
            f"{available} MiB available (MemAvailable)")

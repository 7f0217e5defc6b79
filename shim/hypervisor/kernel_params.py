"""Guest kernel command line pieces the host always controls."""
from __future__ import annotations

from collections.abc import Iterable

# Measured to shorten a cold boot under TCG (see notes/templating.md). The
# config layer uses this as the default HypervisorConfig.kernel_params.
FAST_BOOT_KERNEL_PARAMS: tuple[str, ...] = (
    "console=ttyS0",
    # A guest panic reboots at once; QEMU runs with -no-reboot, so the VMM
    # exits and the owner notices instead of a hung VM.
    "panic=-1",
    "cryptomgr.notests",
    "tsc=reliable",
    "no_timer_check",
    "rcupdate.rcu_expedited=1",
    "i8042.noaux=1",
    "i8042.nokbd=1",
    "i8042.nopnp=1",
    "mitigations=off",
    "audit=0",
    "quiet",
)

# Memory hot-add puts possible RAM above 4 GiB, so the guest kernel sets up
# a 64 MiB swiotlb bounce pool at boot (measured: MemTotal 205 → 140 MiB of a
# 256 MiB VM). graft's devices are virtio without ACCESS_PLATFORM and never
# bounce; keep a 1 MiB pool (512 slabs of 2 KiB) in case something does.
SMALL_SWIOTLB_PARAM = "swiotlb=512"

AGENT_PORT_PARAM = "graft.agent_port"


def guest_cmdline(params: Iterable[str], agent_port_name: str) -> str:
    """The full kernel command line: config params, a serial console if the
    config names none, and the agent's port name (the agent looks it up)."""
    parts = [p for p in params if not p.startswith(AGENT_PORT_PARAM + "=")]
    if not any(p.startswith("console=") for p in parts):
        parts.insert(0, "console=ttyS0")
    for part in parts:
        if not part or any(c.isspace() for c in part):
            raise ValueError(f"kernel parameter {part!r} is empty or contains whitespace")
    parts.append(f"{AGENT_PORT_PARAM}={agent_port_name}")
    return " ".join(parts)

"""QEMU command line for a graft VM (pure: no I/O, unit-tested).

A template and its clones must get the same machine and devices in the same
order (QEMU migrates device state by position and id); only backend paths
(sockets, console file, 9p directory) and memory sharing may differ.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .base import Accelerator, HypervisorConfig, VmPaths
from .kernel_params import guest_cmdline

QBOOT_ROM = Path("/usr/share/qemu/qboot.rom")
DEFAULT_QEMU_BINARY = "qemu-system-x86_64"

# ids of the devices other code refers to
ROOT_PORT_PREFIX = "rp"
MEMORY_BACKEND_ID = "mem"
AGENT_CHARDEV_ID = "agent"
QMP_CHARDEV_ID = "qmp"
BOOT_NETDEV_ID = "netdev-boot"
BOOT_NIC_ID = "nic-boot"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
MAX_MOUNT_TAG_LEN = 31  # older guest 9p drivers reject longer tags
MAX_MEMORY_SLOTS = 256  # QEMU's ACPI limit on x86 (ACPI_MAX_RAM_SLOTS)


def root_port_ids(count: int) -> list[str]:
    return [f"{ROOT_PORT_PREFIX}{i}" for i in range(count)]


def opt(value: object) -> str:
    """Escape a value for a QEMU -device/-object option list (',' → ',,')."""
    return str(value).replace(",", ",,")


@dataclass(frozen=True)
class LaunchSpec:
    """What differs between launches of the same config."""

    accelerator: Accelerator  # KVM or TCG (already resolved)
    control_fd: int  # listening unix socket for QMP
    agent_fd: int  # listening unix socket for the agent's virtio-serial port
    incoming: bool = False  # restore: wait for migrate-incoming, stay paused
    console_fd: int | None = None  # connected socket the host reads (else: console_log file)
    qboot: Path | None = QBOOT_ROM  # None or missing file = QEMU's SeaBIOS
    nic_fd: int | None = None  # tap fd of the boot NIC (config.boot_nic_mac)


def validate_config(config: HypervisorConfig) -> None:
    """Reject configs QEMU would misparse or refuse, with a clear message."""
    if not 1 <= config.vcpus <= config.max_vcpus:
        raise ValueError(f"vcpus={config.vcpus} must be between 1 and max_vcpus={config.max_vcpus}")
    if config.memory_mib < 64:
        raise ValueError(f"memory_mib={config.memory_mib} is too small (minimum 64)")
    if not 0 <= config.memory_slots <= MAX_MEMORY_SLOTS:
        raise ValueError(f"memory_slots={config.memory_slots} must be within 0..{MAX_MEMORY_SLOTS}")
    if config.memory_slots and config.max_memory_mib <= config.memory_mib:
        # QEMU refuses slots without room to plug anything into them
        raise ValueError(f"max_memory_mib={config.max_memory_mib} must be larger than "
                         f"memory_mib={config.memory_mib} when memory_slots > 0")
    if not 0 <= config.hotplug_root_ports <= 30:
        raise ValueError(f"hotplug_root_ports={config.hotplug_root_ports} must be within 0..30")
    if not _NAME_RE.match(config.agent_port_name):
        raise ValueError(f"agent_port_name {config.agent_port_name!r}: use letters, digits, '_', '.', '-'")
    if config.boot_nic_mac and not _MAC_RE.match(config.boot_nic_mac):
        raise ValueError(f"boot_nic_mac {config.boot_nic_mac!r} is not a MAC address")
    if not _NAME_RE.match(config.share_mount_tag) or len(config.share_mount_tag) > MAX_MOUNT_TAG_LEN:
        raise ValueError(f"share_mount_tag {config.share_mount_tag!r}: up to {MAX_MOUNT_TAG_LEN} "
                         "letters, digits, '_', '.', '-'")


def build_argv(config: HypervisorConfig, paths: VmPaths, spec: LaunchSpec,
               vm_name: str = "graft") -> list[str]:
    validate_config(config)
    if spec.accelerator is Accelerator.AUTO:
        raise ValueError("LaunchSpec.accelerator must be resolved (KVM or TCG)")
    accel = spec.accelerator.value
    mem = f"{config.memory_mib}M"
    argv = [
        str(config.binary or DEFAULT_QEMU_BINARY),
        "-name", opt(vm_name),
        "-M", f"q35,accel={accel},memory-backend={MEMORY_BACKEND_ID},"
              "vmport=off,sata=off,smbus=off",
        "-nodefaults", "-no-user-config", "-display", "none",
        # A guest reboot/panic ends QEMU, so the owner notices (see
        # kernel_params: panic=-1).
        "-no-reboot",
    ]
    if spec.accelerator is Accelerator.KVM:
        argv += ["-cpu", "host"]
    # vmgenid hangs under qboot before the kernel prints: keep SeaBIOS then.
    if not config.vmgenid and spec.qboot is not None and spec.qboot.exists():
        argv += ["-bios", str(spec.qboot)]
    argv += [
        "-smp", f"{config.vcpus},maxcpus={config.max_vcpus}",
        "-m", memory_option(config),
        "-object", _memory_backend(config, mem),
        "-kernel", str(config.kernel),
        "-initrd", str(config.initrd),
        "-append", guest_cmdline(config.kernel_params, config.agent_port_name),
        # console: serial → a socket the host reads into a bounded log (a file as fallback)
        "-chardev", _console_chardev(paths, spec),
        "-serial", "chardev:console",
        # QMP on a socket the host bound (no connect polling)
        "-chardev", f"socket,id={QMP_CHARDEV_ID},fd={spec.control_fd},server=on,wait=off",
        "-mon", f"chardev={QMP_CHARDEV_ID},mode=control",
        # agent channel: a named virtio-serial port
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"socket,id={AGENT_CHARDEV_ID},fd={spec.agent_fd},server=on,wait=off",
        "-device", f"virtserialport,bus=vser0.0,chardev={AGENT_CHARDEV_ID},"
                   f"name={config.agent_port_name}",
        # shared directory (container rootfs trees) over 9p
        "-fsdev", f"local,id=fs0,path={opt(paths.shared_dir)},security_model=none,multidevs=remap",
        "-device", f"virtio-9p-pci,fsdev=fs0,mount_tag={config.share_mount_tag}",
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-pci,rng=rng0",
    ]
    if config.boot_nic_mac:
        if spec.nic_fd is None:
            raise ValueError("boot_nic_mac is set but no tap fd backs the boot NIC")
        argv += ["-netdev", f"tap,id={BOOT_NETDEV_ID},fd={spec.nic_fd},vhost=off",
                 "-device", f"virtio-net-pci,netdev={BOOT_NETDEV_ID},id={BOOT_NIC_ID},"
                            f"mac={config.boot_nic_mac},romfile="]
    for i, port in enumerate(root_port_ids(config.hotplug_root_ports)):
        argv += ["-device", f"pcie-root-port,id={port},bus=pcie.0,chassis={i + 1}"]
    if config.vmgenid:
        argv += ["-device", "vmgenid,guid=auto"]
    if spec.incoming:
        # -S: the restored VM stays paused whatever runstate was saved.
        argv += ["-S", "-incoming", "defer"]
    argv += list(config.extra_args)
    return argv


def _console_chardev(paths: VmPaths, spec: LaunchSpec) -> str:
    if spec.console_fd is not None:
        return f"socket,id=console,fd={spec.console_fd}"
    return f"file,id=console,path={opt(paths.console_log)}"


def memory_option(config: HypervisorConfig) -> str:
    """-m: boot RAM, plus DIMM slots and maxmem when memory can be hot-added
    (the boot RAM itself stays the machine's memory-backend)."""
    mem = f"{config.memory_mib}M"
    if config.memory_slots:
        mem += f",slots={config.memory_slots},maxmem={config.max_memory_mib}M"
    return mem


def _memory_backend(config: HypervisorConfig, size: str) -> str:
    fbm = config.file_backed_memory
    if fbm is None:
        return f"memory-backend-ram,id={MEMORY_BACKEND_ID},size={size}"
    share = "on" if fbm.shared else "off"
    backend = (f"memory-backend-file,id={MEMORY_BACKEND_ID},size={size},"
               f"mem-path={opt(fbm.path)},share={share}")
    if fbm.readonly:
        if fbm.shared:
            raise ValueError("a shared memory file cannot be opened read-only")
        backend += ",readonly=on,rom=off"  # open O_RDONLY, map MAP_PRIVATE writable
    return backend

"""The hypervisor abstraction: generic VM primitives, no template policy.

A hypervisor knows how to create, cold-boot, stop, pause and resume a VM and
how to save/restore its device state to/from a directory. *Where* to save,
shared vs private memory and post-restore housekeeping are decided by the
factory (shim/factory), never here.
"""
from __future__ import annotations

import abc
import asyncio
import enum
from dataclasses import dataclass, field
from pathlib import Path

from .bounded_log import read_tail


class Accelerator(enum.Enum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class FileBackedMemoryConfig:
    """Guest RAM backed by a file.

    shared=True: guest writes go to the file (a template being built).
    shared=False: the file is mapped private/copy-on-write (a clone), so the
    file is never modified and its pages are shared between clones.
    """

    path: Path
    shared: bool
    # Open the file read-only (shared=False only): a compromised VMM cannot write the
    # template through its fd. Only where the VMM supports it (private_readonly_memory()).
    readonly: bool = False


@dataclass(frozen=True)
class HypervisorConfig:
    """Everything that shapes a VM. Fields that a template's saved state
    depends on are listed by :meth:`template_identity`."""

    kernel: Path
    initrd: Path
    kernel_params: tuple[str, ...] = ()
    vcpus: int = 1
    max_vcpus: int = 4
    memory_mib: int = 256
    # Memory hot-add: DIMM slots and the most RAM the VM can grow to (MiB).
    # 0 slots = no hot-add (max_memory_mib is then ignored).
    memory_slots: int = 0
    max_memory_mib: int = 0
    accelerator: Accelerator = Accelerator.AUTO
    binary: Path | None = None  # None = look up the default on PATH
    file_backed_memory: FileBackedMemoryConfig | None = None
    vmgenid: bool = False
    # PCIe root ports left free for hot-plug (NICs, later disks).
    hotplug_root_ports: int = 2
    # Name of the virtio-serial port the agent listens on.
    agent_port_name: str = "graft.agent"
    # 9p mount tag of the shared directory.
    share_mount_tag: str = "graftshare"
    extra_args: tuple[str, ...] = field(default=())
    # Cloud Hypervisor only: it shares directories over virtio-fs, served by a
    # virtiofsd the caller runs on this socket. None = no share device (QEMU
    # always exports VmPaths.shared_dir over 9p and ignores this field).
    virtiofs_socket: Path | None = None
    # A virtio-net device present from boot with this MAC, backed by the tap fd in
    # Hypervisor.boot_nic_fd at launch; "" = none (NICs are hot-plugged).
    boot_nic_mac: str = ""

    def template_identity(self) -> dict[str, object]:
        """The parts of the config a saved VM state is only valid for."""
        return {
            "kernel_params": list(self.kernel_params),
            "vcpus": self.vcpus,
            "max_vcpus": self.max_vcpus,
            "memory_mib": self.memory_mib,
            "vmgenid": self.vmgenid,
            "hotplug_root_ports": self.hotplug_root_ports,
            "agent_port_name": self.agent_port_name,
            "share_mount_tag": self.share_mount_tag,
            "extra_args": list(self.extra_args),
            # Only present when set, so identities of configs without them
            # are unchanged (and their templates stay valid).
            **({"virtiofs_share": True} if self.virtiofs_socket else {}),
            # Slots and maxmem change the machine (ACPI tables, address map).
            **({"memory_slots": self.memory_slots, "max_memory_mib": self.max_memory_mib}
               if self.memory_slots else {}),
            **({"boot_nic_mac": self.boot_nic_mac} if self.boot_nic_mac else {}),
        }


@dataclass(frozen=True)
class VmPaths:
    """Per-VM host paths; every file a VM creates lives under run_dir."""

    run_dir: Path
    shared_dir: Path  # exported to the guest over 9p (container rootfs trees)

    @property
    def agent_socket(self) -> Path:
        return self.run_dir / "agent.sock"

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def control_socket(self) -> Path:  # QMP for QEMU, REST API for CLH
        return self.run_dir / "control.sock"


@dataclass(frozen=True)
class NetworkDevice:
    """A NIC to hot-plug: a tap device that exists in the VMM's netns."""

    id: str
    tap_name: str
    mac: str
    tap_fds: tuple[int, ...] = ()


class HypervisorError(Exception):
    """A VMM failed; the message includes the tail of the console log."""


class VmExited(HypervisorError):
    """The VMM process is gone."""


class Hypervisor(abc.ABC):
    """One VM. Create it, then either start_vm() (cold boot) or
    restore_vm(dir) + resume_vm() (from saved state)."""

    #: Whether the VMM can boot (and restore) with config.boot_nic_mac's device.
    supports_boot_nic = False

    def __init__(self, vm_id: str, config: HypervisorConfig, paths: VmPaths,
                 netns: Path | None = None) -> None:
        self.vm_id = vm_id
        self.config = config
        self.paths = paths
        self.netns = netns
        # The tap fd backing the boot NIC (config.boot_nic_mac), set before start_vm() or
        # restore_vm(); the VMM gets its own copy, the caller keeps and closes this one.
        self.boot_nic_fd: int | None = None

    @abc.abstractmethod
    async def start_vm(self, timeout: float = 30.0) -> None:
        """Launch the VMM and cold-boot the guest (returns once it runs)."""

    @abc.abstractmethod
    async def stop_vm(self) -> None:
        """Stop the VM and remove every file it created. Idempotent."""

    @abc.abstractmethod
    async def pause_vm(self) -> None: ...

    @abc.abstractmethod
    async def resume_vm(self) -> None: ...

    @abc.abstractmethod
    async def save_vm(self, directory: Path) -> None:
        """Save the (paused) VM's device state into *directory*."""

    @abc.abstractmethod
    async def restore_vm(self, directory: Path, timeout: float = 30.0) -> None:
        """Launch the VMM from state saved in *directory*; VM left paused."""

    @abc.abstractmethod
    async def add_network_device(self, device: NetworkDevice) -> None: ...

    async def add_vcpus(self, count: int) -> None:
        """Hot-add *count* vCPUs (up to config.max_vcpus). The guest still
        has to online them."""
        raise HypervisorError(f"{type(self).__name__} cannot hot-add vCPUs")

    #: Whether add_memory() can work at all for this VMM (config aside).
    supports_memory_hotplug = False

    async def add_memory(self, mib: int) -> int:
        """Hot-add *mib* MiB of RAM (within config.memory_slots and
        config.max_memory_mib); returns the VM's RAM in MiB afterwards. The
        guest still has to online the new memory blocks, and only onlines
        whole blocks (GetGuestDetails.mem_block_size_bytes)."""
        raise HypervisorError(f"{type(self).__name__} cannot hot-add memory")

    def relocate(self, paths: VmPaths) -> None:
        """The run dir was renamed to paths.run_dir under a running VM (a VM prepared ahead
        of its sandbox): only the host-side view changes."""
        raise HypervisorError(f"{type(self).__name__} cannot be relocated")

    @abc.abstractmethod
    async def wait_exit(self) -> int:
        """Block until the VMM process exits; returns its exit status."""

    @property
    @abc.abstractmethod
    def pid(self) -> int | None:
        """PID of the VMM process, None before start/after stop."""

    async def private_readonly_memory(self) -> bool:
        """Whether this VMM can map a memory file it opened read-only as private,
        writable guest RAM (FileBackedMemoryConfig.readonly)."""
        return False

    @abc.abstractmethod
    async def version(self) -> str:
        """The VMM's version string (recorded in template metadata)."""

    async def open_agent_stream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A byte stream to the guest agent (virtio-serial chardev socket by
        default; hybrid-vsock VMMs override this)."""
        return await asyncio.open_unix_connection(str(self.paths.agent_socket))

    def console_tail(self, lines: int = 40) -> str:
        text = read_tail(self.paths.console_log).decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

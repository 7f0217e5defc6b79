"""What the real-QEMU tests of test_qemu_vm.py boot: a PVH kernel from the installed Debian
kernel, a tiny test initramfs (busybox + a shell /init answering line commands on the agent's
port), one template per module, and helpers to drive and check the VMs."""
from __future__ import annotations

import asyncio
import hashlib
import lzma
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from shim.hypervisor import (Accelerator, FileBackedMemoryConfig, HypervisorConfig,
                             VmPaths)
from shim.hypervisor.qemu import QemuHypervisor

REPO = Path(__file__).resolve().parents[2]


def _debian_kernel() -> tuple[Path, Path] | None:
    """(vmlinuz, module dir) of an installed Debian kernel (not the host's)."""
    for vmlinuz in sorted(Path("/boot").glob("vmlinuz-*"), reverse=True):
        modules = Path("/lib/modules") / vmlinuz.name.removeprefix("vmlinuz-") / "kernel"
        if modules.is_dir():
            return vmlinuz, modules
    return None


DEBIAN_KERNEL = _debian_kernel()
# load order matters (no modprobe in the test guest)
GUEST_MODULES = ("drivers/virtio/virtio_ring", "drivers/virtio/virtio",
                 "drivers/virtio/virtio_pci_legacy_dev", "drivers/virtio/virtio_pci_modern_dev",
                 "drivers/virtio/virtio_pci", "drivers/char/virtio_console",
                 "net/core/failover", "drivers/net/net_failover", "drivers/net/virtio_net")
PORT_NAME = "graft.test"
MEMORY_MIB = 128
KERNEL_PARAMS = ("console=ttyS0", "panic=-1", "cryptomgr.notests", "tsc=reliable",
                 "no_timer_check", "rcupdate.rcu_expedited=1", "i8042.noaux=1", "i8042.nokbd=1",
                 "i8042.nopnp=1", "mitigations=off", "audit=0", "quiet")


# What the tests using these assets need (test_qemu_vm.py marks itself with it).
QEMU_TEST_MARKS = [
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64"),
    pytest.mark.skipif(DEBIAN_KERNEL is None,
                       reason="needs an installed Debian kernel (/boot/vmlinuz-*, /lib/modules)"),
    pytest.mark.skipif(not Path("/bin/busybox").is_file(), reason="needs busybox-static"),
]

GUEST_INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in MODULES; do insmod /lib/modules/$m.ko || echo "insmod $m failed" > /dev/console; done
want=$(sed -n 's/.*graft\.agent_port=\([^ ]*\).*/\1/p' /proc/cmdline)
port=
for i in $(seq 1 400); do
  for d in /sys/class/virtio-ports/*; do
    [ "$(cat "$d/name" 2>/dev/null)" = "$want" ] && port=/dev/${d##*/}
  done
  [ -n "$port" ] && [ -e "$port" ] && break
  sleep 0.05
done
echo "graft-test-booted port=$port" > /dev/console
while true; do
  exec 3<>"$port"
  # read returns EOF while no host is connected: reopen after a short nap
  while read -r cmd arg <&3; do
    case "$cmd" in
      ping) echo "pong $arg" >&3 ;;
      net) echo "net $(ls /sys/class/net | tr '\n' ' ')" >&3 ;;
      cpus) echo "cpus $(cat /sys/devices/system/cpu/present)" >&3 ;;
      dirty) dd if=/dev/urandom of=/tmp/dirty bs=1M count="$arg" 2>/dev/null; echo "dirtied $arg" >&3 ;;
      flood) for i in $(seq 1 "$arg"); do echo "console flood line $i"; done > /dev/console; echo "flooded $arg" >&3 ;;
      *) echo "unknown $cmd" >&3 ;;
    esac
  done
  exec 3<&-
  sleep 0.05
done
"""


# --------------------------------------------------------------------------- assets
def extract_pvh_kernel(bzimage: Path, out: Path) -> Path:
    """The xz payload of a Debian bzImage is the vmlinux ELF (PVH-capable)."""
    data = bzimage.read_bytes()
    start = data.find(b"\xfd7zXZ\x00")
    assert start >= 0, f"no xz stream in {bzimage}"
    elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])
    assert elf[:4] == b"\x7fELF", "decompressed payload is not an ELF"
    out.write_bytes(elf)
    return out


def _cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """(name, mode, data) → an uncompressed newc archive (data of a symlink = target)."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], start=1):
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields)
        out += name.encode() + b"\0"
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def build_test_initramfs(out: Path) -> Path:
    init = GUEST_INIT.replace("MODULES", " ".join(Path(m).name for m in GUEST_MODULES))
    entries: list[tuple[str, int, bytes]] = [
        ("bin", stat.S_IFDIR | 0o755, b""),
        ("lib", stat.S_IFDIR | 0o755, b""),
        ("lib/modules", stat.S_IFDIR | 0o755, b""),
        ("bin/busybox", stat.S_IFREG | 0o755, Path("/bin/busybox").read_bytes()),
        ("init", stat.S_IFREG | 0o755, init.encode()),
    ]
    for mod in GUEST_MODULES:
        assert DEBIAN_KERNEL is not None
        src = DEBIAN_KERNEL[1] / f"{mod}.ko"
        entries.append((f"lib/modules/{src.name}", stat.S_IFREG | 0o644, src.read_bytes()))
    out.write_bytes(_cpio_newc(entries))
    return out


@dataclass(frozen=True)
class GuestAssets:
    kernel: Path
    initrd: Path


@pytest.fixture(scope="session")
def guest_assets(tmp_path_factory: pytest.TempPathFactory) -> GuestAssets:
    d = tmp_path_factory.mktemp("qemu-guest")
    assert DEBIAN_KERNEL is not None
    return GuestAssets(kernel=extract_pvh_kernel(DEBIAN_KERNEL[0], d / "vmlinux"),
                       initrd=build_test_initramfs(d / "initrd.img"))


def make_config(assets: GuestAssets, memory: FileBackedMemoryConfig | None = None,
                vmgenid: bool = False) -> HypervisorConfig:
    return HypervisorConfig(kernel=assets.kernel, initrd=assets.initrd, kernel_params=KERNEL_PARAMS,
                            vcpus=1, max_vcpus=2, memory_mib=MEMORY_MIB,
                            memory_slots=2, max_memory_mib=4 * MEMORY_MIB,
                            accelerator=Accelerator.TCG, file_backed_memory=memory, vmgenid=vmgenid,
                            hotplug_root_ports=2, agent_port_name=PORT_NAME)


def make_paths(base: Path) -> VmPaths:
    shared = base / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    return VmPaths(run_dir=base / "run", shared_dir=shared)


# --------------------------------------------------------------------------- guest channel
class GuestLine:
    """Line protocol with the test /init over the agent socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._seq = 0

    @classmethod
    async def connect(cls, path: Path) -> "GuestLine":
        reader, writer = await asyncio.open_unix_connection(str(path))
        return cls(reader, writer)

    async def ask(self, command: str, reply_prefix: str, timeout: float, retry: float = 0.5) -> str:
        """Send *command* (re-sent every *retry* s: the guest may not read yet)
        until a line starting with *reply_prefix* arrives."""
        deadline = time.monotonic() + timeout
        while True:
            self.writer.write(command.encode() + b"\n")
            await self.writer.drain()
            resend_at = min(deadline, time.monotonic() + retry)
            while (left := resend_at - time.monotonic()) > 0:
                try:
                    line = await asyncio.wait_for(self.reader.readline(), left)
                except TimeoutError:
                    break
                if not line:
                    raise ConnectionError("agent socket closed")
                text = line.decode(errors="replace").strip()
                if text.startswith(reply_prefix):
                    return text
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no {reply_prefix!r} reply to {command!r} within {timeout}s")

    async def ping(self, timeout: float) -> None:
        self._seq += 1
        token = f"{os.getpid()}-{self._seq}"
        await self.ask(f"ping {token}", f"pong {token}", timeout)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def process_gone(pid: int) -> bool:
    """Gone or a zombie (PID 1 here may not reap orphans)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return fields[0] in ("Z", "X")


def assert_cleaned(hv: QemuHypervisor) -> None:
    assert hv.pid is None
    for path in (hv.paths.control_socket, hv.paths.agent_socket, hv.paths.console_log,
                 hv.process_log):
        assert not path.exists(), f"{path} left behind"


TIMINGS: dict[str, float] = {}


def record(name: str, seconds: float) -> None:
    TIMINGS[name] = seconds
    print(f"[timing] {name}: {seconds * 1000:.0f} ms")


# --------------------------------------------------------------------------- template
@dataclass(frozen=True)
class Template:
    directory: Path
    memory: Path
    memory_sha256: str
    assets: GuestAssets


@pytest_asyncio.fixture(scope="module")
async def template(guest_assets: GuestAssets, tmp_path_factory: pytest.TempPathFactory) -> Template:
    """Cold boot a VM on shared file-backed memory, save it, stop it."""
    base = tmp_path_factory.mktemp("template")
    tpl_dir = base / "tpl"
    tpl_dir.mkdir()
    memory = tpl_dir / "memory"
    hv = QemuHypervisor("tpl", make_config(guest_assets, FileBackedMemoryConfig(memory, shared=True)),
                        make_paths(base))
    try:
        t0 = time.monotonic()
        await hv.start_vm()
        guest = await GuestLine.connect(hv.paths.agent_socket)
        await guest.ping(timeout=60)
        record("cold boot to guest reply (tiny initramfs)", time.monotonic() - t0)
        assert "graft-test-booted" in hv.console_tail()
        await guest.close()
        await hv.pause_vm()
        t0 = time.monotonic()
        await hv.save_vm(tpl_dir)
        record("save_vm", time.monotonic() - t0)
    finally:
        await hv.stop_vm()
    assert_cleaned(hv)
    assert (tpl_dir / "state").stat().st_size > 0
    assert memory.stat().st_size == MEMORY_MIB * 1024 * 1024
    return Template(tpl_dir, memory, sha256_of(memory), guest_assets)


async def restore_clone(tpl: Template, base: Path, name: str, netns: Path | None = None) -> QemuHypervisor:
    config = make_config(tpl.assets, FileBackedMemoryConfig(tpl.memory, shared=False))
    hv = QemuHypervisor(name, config, make_paths(base / name), netns=netns)
    await hv.restore_vm(tpl.directory)
    return hv



"""Real QEMU (TCG) tests of shim.hypervisor.qemu.

The guest is a tiny test initramfs built here (busybox-static + a shell /init
that answers line commands on the agent's virtio-serial port), booted on the
PVH ELF extracted from the installed Debian kernel. One template is built per
module; every other test runs a clone restored from it (0.2 s instead of a
cold boot) so the shared 2-core machine sees at most one VM per test.
"""
from __future__ import annotations

import asyncio
import hashlib
import lzma
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from shim.hypervisor import (Accelerator, FileBackedMemoryConfig, HypervisorConfig,
                             HypervisorError, NetworkDevice, VmExited, VmPaths)
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


pytestmark = [
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


# --------------------------------------------------------------------------- tests
async def test_template_saved_small_state(template: Template) -> None:
    # guest RAM stays in the memory file (x-ignore-shared): the state is small
    assert (template.directory / "state").stat().st_size < 4 * 1024 * 1024


async def test_clone_runs_and_template_memory_unchanged(template: Template, tmp_path: Path) -> None:
    t0 = time.monotonic()
    hv = await restore_clone(template, tmp_path, "clone1")
    record("restore_vm (launch + incoming migration)", time.monotonic() - t0)
    try:
        state = await hv._running_qmp().run_state()
        assert state == "paused"  # restore leaves the VM paused
        t1 = time.monotonic()
        await hv.resume_vm()
        guest = await GuestLine.connect(hv.paths.agent_socket)
        await guest.ping(timeout=20)
        record("resume to guest reply", time.monotonic() - t1)
        record("restore + resume to guest reply", time.monotonic() - t0)
        # the clone writes lots of guest memory: the template file must not change
        assert (await guest.ask("dirty 32", "dirtied", timeout=60)) == "dirtied 32"
        await guest.close()
        assert (await hv.version()).startswith("QEMU ")
    finally:
        await hv.stop_vm()
    assert_cleaned(hv)
    assert sha256_of(template.memory) == template.memory_sha256


async def test_console_log_is_bounded_by_the_host(template: Template, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The guest prints at its own pace; what it prints lands on the host's tmpfs only up to
    2 x the limit (log + one rotated part), and the tail still shows the newest lines."""
    from shim.hypervisor import bounded_log

    limit = 16 * 1024
    monkeypatch.setattr(bounded_log, "DEFAULT_LIMIT", limit)
    hv = await restore_clone(template, tmp_path, "flood")
    try:
        await hv.resume_vm()
        guest = await GuestLine.connect(hv.paths.agent_socket)
        await guest.ping(timeout=20)
        assert await guest.ask("flood 6000", "flooded", timeout=120) == "flooded 6000"
        await guest.close()
        await guest_line_reached(hv, "console flood line 6000")
        rotated = bounded_log.rotated(hv.paths.console_log)
        assert hv.paths.console_log.stat().st_size <= limit
        assert 0 < rotated.stat().st_size <= limit  # ~150 KB printed, 32 KiB kept
        tail = hv.console_tail(lines=5).splitlines()
        assert tail[-1] == "console flood line 6000", tail
    finally:
        await hv.stop_vm()
    assert_cleaned(hv)
    assert not bounded_log.rotated(hv.paths.console_log).exists()


async def guest_line_reached(hv: QemuHypervisor, line: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while line not in hv.console_tail(lines=5):
        assert time.monotonic() < deadline, hv.console_tail()
        await asyncio.sleep(0.1)


async def test_pause_resume(template: Template, tmp_path: Path) -> None:
    hv = await restore_clone(template, tmp_path, "clone2")
    try:
        await hv.resume_vm()
        guest = await GuestLine.connect(hv.paths.agent_socket)
        await guest.ping(timeout=20)
        await hv.pause_vm()
        with pytest.raises(TimeoutError):
            await guest.ping(timeout=1.5)  # a paused guest does not answer
        await hv.resume_vm()
        await guest.ping(timeout=20)
        await guest.close()
        with pytest.raises(HypervisorError, match="paused"):
            await hv.save_vm(tmp_path / "not-paused")  # save needs a paused VM
        pid = hv.pid
        assert pid is not None
    finally:
        await hv.stop_vm()
    assert process_gone(pid)
    assert hv.exited.is_set() and await hv.wait_exit() == 0  # QMP quit: clean exit
    await hv.stop_vm()  # idempotent
    assert_cleaned(hv)


@pytest.fixture
def netns_with_taps() -> tuple[Path, list[str]]:
    name = f"gqt{uuid.uuid4().hex[:8]}"
    taps = ["tap0", "tap1"]
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for tap in taps:
            subprocess.run(["ip", "-n", name, "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
            subprocess.run(["ip", "-n", name, "link", "set", tap, "up"], check=True)
        yield Path("/run/netns") / name, taps
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


async def test_nic_hotplug_in_netns_and_vcpu_hotplug(template: Template, tmp_path: Path,
                                                     netns_with_taps: tuple[Path, list[str]]) -> None:
    netns, (tap0, tap1) = netns_with_taps
    hv = await restore_clone(template, tmp_path, "clone3", netns=netns)
    try:
        await hv.resume_vm()
        guest = await GuestLine.connect(hv.paths.agent_socket)
        await guest.ping(timeout=20)
        # QEMU really runs in the pod netns
        assert os.stat(f"/proc/{hv.pid}/ns/net").st_ino == os.stat(netns).st_ino
        assert await hv.free_root_ports() == ["rp0", "rp1"]
        t0 = time.monotonic()
        await hv.add_network_device(NetworkDevice(id="eth0", tap_name=tap0, mac="02:00:00:aa:bb:01"))
        record("add_network_device (tap by name)", time.monotonic() - t0)
        # second NIC: tap fd passed over QMP (SCM_RIGHTS + getfd)
        fd = _open_tap_in_netns(netns, tap1)
        try:
            await hv.add_network_device(NetworkDevice(id="eth1", tap_name=tap1, mac="02:00:00:aa:bb:02",
                                                      tap_fds=(fd,)))
        finally:
            os.close(fd)
        assert await hv.free_root_ports() == []
        with pytest.raises(HypervisorError, match="no free PCIe root port"):
            await hv.add_network_device(NetworkDevice(id="eth2", tap_name=tap0, mac="02:00:00:aa:bb:03"))
        deadline = time.monotonic() + 30
        while not {"eth0", "eth1"} <= set((reply := await guest.ask("net", "net", timeout=20)).split()):
            assert time.monotonic() < deadline, reply
            await asyncio.sleep(0.2)
        record("NIC visible in guest after hot-plug", time.monotonic() - t0)
        await hv.add_vcpus(1)
        deadline = time.monotonic() + 30
        while (reply := await guest.ask("cpus", "cpus", timeout=20)) != "cpus 0-1":
            assert time.monotonic() < deadline, reply
            await asyncio.sleep(0.2)
        with pytest.raises(HypervisorError, match="cannot add"):
            await hv.add_vcpus(1)  # max_vcpus=2 reached
        # memory: a pc-dimm per call, within the slots and maxmem of the template
        assert await hv.add_memory(MEMORY_MIB) == 2 * MEMORY_MIB
        with pytest.raises(HypervisorError, match="max_memory_mib"):
            await hv.add_memory(3 * MEMORY_MIB)
        assert await hv.add_memory(2 * MEMORY_MIB) == 4 * MEMORY_MIB
        with pytest.raises(HypervisorError, match="all 2 memory slots are in use"):
            await hv.add_memory(MEMORY_MIB)
        await guest.close()
    finally:
        await hv.stop_vm()
    assert_cleaned(hv)


def _open_tap_in_netns(netns: Path, tap: str) -> int:
    """Open /dev/net/tun attached to *tap* from inside *netns* (via a helper process)."""
    import array
    import socket
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    code = textwrap.dedent(f"""
        import array, fcntl, os, socket, struct
        s = socket.socket(fileno={child.fileno()})
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", b"{tap}", 0x0002 | 0x1000))
        s.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
    """)
    try:
        subprocess.run(["ip", "netns", "exec", netns.name, sys.executable, "-c", code],
                       pass_fds=(child.fileno(),), check=True, capture_output=True)
        fds = array.array("i")
        _, anc, _, _ = parent.recvmsg(1, socket.CMSG_SPACE(fds.itemsize))
        fds.frombytes(anc[0][2][:fds.itemsize])
        return fds[0]
    finally:
        parent.close()
        child.close()


async def test_kill9_is_noticed(template: Template, tmp_path: Path) -> None:
    hv = await restore_clone(template, tmp_path, "clone4")
    try:
        await hv.resume_vm()
        pid = hv.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert await asyncio.wait_for(hv.wait_exit(), 10) == -signal.SIGKILL
        assert hv.exited.is_set() and hv.pid is None
        with pytest.raises(VmExited):
            await hv.pause_vm()
    finally:
        await hv.stop_vm()
    assert_cleaned(hv)


OWNER_SCRIPT = """
import asyncio, sys
from pathlib import Path
from shim.hypervisor import FileBackedMemoryConfig, HypervisorConfig, VmPaths, Accelerator
from shim.hypervisor.qemu import QemuHypervisor

async def main():
    kernel, initrd, memory, tpl, run_dir, shared = map(Path, sys.argv[1:7])
    cfg = HypervisorConfig(kernel=kernel, initrd=initrd, kernel_params={params!r}, vcpus=1,
                           max_vcpus=2, memory_mib={mib}, memory_slots=2, max_memory_mib={maxmib},
                           accelerator=Accelerator.TCG,
                           file_backed_memory=FileBackedMemoryConfig(memory, shared=False),
                           hotplug_root_ports=2, agent_port_name={port!r})
    hv = QemuHypervisor("owner", cfg, VmPaths(run_dir, shared))
    await hv.restore_vm(tpl)
    await hv.resume_vm()
    print(hv.pid, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_qemu_dies_with_its_owner(template: Template, tmp_path: Path) -> None:
    paths = make_paths(tmp_path)
    paths.run_dir.mkdir()
    script = OWNER_SCRIPT.format(params=KERNEL_PARAMS, mib=MEMORY_MIB, maxmib=4 * MEMORY_MIB,
                                 port=PORT_NAME)
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(template.assets.kernel), str(template.assets.initrd),
        str(template.memory), str(template.directory), str(paths.run_dir), str(paths.shared_dir),
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    qemu_pid = None
    try:
        line = await asyncio.wait_for(owner.stdout.readline(), 60)
        assert line.strip(), (await owner.stderr.read()).decode()
        qemu_pid = int(line)
        assert not process_gone(qemu_pid)
        owner.kill()  # SIGKILL: no cleanup code runs in the owner
        await owner.wait()
        deadline = time.monotonic() + 10
        while not process_gone(qemu_pid):
            assert time.monotonic() < deadline, "QEMU outlived its SIGKILLed owner"
            await asyncio.sleep(0.05)
    finally:
        if owner.returncode is None:
            owner.kill()
            await owner.wait()
        if qemu_pid is not None and not process_gone(qemu_pid):
            os.kill(qemu_pid, signal.SIGKILL)


async def test_start_failure_reports_qemu_output(guest_assets: GuestAssets, tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-kernel"
    bogus.write_bytes(b"\0" * 4096)
    config = make_config(GuestAssets(kernel=bogus, initrd=guest_assets.initrd))
    hv = QemuHypervisor("bad", config, make_paths(tmp_path))
    with pytest.raises(HypervisorError) as err:
        await hv.start_vm(timeout=20)
    assert "VMM output" in str(err.value) and "kernel" in str(err.value).lower(), str(err.value)
    assert_cleaned(hv)
    await hv.stop_vm()


async def test_vmgenid_boots_with_seabios(guest_assets: GuestAssets, tmp_path: Path) -> None:
    hv = QemuHypervisor("genid", make_config(guest_assets, vmgenid=True), make_paths(tmp_path))
    try:
        t0 = time.monotonic()
        await hv.start_vm()
        guest = await GuestLine.connect(hv.paths.agent_socket)
        await guest.ping(timeout=60)
        record("cold boot with vmgenid (SeaBIOS)", time.monotonic() - t0)
        await guest.close()
        guid = await hv._running_qmp().execute("query-vm-generation-id")
        assert len(guid["guid"]) == 36
    finally:
        await hv.stop_vm()
    assert_cleaned(hv)


async def test_restore_without_state_fails_cleanly(guest_assets: GuestAssets, tmp_path: Path) -> None:
    hv = QemuHypervisor("nostate", make_config(guest_assets), make_paths(tmp_path))
    with pytest.raises(HypervisorError, match="no saved state"):
        await hv.restore_vm(tmp_path / "empty")
    assert hv.pid is None


async def test_restore_of_corrupt_state_fails_with_qemu_error(template: Template, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "state").write_bytes(b"QEVM" + b"\0" * 64)
    config = make_config(template.assets, FileBackedMemoryConfig(template.memory, shared=False))
    hv = QemuHypervisor("corrupt", config, make_paths(tmp_path))
    with pytest.raises(HypervisorError) as err:
        await hv.restore_vm(bad, timeout=20)
    message = str(err.value)
    assert "restore from" in message and "migration" in message, message  # QEMU's reason is included
    assert_cleaned(hv)

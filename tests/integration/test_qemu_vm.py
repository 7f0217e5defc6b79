"""Real QEMU (TCG) tests of shim.hypervisor.qemu.

The guest is a tiny test initramfs built here (busybox-static + a shell /init
that answers line commands on the agent's virtio-serial port), booted on the
PVH ELF extracted from the installed Debian kernel. One template is built per
module; every other test runs a clone restored from it (0.2 s instead of a
cold boot) so the shared 2-core machine sees at most one VM per test.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from shim.hypervisor import (FileBackedMemoryConfig, HypervisorError, NetworkDevice, VmExited)
from shim.hypervisor.qemu import QemuHypervisor

from qemu_assets import (KERNEL_PARAMS, MEMORY_MIB, PORT_NAME, QEMU_TEST_MARKS, REPO,
                         GuestAssets, GuestLine,
                         Template, assert_cleaned, make_config, make_paths, process_gone,
                         record, restore_clone, sha256_of)

# the fixtures guest_assets and template
pytest_plugins = ["qemu_assets"]
pytestmark = QEMU_TEST_MARKS


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

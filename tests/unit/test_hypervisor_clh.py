"""shim.hypervisor.clh against tests/unit/clh_fake.py, a CONTRACT FAKE of
Cloud Hypervisor's REST API (no CLH binary is installable here): the fake is
launched as the "binary", so the launch, API, snapshot/restore and teardown
code paths all run; the fake validates every request against CLH's OpenAPI
schema and VM state machine. No VM runs."""
from __future__ import annotations

import asyncio
import logging
import json
import os
import signal
import stat
import sys
from pathlib import Path

import pytest

from shim.hypervisor import (Accelerator, FileBackedMemoryConfig, HypervisorConfig,
                             HypervisorError, NetworkDevice, VmExited, VmPaths)
from shim.hypervisor.clh import CloudHypervisor
from shim.hypervisor.clh_api import ClhApi, ClhApiError
from shim.hypervisor.hybrid_vsock import HybridVsockError, connect_hybrid_vsock
from shim.hypervisor.process import VmmProcess

FAKE = Path(__file__).with_name("clh_fake.py")
MIB = 1024 * 1024


@pytest.fixture
def fake_binary(tmp_path: Path) -> Path:
    wrapper = tmp_path / "cloud-hypervisor"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper


@pytest.fixture
def boot_files(tmp_path: Path) -> tuple[Path, Path]:
    kernel, initrd = tmp_path / "vmlinux", tmp_path / "initrd.img"
    kernel.write_bytes(b"\x7fELF")
    initrd.write_bytes(b"070701")
    return kernel, initrd


def make_config(binary: Path, boot: tuple[Path, Path], **kw: object) -> HypervisorConfig:
    base: dict[str, object] = dict(kernel=boot[0], initrd=boot[1], kernel_params=("quiet",),
                                   vcpus=1, max_vcpus=4, memory_mib=64,
                                   accelerator=Accelerator.KVM, binary=binary)
    base.update(kw)
    return HypervisorConfig(**base)  # type: ignore[arg-type]


def make_paths(base: Path) -> VmPaths:
    (base / "shared").mkdir(parents=True, exist_ok=True)
    return VmPaths(run_dir=base / "run", shared_dir=base / "shared")


def assert_cleaned(hv: CloudHypervisor) -> None:
    assert hv.pid is None
    for path in (hv.paths.control_socket, hv.paths.agent_socket, hv.paths.console_log,
                 hv.process_log, hv.restore_dir):
        assert not path.exists(), f"{path} left behind"


async def test_cold_boot_lifecycle(tmp_path: Path, fake_binary: Path,
                                   boot_files: tuple[Path, Path]) -> None:
    hv = CloudHypervisor("vm1", make_config(fake_binary, boot_files), make_paths(tmp_path / "vm1"))
    await hv.start_vm()
    try:
        assert hv.pid is not None
        info = await hv.vm_info()
        assert info["state"] == "Running"
        cfg = info["config"]
        assert cfg["memory"] == {"size": 64 * MIB, "shared": False}
        assert cfg["cpus"] == {"boot_vcpus": 1, "max_vcpus": 4}
        assert cfg["payload"]["cmdline"] == \
            "console=ttyS0 quiet graft.agent_port=graft.agent graft.agent_vsock_port=1024"
        assert cfg["vsock"] == {"cid": 3, "socket": str(hv.paths.agent_socket)}
        assert cfg["serial"] == {"mode": "File", "file": str(hv.paths.console_log)}
        assert "fs" not in cfg  # no virtiofs socket configured
        assert "fake guest booted" in hv.console_tail()
        assert await hv.version() == "Cloud Hypervisor v0.0.0-fake"
        await hv.pause_vm()
        assert (await hv.vm_info())["state"] == "Paused"
        await hv.resume_vm()
        assert (await hv.vm_info())["state"] == "Running"
        with pytest.raises(ClhApiError) as err:
            await hv.resume_vm()  # only a paused VM resumes
        assert err.value.status == 405
        with pytest.raises(HypervisorError, match="paused"):
            await hv.save_vm(tmp_path / "snap")
    finally:
        await hv.stop_vm()
    assert_cleaned(hv)
    await hv.stop_vm()  # idempotent
    with pytest.raises(HypervisorError, match="not running"):
        await hv.pause_vm()


async def test_template_snapshot_then_private_clone(tmp_path: Path, fake_binary: Path,
                                                   boot_files: tuple[Path, Path]) -> None:
    tpl = tmp_path / "tpl"
    tpl.mkdir()
    memory = tpl / "memory"
    template = CloudHypervisor(
        "tpl", make_config(fake_binary, boot_files, file_backed_memory=FileBackedMemoryConfig(memory, True)),
        make_paths(tmp_path / "t"))
    await template.start_vm()
    try:
        assert memory.stat().st_size == 64 * MIB  # pre-sized for CLH
        await template.pause_vm()
        await template.save_vm(tpl)
    finally:
        await template.stop_vm()
    assert_cleaned(template)
    saved = json.loads((tpl / "config.json").read_text())
    assert saved["memory"] == {"size": 0, "shared": True, "zones": [
        {"id": "mem0", "size": 64 * MIB, "file": str(memory), "shared": True}]}
    assert (tpl / "memory-ranges").read_bytes() == b""  # RAM stayed in the shared file
    snapshot_before = (tpl / "config.json").read_bytes()

    clone = CloudHypervisor(
        "clone", make_config(fake_binary, boot_files, file_backed_memory=FileBackedMemoryConfig(memory, False)),
        make_paths(tmp_path / "c"))
    await clone.restore_vm(tpl)
    try:
        info = await clone.vm_info()
        assert info["state"] == "Paused"  # restore leaves the VM paused
        cfg = info["config"]
        assert cfg["memory"]["shared"] is False and cfg["memory"]["zones"][0]["shared"] is False
        assert cfg["memory"]["zones"][0]["file"] == str(memory)
        assert cfg["vsock"]["socket"] == str(clone.paths.agent_socket)
        assert cfg["serial"]["file"] == str(clone.paths.console_log)
        assert (tpl / "config.json").read_bytes() == snapshot_before  # the template is untouched
        await clone.resume_vm()
        reader, writer = await clone.open_agent_stream()  # hybrid vsock to the agent port
        writer.write(b"hello guest\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"hello guest\n"
        writer.close()
    finally:
        await clone.stop_vm()
    assert_cleaned(clone)


async def test_restore_checks_the_snapshot_against_the_config(tmp_path: Path, fake_binary: Path,
                                                             boot_files: tuple[Path, Path]) -> None:
    hv = CloudHypervisor("x", make_config(fake_binary, boot_files), make_paths(tmp_path / "x"))
    with pytest.raises(HypervisorError, match="no CLH snapshot"):
        await hv.restore_vm(tmp_path / "nothing")
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "config.json").write_text(json.dumps({"memory": {"size": 128 * MIB}, "cpus": {"max_vcpus": 4},
                                                  "payload": {"kernel": str(boot_files[0])}}))
    (snap / "state.json").write_text("{}")
    (snap / "memory-ranges").write_bytes(b"x")
    with pytest.raises(HypervisorError, match="128 MiB of RAM, config wants 64"):
        await hv.restore_vm(snap)
    assert hv.pid is None


async def test_clone_needs_the_template_memory_file(tmp_path: Path, fake_binary: Path,
                                                    boot_files: tuple[Path, Path]) -> None:
    cfg = make_config(fake_binary, boot_files,
                      file_backed_memory=FileBackedMemoryConfig(tmp_path / "missing", False))
    hv = CloudHypervisor("x", cfg, make_paths(tmp_path / "x"))
    with pytest.raises(HypervisorError, match="memory file"):
        await hv.start_vm()
    assert_cleaned(hv)


async def test_network_devices_and_vcpus(tmp_path: Path, fake_binary: Path,
                                         boot_files: tuple[Path, Path]) -> None:
    hv = CloudHypervisor("vm", make_config(fake_binary, boot_files), make_paths(tmp_path / "vm"))
    await hv.start_vm()
    try:
        await hv.add_network_device(NetworkDevice(id="eth0", tap_name="tap0", mac="02:00:00:00:00:AA"))
        r, w = os.pipe()  # any descriptors: the fake checks they arrive by SCM_RIGHTS
        try:
            await hv.add_network_device(NetworkDevice(id="eth1", tap_name="", mac="02:00:00:00:00:bb",
                                                      tap_fds=(r, w)))
        finally:
            os.close(r)
            os.close(w)
        nets = (await hv.vm_info())["config"]["net"]
        assert nets == [{"id": "eth0", "mac": "02:00:00:00:00:aa", "tap": "tap0"},
                        {"id": "eth1", "mac": "02:00:00:00:00:bb", "num_queues": 4}]
        assert "fake: add-net eth1 tap=- fds=2" in hv.console_tail()
        with pytest.raises(ClhApiError) as err:
            await hv.add_network_device(NetworkDevice(id="eth0", tap_name="tap9", mac="02:00:00:00:00:cc"))
        assert err.value.status == 409
        with pytest.raises(HypervisorError, match="bad MAC"):
            await hv.add_network_device(NetworkDevice(id="eth2", tap_name="tap2", mac="nope"))
        await hv.add_vcpus(2)
        assert (await hv.vm_info())["config"]["cpus"]["boot_vcpus"] == 3
        with pytest.raises(HypervisorError, match="cannot add 2 vCPUs"):
            await hv.add_vcpus(2)
        # Memory hot-add is QEMU-only for now (sizing reports it as a shortfall).
        assert not hv.supports_memory_hotplug
        with pytest.raises(HypervisorError, match="CloudHypervisor cannot hot-add memory"):
            await hv.add_memory(128)
    finally:
        await hv.stop_vm()


async def test_vmm_crash_is_reported_with_its_output(tmp_path: Path, fake_binary: Path,
                                                     boot_files: tuple[Path, Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLH_FAKE_EXIT_ON", "vm.boot")
    hv = CloudHypervisor("vm", make_config(fake_binary, boot_files), make_paths(tmp_path / "vm"))
    with pytest.raises(VmExited) as err:
        await hv.start_vm()
    assert "injected crash on vm.boot" in str(err.value)
    assert "exited (status 3)" in str(err.value)
    assert_cleaned(hv)


async def test_kill9_is_noticed(tmp_path: Path, fake_binary: Path, boot_files: tuple[Path, Path],
                                caplog: pytest.LogCaptureFixture) -> None:
    hv = CloudHypervisor("vm", make_config(fake_binary, boot_files), make_paths(tmp_path / "vm"))
    await hv.start_vm()
    try:
        pid = hv.pid
        assert pid is not None
        with caplog.at_level(logging.WARNING, logger="shim.hypervisor.supervised"):
            os.kill(pid, signal.SIGKILL)
            assert await asyncio.wait_for(hv.wait_exit(), 5) == -signal.SIGKILL
        assert hv.exited.is_set()
        # The console log is deleted at teardown: its tail is logged when the exit happens.
        warnings = [r.getMessage() for r in caplog.records]
        assert any("exited unexpectedly (status -9)" in m and "fake guest booted" in m
                   for m in warnings), warnings
        with pytest.raises(VmExited):
            await hv.pause_vm()
    finally:
        await hv.stop_vm()
    assert_cleaned(hv)


async def test_a_stop_we_asked_for_is_not_reported_as_unexpected(
        tmp_path: Path, fake_binary: Path, boot_files: tuple[Path, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    hv = CloudHypervisor("vm", make_config(fake_binary, boot_files), make_paths(tmp_path / "vm"))
    await hv.start_vm()
    with caplog.at_level(logging.WARNING, logger="shim.hypervisor.supervised"):
        await hv.stop_vm()
    assert not [r for r in caplog.records if "unexpectedly" in r.getMessage()]
    assert_cleaned(hv)


async def test_launch_errors(tmp_path: Path, fake_binary: Path, boot_files: tuple[Path, Path]) -> None:
    missing = CloudHypervisor("a", make_config(Path("/nonexistent/cloud-hypervisor"), boot_files),
                              make_paths(tmp_path / "a"))
    with pytest.raises(HypervisorError, match="binary .* not found"):
        await missing.start_vm()
    tcg = CloudHypervisor("b", make_config(fake_binary, boot_files, accelerator=Accelerator.TCG),
                          make_paths(tmp_path / "b"))
    with pytest.raises(HypervisorError, match="needs KVM"):
        await tcg.start_vm()
    genid = CloudHypervisor("c", make_config(fake_binary, boot_files, vmgenid=True),
                            make_paths(tmp_path / "c"))
    with pytest.raises(HypervisorError, match="vmgenid"):
        await genid.start_vm()
    nokernel = CloudHypervisor("d", make_config(fake_binary, (tmp_path / "nope", boot_files[1])),
                               make_paths(tmp_path / "d"))
    with pytest.raises(HypervisorError, match="kernel .* does not exist"):
        await nokernel.start_vm()
    for hv in (missing, tcg, genid, nokernel):
        assert hv.pid is None


async def test_virtiofs_share_needs_shared_memory(tmp_path: Path, fake_binary: Path,
                                                  boot_files: tuple[Path, Path]) -> None:
    """CLH refuses virtio-fs on private memory: a limitation for clones."""
    memory = tmp_path / "memory"
    memory.write_bytes(b"")
    os.truncate(memory, 64 * MIB)
    sock = tmp_path / "virtiofsd.sock"
    shared = CloudHypervisor("s", make_config(fake_binary, boot_files, virtiofs_socket=sock,
                                              file_backed_memory=FileBackedMemoryConfig(memory, True)),
                             make_paths(tmp_path / "s"))
    await shared.start_vm()
    try:
        fs = (await shared.vm_info())["config"]["fs"]
        assert fs == [{"tag": "graftshare", "socket": str(sock), "num_queues": 1, "queue_size": 1024}]
    finally:
        await shared.stop_vm()
    private = CloudHypervisor("p", make_config(fake_binary, boot_files, virtiofs_socket=sock,
                                               file_backed_memory=FileBackedMemoryConfig(memory, False)),
                              make_paths(tmp_path / "p"))
    with pytest.raises(ClhApiError, match="requires shared memory"):
        await private.start_vm()
    assert_cleaned(private)


# -- the fake itself enforces the contract (so the tests above can fail) --------
async def test_fake_rejects_what_clh_rejects(tmp_path: Path, fake_binary: Path,
                                             boot_files: tuple[Path, Path]) -> None:
    sock = tmp_path / "api.sock"
    proc = await VmmProcess.spawn([str(fake_binary), "--api-socket", f"path={sock}"], name="fake",
                                  log_path=tmp_path / "fake.log")
    api = ClhApi(sock)
    try:
        for _ in range(500):
            if sock.exists():
                break
            await asyncio.sleep(0.01)
        good = {"payload": {"kernel": str(boot_files[0])}, "memory": {"size": 64 * MIB}}

        async def status_of(endpoint: str, body: dict | None = None, method: str = "PUT") -> int:
            try:
                await (api.get(endpoint) if method == "GET" else api.put(endpoint, body))
            except ClhApiError as exc:
                return exc.status
            return 204

        assert await status_of("vm.boot") == 404  # no VM yet
        assert await status_of("vm.nosuch") == 404
        assert await status_of("vm.create", method="GET") == 405
        assert await status_of("vm.create", {"memory": {"size": 1}}) == 400  # payload missing
        assert await status_of("vm.create", {**good, "cpu": {}}) == 400  # unknown field
        assert await status_of("vm.create", {**good, "vsock": {"cid": "3", "socket": "/x"}}) == 400
        assert await status_of("vm.create", {**good, "serial": {"mode": "Bogus"}}) == 400
        assert await status_of("vm.create", {**good, "memory": {
            "size": 64 * MIB, "zones": [{"id": "z", "size": 64 * MIB}]}}) == 400  # size must be 0
        assert await status_of("vm.create", good) == 204
        assert await status_of("vm.snapshot", {"destination_url": f"file://{tmp_path}"}) == 405
        assert await status_of("vm.resume") == 405  # not paused
        assert await status_of("vm.boot") == 204
        assert await status_of("vm.restore", {"source_url": f"file://{tmp_path}"}) == 404  # not fresh
        assert await status_of("vm.pause") == 204
        assert await status_of("vm.snapshot", {"destination_url": "http://x"}) == 400
        assert await status_of("vm.snapshot", {"destination_url": f"file://{tmp_path}"}) == 204
        assert (tmp_path / "memory-ranges").read_bytes()  # anonymous RAM is copied
        assert await status_of("vmm.ping", method="GET") == 204
    finally:
        await proc.close()


# -- hybrid vsock helper against scripted peers ---------------------------------
async def _serve_once(path: Path, reply: bytes) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readline() == b"CONNECT 52\n"
        writer.write(reply)
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(handle, str(path))


@pytest.mark.parametrize("reply,match", [
    (b"", "closed before answering"),
    (b"NOPE\n", "unexpected CONNECT reply"),
    (b"OK x\n", "unexpected CONNECT reply"),
])
async def test_hybrid_vsock_rejects_bad_answers(tmp_path: Path, reply: bytes, match: str) -> None:
    path = tmp_path / "v.sock"
    server = await _serve_once(path, reply)
    async with server:
        with pytest.raises(HybridVsockError, match=match):
            await connect_hybrid_vsock(path, 52)


async def test_hybrid_vsock_connects(tmp_path: Path) -> None:
    path = tmp_path / "v.sock"
    server = await _serve_once(path, b"OK 1073741825\nguest-data")
    async with server:
        reader, writer = await connect_hybrid_vsock(path, 52)
        assert await reader.read() == b"guest-data"
        writer.close()

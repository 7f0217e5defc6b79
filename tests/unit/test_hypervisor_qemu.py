"""QemuHypervisor behaviour that needs no running QEMU: input checks and
calls on a VM that is not running. (Real QEMU: tests/integration/test_qemu_vm.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from shim.hypervisor import (Accelerator, FileBackedMemoryConfig, HypervisorConfig,
                             HypervisorError, NetworkDevice, VmPaths)
from shim.hypervisor.qemu import QemuHypervisor


@pytest.fixture
def hv_factory(tmp_path: Path):
    kernel, initrd = tmp_path / "vmlinux", tmp_path / "initrd"
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    (tmp_path / "shared").mkdir()

    def make(**kw: object) -> QemuHypervisor:
        base: dict[str, object] = dict(kernel=kernel, initrd=initrd, accelerator=Accelerator.TCG)
        base.update(kw)
        return QemuHypervisor("vm", HypervisorConfig(**base),  # type: ignore[arg-type]
                              VmPaths(run_dir=tmp_path / "run", shared_dir=tmp_path / "shared"))
    return make


def no_files_left(hv: QemuHypervisor) -> bool:
    return not any(p.exists() for p in (hv.paths.control_socket, hv.paths.agent_socket,
                                         hv.paths.console_log, hv.process_log))


@pytest.mark.parametrize("kw,match", [
    (dict(kernel=Path("/nonexistent/vmlinux")), "kernel .* does not exist"),
    (dict(initrd=Path("/nonexistent/initrd")), "initrd .* does not exist"),
    (dict(file_backed_memory=FileBackedMemoryConfig(Path("/nonexistent/memory"), shared=False)),
     "private memory file"),
    (dict(file_backed_memory=FileBackedMemoryConfig(Path("/nonexistent/dir/memory"), shared=True)),
     "directory of memory file"),
    (dict(vcpus=3, max_vcpus=2), "invalid config: vcpus"),
    (dict(binary=Path("/nonexistent/qemu")), "not found"),
])
async def test_start_rejects_bad_input_and_leaves_nothing(hv_factory, kw, match) -> None:
    hv = hv_factory(**kw)
    with pytest.raises(HypervisorError, match=match):
        await hv.start_vm()
    assert hv.pid is None and no_files_left(hv)


async def test_missing_shared_dir(hv_factory, tmp_path: Path) -> None:
    hv = hv_factory()
    (tmp_path / "shared").rmdir()
    with pytest.raises(HypervisorError, match="shared dir"):
        await hv.start_vm()


async def test_calls_on_a_vm_that_never_ran(hv_factory) -> None:
    hv = hv_factory()
    assert hv.pid is None
    for call in (hv.pause_vm(), hv.resume_vm(), hv.version(), hv.add_vcpus(1),
                 hv.save_vm(Path("/tmp/x"))):
        with pytest.raises(HypervisorError, match="not running"):
            await call
    with pytest.raises(HypervisorError, match="not started"):
        await hv.wait_exit()
    await hv.stop_vm()  # no-op, twice
    await hv.stop_vm()


async def test_one_vmm_per_object(hv_factory) -> None:
    hv = hv_factory(binary=Path("/nonexistent/qemu"))
    with pytest.raises(HypervisorError, match="not found"):
        await hv.start_vm()
    with pytest.raises(HypervisorError, match="already launched"):
        await hv.start_vm()


@pytest.mark.parametrize("device,match", [
    (NetworkDevice(id="bad id", tap_name="tap0", mac="02:00:00:00:00:01"), "network device id"),
    (NetworkDevice(id="eth0", tap_name="tap0", mac="02:00:00:00:00"), "bad MAC"),
    (NetworkDevice(id="eth0", tap_name="a-name-longer-than-15", mac="02:00:00:00:00:01"), "bad tap name"),
    (NetworkDevice(id="eth0", tap_name="", mac="02:00:00:00:00:01"), "bad tap name"),
    (NetworkDevice(id="eth0", tap_name="", mac="02:00:00:00:00:01", tap_fds=(-1,)), "negative"),
])
async def test_network_device_validation(hv_factory, device: NetworkDevice, match: str) -> None:
    with pytest.raises(HypervisorError, match=match):
        await hv_factory().add_network_device(device)


async def test_stale_socket_is_replaced_but_other_files_are_not_deleted(hv_factory) -> None:
    hv = hv_factory(binary=Path("/nonexistent/qemu"))
    hv.paths.run_dir.mkdir()
    hv.paths.control_socket.write_text("not a socket")
    with pytest.raises(HypervisorError, match="not a socket"):
        await hv.start_vm()
    assert hv.paths.control_socket.read_text() == "not a socket"


@pytest.mark.parametrize("kw,mib,match", [
    (dict(), 128, "no memory slots"),
    (dict(memory_slots=2, max_memory_mib=1024), 0, "must be >= 1 MiB"),
    (dict(memory_slots=2, max_memory_mib=1024), 128, "not running"),
])
async def test_add_memory_checks(hv_factory, kw, mib, match) -> None:
    hv = hv_factory(**kw)
    assert hv.supports_memory_hotplug
    with pytest.raises(HypervisorError, match=match):
        await hv.add_memory(mib)

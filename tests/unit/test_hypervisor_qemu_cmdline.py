"""The QEMU command line built from a HypervisorConfig (no QEMU run here;
tests/integration/test_qemu_vm.py boots it for real)."""
from __future__ import annotations

from pathlib import Path

import pytest

from shim.hypervisor import (Accelerator, FAST_BOOT_KERNEL_PARAMS, FileBackedMemoryConfig,
                             HypervisorConfig, VmPaths)
from shim.hypervisor.kernel_params import guest_cmdline
from shim.hypervisor.qemu_cmdline import LaunchSpec, build_argv, root_port_ids

PATHS = VmPaths(run_dir=Path("/run/graft/vm1"), shared_dir=Path("/run/graft/vm1/shared"))


def config(**kw: object) -> HypervisorConfig:
    base = dict(kernel=Path("/g/vmlinux"), initrd=Path("/g/initrd.img"),
                kernel_params=FAST_BOOT_KERNEL_PARAMS, vcpus=1, max_vcpus=4, memory_mib=256)
    base.update(kw)
    return HypervisorConfig(**base)  # type: ignore[arg-type]


def spec(**kw: object) -> LaunchSpec:
    base: dict[str, object] = dict(accelerator=Accelerator.TCG, control_fd=7, agent_fd=8,
                                   qboot=Path(__file__))  # any existing file stands in for qboot.rom
    base.update(kw)
    return LaunchSpec(**base)  # type: ignore[arg-type]


def values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_cold_boot_command_line() -> None:
    argv = build_argv(config(), PATHS, spec())
    assert argv[0] == "qemu-system-x86_64"
    assert values(argv, "-M") == ["q35,accel=tcg,memory-backend=mem,vmport=off,sata=off,smbus=off"]
    for flag in ("-nodefaults", "-no-user-config", "-no-reboot"):
        assert flag in argv
    assert values(argv, "-display") == ["none"]
    assert values(argv, "-bios") == [str(Path(__file__))]
    assert values(argv, "-smp") == ["1,maxcpus=4"]
    assert values(argv, "-kernel") == ["/g/vmlinux"] and values(argv, "-initrd") == ["/g/initrd.img"]
    assert "memory-backend-ram,id=mem,size=256M" in values(argv, "-object")
    chardevs = values(argv, "-chardev")
    assert "file,id=console,path=/run/graft/vm1/console.log" in chardevs
    assert "socket,id=qmp,fd=7,server=on,wait=off" in chardevs
    assert "socket,id=agent,fd=8,server=on,wait=off" in chardevs
    assert values(argv, "-mon") == ["chardev=qmp,mode=control"]
    devices = values(argv, "-device")
    assert "virtserialport,bus=vser0.0,chardev=agent,name=graft.agent" in devices
    assert "virtio-9p-pci,fsdev=fs0,mount_tag=graftshare" in devices
    assert values(argv, "-fsdev") == [
        "local,id=fs0,path=/run/graft/vm1/shared,security_model=none,multidevs=remap"]
    assert "virtio-rng-pci,rng=rng0" in devices
    assert [d for d in devices if d.startswith("pcie-root-port")] == [
        "pcie-root-port,id=rp0,bus=pcie.0,chassis=1", "pcie-root-port,id=rp1,bus=pcie.0,chassis=2"]
    assert not any(d.startswith("vmgenid") for d in devices)
    assert "-incoming" not in argv and "-S" not in argv and "-cpu" not in argv
    append = values(argv, "-append")[0]
    assert append.startswith("console=ttyS0 ") and append.endswith(" graft.agent_port=graft.agent")


def test_memory_slots_for_hot_add() -> None:
    assert values(build_argv(config(), PATHS, spec()), "-m") == ["256M"]  # no slots by default
    cfg = config(memory_slots=2, max_memory_mib=2048)
    argv = build_argv(cfg, PATHS, spec())
    assert values(argv, "-m") == ["256M,slots=2,maxmem=2048M"]
    # the boot RAM is still the machine's backend, of the boot size
    assert "memory-backend-ram,id=mem,size=256M" in values(argv, "-object")
    fbm = FileBackedMemoryConfig(Path("/tpl/memory"), shared=False)
    argv = build_argv(config(memory_slots=2, max_memory_mib=2048, file_backed_memory=fbm),
                      PATHS, spec(incoming=True))
    assert values(argv, "-m") == ["256M,slots=2,maxmem=2048M"]
    assert "memory-backend-file,id=mem,size=256M,mem-path=/tpl/memory,share=off" in \
        values(argv, "-object")


def test_vmgenid_drops_qboot() -> None:
    argv = build_argv(config(vmgenid=True), PATHS, spec())
    assert "-bios" not in argv  # vmgenid + qboot hangs: SeaBIOS
    assert "vmgenid,guid=auto" in values(argv, "-device")


def test_missing_qboot_falls_back_to_seabios() -> None:
    assert "-bios" not in build_argv(config(), PATHS, spec(qboot=Path("/nonexistent/qboot.rom")))
    assert "-bios" not in build_argv(config(), PATHS, spec(qboot=None))


@pytest.mark.parametrize("shared,share", [(True, "on"), (False, "off")])
def test_file_backed_memory(shared: bool, share: str) -> None:
    cfg = config(file_backed_memory=FileBackedMemoryConfig(Path("/tpl/memory"), shared=shared))
    objects = values(build_argv(cfg, PATHS, spec()), "-object")
    assert f"memory-backend-file,id=mem,size=256M,mem-path=/tpl/memory,share={share}" in objects
    assert not any(o.startswith("memory-backend-ram") for o in objects)


def test_incoming_restore_waits_paused() -> None:
    argv = build_argv(config(), PATHS, spec(incoming=True))
    assert argv[argv.index("-incoming") + 1] == "defer"
    assert "-S" in argv


def test_template_and_clone_differ_only_in_backend_paths() -> None:
    """Device order/ids must match for migration; only paths and sharing differ."""
    tpl = build_argv(config(file_backed_memory=FileBackedMemoryConfig(Path("/t/memory"), True)),
                     PATHS, spec())
    other = VmPaths(run_dir=Path("/run/graft/vm2"), shared_dir=Path("/run/graft/vm2/shared"))
    clone = build_argv(config(file_backed_memory=FileBackedMemoryConfig(Path("/t/memory"), False)),
                       other, spec(incoming=True))
    clone = clone[:clone.index("-S")]
    assert len(tpl) == len(clone)
    diff = [(a, b) for a, b in zip(tpl, clone) if a != b]
    assert all("vm1" in a and "vm2" in b or "share=on" in a for a, b in diff), diff


def test_kvm_uses_host_cpu() -> None:
    argv = build_argv(config(), PATHS, spec(accelerator=Accelerator.KVM))
    assert values(argv, "-M")[0].startswith("q35,accel=kvm,")
    assert values(argv, "-cpu") == ["host"]


def test_commas_in_paths_are_escaped() -> None:
    paths = VmPaths(run_dir=Path("/run/a,b"), shared_dir=Path("/s,x"))
    argv = build_argv(config(), paths, spec())
    assert "file,id=console,path=/run/a,,b/console.log" in values(argv, "-chardev")
    assert values(argv, "-fsdev")[0].startswith("local,id=fs0,path=/s,,x,")


def test_extra_args_and_binary() -> None:
    argv = build_argv(config(binary=Path("/opt/qemu"), extra_args=("-trace", "virtio*")), PATHS, spec())
    assert argv[0] == "/opt/qemu" and argv[-2:] == ["-trace", "virtio*"]


def test_root_port_ids() -> None:
    assert root_port_ids(3) == ["rp0", "rp1", "rp2"]
    assert root_port_ids(0) == []


@pytest.mark.parametrize("kw,match", [
    (dict(vcpus=5, max_vcpus=4), "vcpus"),
    (dict(vcpus=0), "vcpus"),
    (dict(memory_mib=16), "memory_mib"),
    (dict(agent_port_name="a,b"), "agent_port_name"),
    (dict(share_mount_tag="x" * 40), "share_mount_tag"),
    (dict(hotplug_root_ports=-1), "hotplug_root_ports"),
    (dict(memory_slots=2, max_memory_mib=256), "max_memory_mib=256 must be larger"),
    (dict(memory_slots=2), "max_memory_mib=0 must be larger"),
    (dict(memory_slots=257, max_memory_mib=4096), "memory_slots"),
    (dict(memory_slots=-1), "memory_slots"),
    (dict(kernel_params=("a b",)), "whitespace"),
])
def test_bad_config_is_rejected(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_argv(config(**kw), PATHS, spec())


def test_auto_accelerator_must_be_resolved() -> None:
    with pytest.raises(ValueError, match="resolved"):
        build_argv(config(), PATHS, spec(accelerator=Accelerator.AUTO))


def test_guest_cmdline() -> None:
    assert guest_cmdline(["quiet"], "p") == "console=ttyS0 quiet graft.agent_port=p"
    assert guest_cmdline(["console=hvc0", "graft.agent_port=old"], "new") == \
        "console=hvc0 graft.agent_port=new"


def test_a_clone_can_open_its_memory_read_only_where_qemu_supports_it() -> None:
    ro = config(file_backed_memory=FileBackedMemoryConfig(Path("/tpl/memory"), shared=False,
                                                          readonly=True))
    assert ("memory-backend-file,id=mem,size=256M,mem-path=/tpl/memory,share=off,"
            "readonly=on,rom=off") in values(build_argv(ro, PATHS, spec()), "-object")
    with pytest.raises(ValueError):
        build_argv(config(file_backed_memory=FileBackedMemoryConfig(
            Path("/tpl/memory"), shared=True, readonly=True)), PATHS, spec())

"""Template build, validation against its own metadata, rebuild and destroy,
with a fake hypervisor (this layer only: the VMM is faked, files are real).
The real-QEMU path is tested in tests/integration/test_template_*.py."""
from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest

from shim.config import GraftConfig, parse_config
from shim.factory import build as build_mod, tmpfs
from shim.factory.build import FactoryBusy, destroy_template, factory_lock, init_template
from shim.factory.cli import run_factory
from shim.factory.template import (TemplateUnusable, find_usable_template, inspect_template)
from shim.hypervisor.base import Hypervisor, HypervisorError, NetworkDevice

MIB = 1 << 20


class FakeVmm(Hypervisor):
    """Writes what a real VMM's save would write, records the calls."""

    instances: list["FakeVmm"] = []
    fail_in: str | None = None
    kind = "qemu"

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.calls: list[str] = []
        FakeVmm.instances.append(self)

    def _step(self, name: str) -> None:
        self.calls.append(name)
        if FakeVmm.fail_in == name:
            raise HypervisorError(f"injected failure in {name}")

    async def start_vm(self, timeout: float = 30.0) -> None:
        self._step("start")
        fbm = self.config.file_backed_memory
        assert fbm is not None and fbm.shared
        with open(fbm.path, "r+b") as f:  # the guest writes its RAM into the shared file
            f.write(b"guest-ram")

    async def stop_vm(self) -> None:
        self.calls.append("stop")

    async def pause_vm(self) -> None:
        self._step("pause")

    async def resume_vm(self) -> None:
        self._step("resume")

    async def save_vm(self, directory: Path) -> None:
        self._step("save")
        if FakeVmm.kind == "clh":
            fbm = self.config.file_backed_memory
            (directory / "config.json").write_text(json.dumps({"memory": {
                "size": 0, "shared": True,
                "zones": [{"id": "mem0", "file": str(fbm.path), "shared": True}]}}))
            (directory / "state.json").write_text("{}")
            (directory / "memory-ranges").write_bytes(b"\0" * 16)
        else:
            (directory / "state").write_bytes(b"device-state" * 100)

    async def restore_vm(self, directory: Path, timeout: float = 30.0) -> None:
        self._step("restore")

    async def add_network_device(self, device: NetworkDevice) -> None:
        raise NotImplementedError

    async def wait_exit(self) -> int:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return None

    async def version(self) -> str:
        return "FakeVMM 1.0"


class FakeAgent:
    def __init__(self, vm: FakeVmm) -> None:
        self.vm = vm

    async def close(self) -> None:
        self.vm.calls.append("agent-close")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    FakeVmm.instances.clear()
    FakeVmm.fail_in = None
    FakeVmm.kind = "qemu"
    guest = tmp_path / "guest"
    guest.mkdir()
    (guest / "vmlinux").write_bytes(b"kernel-v1")
    (guest / "initrd.img").write_bytes(b"initrd-v1")
    vmm = tmp_path / "fake-vmm"
    vmm.write_bytes(b"#!/bin/true\nv1\n")
    vmm.chmod(0o755)
    monkeypatch.setattr(build_mod, "make_hypervisor",
                        lambda config, vm_id, hv, paths, netns: FakeVmm(vm_id, hv, paths, netns))

    async def fake_connect(config, vm, started):
        return FakeAgent(vm)
    monkeypatch.setattr(build_mod, "_connect", fake_connect)
    # The tmpfs needs root and is tested for real in the integration tests.
    monkeypatch.setattr(tmpfs, "mounted_fstype", lambda path: "tmpfs")
    monkeypatch.setattr(tmpfs, "used_bytes", lambda path: 0)
    monkeypatch.setattr(tmpfs, "size_bytes", lambda path: 1 << 40)
    monkeypatch.setattr(tmpfs, "unmount_tmpfs", lambda path: False)
    return tmp_path


def make_config(world: Path, **hypervisor) -> GraftConfig:
    return parse_config({
        "runtime": {"state_dir": str(world / "state")},
        "guest": {"image_dir": str(world / "guest")},
        "hypervisor": {"binary": str(world / "fake-vmm"), "accelerator": "tcg",
                       "memory_mib": 64, **hypervisor},
        "factory": {"template_path": str(world / "tpl"), "enable_template": True},
    })


def problems(config: GraftConfig) -> str:
    return "; ".join(inspect_template(config).problems)


async def test_init_builds_a_complete_private_template(world: Path) -> None:
    config = make_config(world)
    (world / "tpl").mkdir()
    result = await init_template(config)
    assert result.built
    vm = FakeVmm.instances[0]
    # The agent session stays open until the VM is gone (see build.py).
    assert vm.calls == ["start", "pause", "save", "stop", "agent-close"]
    directory = result.template.directory
    assert (world / "tpl" / "current").resolve() == directory.resolve()
    assert vm.config.file_backed_memory.path == directory / "memory"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in ("memory", "state", "metadata.json"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    assert (directory / "memory").stat().st_size == 64 * MIB
    meta = json.loads((directory / "metadata.json").read_text())
    assert meta["hypervisor"]["kind"] == "qemu"
    assert meta["hypervisor"]["version"] == "FakeVMM 1.0"
    assert meta["memory_bytes"] == 64 * MIB
    assert meta["identity"]["memory_mib"] == 64
    assert [f["name"] for f in meta["files"]] == ["state"]
    template = find_usable_template(config)
    assert template.directory == directory
    assert template.memory_file == directory / "memory"
    assert not (world / "state" / "factory").exists() or \
        not list((world / "state" / "factory").iterdir())  # build run dir removed


async def test_init_twice_keeps_the_valid_template(world: Path) -> None:
    config = make_config(world)
    first = await init_template(config)
    second = await init_template(config)
    assert not second.built
    assert second.template.directory == first.template.directory
    assert len(FakeVmm.instances) == 1


@pytest.mark.parametrize("step, calls", [
    ("start", ["start", "stop"]),
    ("pause", ["start", "pause", "stop", "agent-close"]),
    ("save", ["start", "pause", "save", "stop", "agent-close"]),
])
async def test_failed_build_stops_the_vm_and_leaves_no_template(world: Path, step: str,
                                                                calls: list[str]) -> None:
    config = make_config(world)
    FakeVmm.fail_in = step
    with pytest.raises(HypervisorError, match=step):
        await init_template(config)
    assert FakeVmm.instances[0].calls == calls
    # Only the digest cache may stay; no template directory, no `current`.
    assert {p.name for p in (world / "tpl").iterdir()} <= {"digests.json"}
    with pytest.raises(TemplateUnusable, match="no template"):
        find_usable_template(config)


async def test_failed_rebuild_keeps_the_previous_template_in_place(world: Path) -> None:
    config = make_config(world)
    first = await init_template(config)
    (world / "guest" / "vmlinux").write_bytes(b"kernel-v2")
    FakeVmm.fail_in = "save"
    with pytest.raises(HypervisorError):
        await init_template(config)
    # Still the old (now unusable) one: never a half-written template.
    assert (world / "tpl" / "current").resolve() == first.template.directory.resolve()
    assert [p.name for p in (world / "tpl").glob("tpl-*")] == [first.template.directory.name]


async def test_missing_template(world: Path) -> None:
    with pytest.raises(TemplateUnusable, match=r"no template at .*graft factory init"):
        find_usable_template(make_config(world))


@pytest.mark.parametrize("change, expected", [
    ({"memory_mib": 128}, "config mismatch: memory_mib (template 64, now 128)"),
    ({"vcpus": 2, "kernel_params": "foo=1"},
     "config mismatch: kernel_params"),
    ({"accelerator": "kvm"}, "accelerator mismatch (template tcg, now kvm)"),
    ({"kind": "clh"}, "hypervisor kind mismatch (template built with qemu, config says clh)"),
])
async def test_config_mismatch_names_the_fields(world: Path, change: dict, expected: str) -> None:
    await init_template(make_config(world))
    reason = problems(make_config(world, **change))
    assert expected in reason
    if "vcpus" in change:
        assert "vcpus (template 1, now 2)" in reason


async def test_changed_kernel_initrd_and_vmm_are_detected(world: Path) -> None:
    config = make_config(world)
    await init_template(config)
    (world / "guest" / "vmlinux").write_bytes(b"kernel-v2")
    assert "guest kernel changed since the template was built" in problems(config)
    (world / "guest" / "vmlinux").write_bytes(b"kernel-v1")  # same content again: fine
    assert problems(config) == ""
    (world / "guest" / "initrd.img").write_bytes(b"initrd-v2")
    assert "guest initrd changed" in problems(config)
    (world / "guest" / "initrd.img").write_bytes(b"initrd-v1")
    (world / "fake-vmm").write_bytes(b"#!/bin/true\nv2\n")
    assert "hypervisor version changed: template built with FakeVMM 1.0" in problems(config)


async def test_edited_metadata_digest_means_another_kernel(world: Path) -> None:
    config = make_config(world)
    directory = (await init_template(config)).template.directory
    meta = json.loads((directory / "metadata.json").read_text())
    meta["kernel_sha256"] = "0" * 64
    (directory / "metadata.json").write_text(json.dumps(meta))
    assert "guest kernel changed" in problems(config)


async def test_tampered_identity_is_corrupt_metadata(world: Path) -> None:
    config = make_config(world)
    directory = (await init_template(config)).template.directory
    meta = json.loads((directory / "metadata.json").read_text())
    meta["identity"]["memory_mib"] = 999
    (directory / "metadata.json").write_text(json.dumps(meta))
    assert "identity hash does not match" in problems(config)


@pytest.mark.parametrize("damage, expected", [
    (lambda d: (d / "state").unlink(), "state file state missing"),
    (lambda d: (d / "state").write_bytes(b""), "state file state empty"),
    (lambda d: (d / "state").write_bytes(b"short"), "state file state is 5 bytes"),
    (lambda d: (d / "state").write_bytes(b"X" * 1200), "state file state corrupt"),
    (lambda d: (d / "memory").unlink(), "memory file memory missing"),
    (lambda d: os.truncate(d / "memory", MIB), f"memory file memory is {MIB} bytes, expected"),
    (lambda d: (d / "metadata.json").unlink(), "incomplete (no metadata.json)"),
    (lambda d: (d / "metadata.json").write_text("{"), "corrupt metadata: not JSON"),
])
async def test_damaged_template_files(world: Path, damage, expected: str) -> None:
    config = make_config(world)
    directory = (await init_template(config)).template.directory
    damage(directory)
    with pytest.raises(TemplateUnusable) as why:
        find_usable_template(config)
    assert expected in str(why.value)


async def test_rebuild_never_touches_memory_a_clone_maps(world: Path) -> None:
    config = make_config(world)
    old = (await init_template(config)).template
    with open(old.memory_file, "rb") as clone_view:  # stands for a clone's private mapping
        before = clone_view.read(64)
        changed = make_config(world, memory_mib=65)
        result = await init_template(changed)
        assert result.built and result.replaced
        assert "memory_mib" in result.replaced[0]
        clone_view.seek(0)
        assert clone_view.read(64) == before
    assert not old.directory.exists()  # old generation removed, new one current
    assert find_usable_template(changed).directory == result.template.directory


async def test_clh_snapshot_is_patched_private(world: Path) -> None:
    FakeVmm.kind = "clh"
    config = make_config(world, kind="clh")
    directory = (await init_template(config)).template.directory
    snapshot = json.loads((directory / "config.json").read_text())
    assert snapshot["memory"]["shared"] is False
    assert [z["shared"] for z in snapshot["memory"]["zones"]] == [False]
    meta = json.loads((directory / "metadata.json").read_text())
    assert sorted(f["name"] for f in meta["files"]) == ["config.json", "memory-ranges",
                                                        "state.json"]
    assert find_usable_template(config).directory == directory


async def test_destroy_is_safe_twice(world: Path) -> None:
    config = make_config(world)
    await init_template(config)
    done = destroy_template(config)
    assert any("removed" in line for line in done)
    assert not (world / "tpl").exists()
    assert destroy_template(config) == []
    with pytest.raises(TemplateUnusable, match="no template"):
        find_usable_template(config)


async def test_concurrent_factory_commands_are_refused(world: Path) -> None:
    config = make_config(world)
    with factory_lock(config):
        with pytest.raises(FactoryBusy):
            await init_template(config)


async def test_cli_status_exit_codes_and_reasons(world: Path) -> None:
    config = make_config(world)
    out = io.StringIO()
    assert run_factory(config, "status", out) == 1
    assert "NOT usable" in out.getvalue() and "no template" in out.getvalue()
    await init_template(config)
    out = io.StringIO()
    assert run_factory(config, "status", out) == 0
    assert "template: usable" in out.getvalue()
    assert "FakeVMM 1.0" in out.getvalue()
    out = io.StringIO()
    assert run_factory(make_config(world, memory_mib=128), "status", out) == 1
    assert "why not usable: config mismatch: memory_mib (template 64, now 128)" \
        in out.getvalue()
    with pytest.raises(ValueError, match="unknown factory action"):
        run_factory(config, "explode", io.StringIO())

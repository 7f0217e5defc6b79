"""`graft factory init` on its Cloud Hypervisor path, against the CLH
CONTRACT FAKE (tests/unit/clh_fake.py; no CLH binary is installable here):
the real CloudHypervisor driver creates, boots, pauses and snapshots through
the fake's schema-checked REST API; the factory patches the snapshot's memory
private and records it; a clone driver restores from the result. No VM runs,
so the agent health check is replaced by opening the hybrid-vsock agent
stream (the fake answers CONNECT but is no ttrpc agent)."""
from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from shim.config import GraftConfig, parse_config
from shim.factory import build as build_mod, tmpfs
from shim.factory.boot import make_hypervisor
from shim.factory.build import destroy_template, init_template
from shim.factory.template import find_usable_template
from shim.hypervisor.base import FileBackedMemoryConfig, VmPaths
from shim.hypervisor.clh import CloudHypervisor
from shim.vmconfig.hypervisor_config import hypervisor_config

FAKE = Path(__file__).with_name("clh_fake.py")
MIB = 1 << 20


class StreamOnlyAgent:
    def __init__(self, writer) -> None:
        self.writer = writer

    async def close(self) -> None:
        self.writer.close()


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> GraftConfig:
    binary = tmp_path / "cloud-hypervisor"
    binary.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE} "$@"\n')
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    guest = tmp_path / "guest"
    guest.mkdir()
    (guest / "vmlinux").write_bytes(b"\x7fELF fake kernel")
    (guest / "initrd.img").write_bytes(b"070701 fake initrd")

    async def open_agent_stream(config, vm, started):
        _, writer = await vm.open_agent_stream()  # hybrid vsock CONNECT → OK
        return StreamOnlyAgent(writer)
    monkeypatch.setattr(build_mod, "_connect", open_agent_stream)
    # The tmpfs needs root; it is exercised for real by the QEMU integration tests.
    monkeypatch.setattr(tmpfs, "mounted_fstype", lambda path: "tmpfs")
    monkeypatch.setattr(tmpfs, "used_bytes", lambda path: 0)
    monkeypatch.setattr(tmpfs, "size_bytes", lambda path: 1 << 40)
    monkeypatch.setattr(tmpfs, "unmount_tmpfs", lambda path: False)
    return parse_config({
        "hypervisor": {"kind": "clh", "binary": str(binary), "accelerator": "kvm",
                       "memory_mib": 64},
        "runtime": {"state_dir": str(tmp_path / "s")},
        "guest": {"image_dir": str(guest)},
        "factory": {"enable_template": True, "template_path": str(tmp_path / "tpl")},
    })


async def test_clh_template_is_patched_private_and_restorable(config: GraftConfig,
                                                             tmp_path: Path) -> None:
    result = await init_template(config)
    directory = result.template.directory
    snapshot = json.loads((directory / "config.json").read_text())
    memory = snapshot["memory"]
    # The template VM ran with its RAM shared into the file...
    assert memory["size"] == 0 and len(memory["zones"]) == 1
    assert memory["zones"][0]["file"] == str(directory / "memory")
    # ...and the factory turned the snapshot private for clones.
    assert memory["shared"] is False and memory["zones"][0]["shared"] is False
    meta = result.template.metadata
    assert meta.hypervisor.kind == "clh"
    assert meta.hypervisor.version == "Cloud Hypervisor v0.0.0-fake"
    assert sorted(f.name for f in meta.files) == ["config.json", "memory-ranges", "state.json"]
    assert (directory / "memory").stat().st_size == 64 * MIB
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert not list((tmp_path / "s" / "factory").iterdir())  # template VM gone, files removed

    template = find_usable_template(config)
    hv = hypervisor_config(config, FileBackedMemoryConfig(template.memory_file, shared=False))
    run = tmp_path / "clone"
    (run / "shared").mkdir(parents=True)
    clone = make_hypervisor(config, "clone1", hv, VmPaths(run / "run", run / "shared"), None)
    assert isinstance(clone, CloudHypervisor)
    await clone.restore_vm(template.directory)
    try:
        info = await clone.vm_info()
        assert info["state"] == "Paused"
        assert info["config"]["memory"]["zones"][0]["shared"] is False
        await clone.resume_vm()
    finally:
        await clone.stop_vm()
    destroy_template(config)
    assert not (tmp_path / "tpl").exists()

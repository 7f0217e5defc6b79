"""CLH VmConfig payloads and the snapshot config rewrite for restores."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from shim.hypervisor import FileBackedMemoryConfig, HypervisorConfig, HypervisorError, VmPaths
from shim.hypervisor.clh_api import encode_request
from shim.hypervisor.clh_config import snapshot_config_for_restore, vm_config

MIB = 1024 * 1024
TPL = VmPaths(run_dir=Path("/run/t"), shared_dir=Path("/run/t/shared"))
CLONE = VmPaths(run_dir=Path("/run/c"), shared_dir=Path("/run/c/shared"))


def cfg(**kw: object) -> HypervisorConfig:
    base: dict[str, object] = dict(kernel=Path("/k"), initrd=Path("/i"), memory_mib=256)
    base.update(kw)
    return HypervisorConfig(**base)  # type: ignore[arg-type]


def test_file_backed_memory_is_one_zone() -> None:
    payload = vm_config(cfg(file_backed_memory=FileBackedMemoryConfig(Path("/tpl/memory"), True)), TPL)
    assert payload["memory"] == {"size": 0, "shared": True, "zones": [
        {"id": "mem0", "size": 256 * MIB, "file": "/tpl/memory", "shared": True}]}
    assert payload["console"] == {"mode": "Off"} and payload["rng"] == {"src": "/dev/urandom"}


def test_snapshot_rewrite_for_a_private_clone() -> None:
    tpl_cfg = cfg(file_backed_memory=FileBackedMemoryConfig(Path("/tpl/memory"), True),
                  virtiofs_socket=Path("/run/t/fs.sock"))
    saved = vm_config(tpl_cfg, TPL)
    original = json.dumps(saved, sort_keys=True)
    clone_cfg = cfg(file_backed_memory=FileBackedMemoryConfig(Path("/tpl/memory"), False),
                    virtiofs_socket=Path("/run/c/fs.sock"))
    restored = snapshot_config_for_restore(saved, clone_cfg, CLONE)
    assert json.dumps(saved, sort_keys=True) == original  # input not mutated
    assert restored["memory"]["shared"] is False
    assert restored["memory"]["zones"][0] == {"id": "mem0", "size": 256 * MIB,
                                              "file": "/tpl/memory", "shared": False}
    assert restored["vsock"]["socket"] == "/run/c/agent.sock"
    assert restored["serial"]["file"] == "/run/c/console.log"
    assert restored["fs"][0]["socket"] == "/run/c/fs.sock"
    assert restored["payload"] == saved["payload"]


@pytest.mark.parametrize("clone_kw,match", [
    (dict(memory_mib=512), "RAM"),
    (dict(max_vcpus=8), "max_vcpus"),
    (dict(file_backed_memory=None), "config has none"),
    (dict(virtiofs_socket=None), "virtio-fs"),
])
def test_snapshot_rewrite_rejects_mismatches(clone_kw: dict[str, object], match: str) -> None:
    saved = vm_config(cfg(file_backed_memory=FileBackedMemoryConfig(Path("/m"), True),
                          virtiofs_socket=Path("/fs")), TPL)
    base: dict[str, object] = dict(file_backed_memory=FileBackedMemoryConfig(Path("/m"), False),
                                   virtiofs_socket=Path("/fs2"))
    base.update(clone_kw)
    with pytest.raises(HypervisorError, match=match):
        snapshot_config_for_restore(saved, cfg(**base), CLONE)


def test_unsupported_config() -> None:
    with pytest.raises(HypervisorError, match="vmgenid"):
        vm_config(cfg(vmgenid=True), TPL)
    with pytest.raises(HypervisorError, match="vcpus"):
        vm_config(cfg(vcpus=5, max_vcpus=4), TPL)


def test_request_encoding() -> None:
    raw = encode_request("PUT", "vm.boot", None)
    assert raw == b"PUT /api/v1/vm.boot HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n" \
                  b"Content-Length: 0\r\n\r\n"
    raw = encode_request("PUT", "vm.pause", b"{}")
    assert raw.endswith(b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
    with pytest.raises(ValueError):
        encode_request("GET", "../etc", None)

"""metadata.json round trip and rejection of damaged files."""
from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from shim.factory.metadata import (HypervisorRecord, MetadataError, SavedFile, TemplateMetadata,
                                   identity_sha256, read_metadata, write_metadata)

IDENTITY = {"vcpus": 1, "memory_mib": 256, "kernel_params": ["console=ttyS0"]}


def sample() -> TemplateMetadata:
    return TemplateMetadata(
        hypervisor=HypervisorRecord("qemu", "QEMU 7.2.0", "/usr/bin/qemu", "ab" * 32),
        accelerator="tcg", identity=IDENTITY, identity_sha256=identity_sha256(IDENTITY),
        memory_bytes=256 << 20, kernel_sha256="11" * 32, initrd_sha256="22" * 32,
        files=(SavedFile("state", 1234, "33" * 32),), created_at=1700000000.5)


def test_round_trip_and_permissions(tmp_path: Path) -> None:
    write_metadata(tmp_path, sample())
    path = tmp_path / "metadata.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_metadata(tmp_path) == sample()
    assert json.loads(path.read_text())["created"] == "2023-11-14T22:13:20Z"
    assert not list(tmp_path.glob(".*"))  # no temp file left behind


def test_identity_hash_ignores_key_order() -> None:
    assert identity_sha256({"a": 1, "b": [2]}) == identity_sha256({"b": [2], "a": 1})
    assert identity_sha256({"a": 1}) != identity_sha256({"a": 2})


def _mutated(change) -> str:
    data = json.loads(sample().to_json())
    change(data)
    return json.dumps(data)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("kernel_sha256"), "kernel_sha256 is missing"),
    (lambda d: d["hypervisor"].pop("version"), "hypervisor.version is missing"),
    (lambda d: d.update(memory_bytes="256M"), "memory_bytes has the wrong type"),
    (lambda d: d.update(memory_bytes=True), "memory_bytes has the wrong type"),
    (lambda d: d.update(format=99), "format 99"),
    (lambda d: d["files"][0].update(name="../etc/passwd"), "not a plain file name"),
    (lambda d: d.update(memory_file="/dev/mem"), "not a plain file name"),
    (lambda d: d.update(files=["state"]), "files[0] is not an object"),
    (lambda d: d.update(identity=[]), "identity has the wrong type"),
])
def test_damaged_metadata_is_rejected_with_the_field_named(change, message) -> None:
    with pytest.raises(MetadataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TemplateMetadata.from_json(_mutated(change))


@pytest.mark.parametrize("text", ["", "{", "[]", "null", "\"x\""])
def test_non_object_json_is_rejected(text: str) -> None:
    with pytest.raises(MetadataError):
        TemplateMetadata.from_json(text)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_metadata(tmp_path)


def test_binary_garbage_is_metadata_error(tmp_path: Path) -> None:
    (tmp_path / "metadata.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(MetadataError):
        read_metadata(tmp_path)

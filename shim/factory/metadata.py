"""metadata.json: what a template was built from, stored beside it.

A template's saved state is only valid for the exact VM shape, guest
kernel/initrd and VMM it was made with; we record those at build time and
validate every restore against this record (not against the config file
alone, which may have changed since the build).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
MEMORY_FILE = "memory"


class MetadataError(ValueError):
    """metadata.json is missing a field, has a wrong type or is not JSON."""


def identity_sha256(identity: dict[str, Any]) -> str:
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class SavedFile:
    """One file the VMM's save produced (the memory file is not listed)."""

    name: str
    size: int
    sha256: str | None  # None: too large to re-hash on each validation


@dataclass(frozen=True)
class HypervisorRecord:
    kind: str
    version: str
    binary: str | None  # resolved path, None if it could not be resolved
    binary_sha256: str | None
    # The VMM maps a memory file opened read-only privately (QEMU >= 8.2: rom=off); then
    # clones never hold a writable fd of the template's memory.
    private_readonly_memory: bool = False


@dataclass(frozen=True)
class TemplateMetadata:
    hypervisor: HypervisorRecord
    accelerator: str
    identity: dict[str, Any]
    identity_sha256: str
    memory_bytes: int
    kernel_sha256: str
    initrd_sha256: str
    files: tuple[SavedFile, ...]
    created_at: float = field(default_factory=time.time)
    memory_file: str = MEMORY_FILE
    format: int = FORMAT_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["files"] = [asdict(f) for f in self.files]
        data["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created_at))
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "TemplateMetadata":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise MetadataError(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise MetadataError("not a JSON object")
        fmt = _field(data, "format", int)
        if fmt != FORMAT_VERSION:
            raise MetadataError(f"format {fmt} is not the supported {FORMAT_VERSION}")
        hv = _field(data, "hypervisor", dict)
        files = []
        for i, entry in enumerate(_field(data, "files", list)):
            if not isinstance(entry, dict):
                raise MetadataError(f"files[{i}] is not an object")
            name = _field(entry, "name", str, f"files[{i}].")
            if not name or "/" in name or name.startswith("."):
                raise MetadataError(f"files[{i}].name {name!r} is not a plain file name")
            files.append(SavedFile(name=name, size=_field(entry, "size", int, f"files[{i}]."),
                                   sha256=_field(entry, "sha256", (str, type(None)),
                                                 f"files[{i}].")))
        memory_file = _field(data, "memory_file", str)
        if not memory_file or "/" in memory_file:
            raise MetadataError(f"memory_file {memory_file!r} is not a plain file name")
        return cls(
            hypervisor=HypervisorRecord(
                kind=_field(hv, "kind", str, "hypervisor."),
                version=_field(hv, "version", str, "hypervisor."),
                binary=_field(hv, "binary", (str, type(None)), "hypervisor."),
                binary_sha256=_field(hv, "binary_sha256", (str, type(None)), "hypervisor."),
                private_readonly_memory=_field(hv, "private_readonly_memory", bool,
                                               "hypervisor.")
                if "private_readonly_memory" in hv else False),
            accelerator=_field(data, "accelerator", str),
            identity=_field(data, "identity", dict),
            identity_sha256=_field(data, "identity_sha256", str),
            memory_bytes=_field(data, "memory_bytes", int),
            kernel_sha256=_field(data, "kernel_sha256", str),
            initrd_sha256=_field(data, "initrd_sha256", str),
            files=tuple(files),
            created_at=float(_field(data, "created_at", (int, float))),
            memory_file=memory_file,
            format=fmt,
        )


def _field(data: dict, name: str, kind: type | tuple[type, ...], prefix: str = "") -> Any:
    if name not in data:
        raise MetadataError(f"field {prefix}{name} is missing")
    value = data[name]
    # bool is an int subclass: never accept it where a number is expected.
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise MetadataError(f"field {prefix}{name} has the wrong type "
                            f"({type(value).__name__})")
    return value


def read_metadata(directory: Path) -> TemplateMetadata:
    """Raises FileNotFoundError or MetadataError."""
    try:
        text = (directory / METADATA_FILE).read_text()
    except UnicodeDecodeError:
        raise MetadataError("not UTF-8 text") from None
    return TemplateMetadata.from_json(text)


def write_metadata(directory: Path, metadata: TemplateMetadata) -> None:
    """Atomically write metadata.json (0600): it marks the template complete."""
    target = directory / METADATA_FILE
    tmp = directory / f".{METADATA_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(metadata.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)

"""manifest.json: what an image was built from (input digests) and what it contains.

A build whose inputs equal the manifest's, with the outputs still in place,
is a cache hit and does nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
KERNEL_NAME = "vmlinux"
INITRD_NAME = "initrd.img"
FORMAT = 1


def builder_digest() -> str:
    """sha256 of the builder's own source: a changed builder must not reuse an old image."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def load(output_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((output_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def is_up_to_date(manifest: dict[str, Any] | None, inputs: dict[str, Any], output_dir: Path) -> bool:
    """Same inputs and the recorded outputs still present with their recorded sizes."""
    if manifest is None or manifest.get("inputs") != inputs:
        return False
    outputs = manifest.get("outputs")
    if not isinstance(outputs, dict) or set(outputs) != {KERNEL_NAME, INITRD_NAME}:
        return False
    for name, meta in outputs.items():
        path = output_dir / name
        if not path.is_file() or not isinstance(meta, dict) or path.stat().st_size != meta.get("size"):
            return False
    return True


def write(output_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write atomically (the manifest is what marks a build complete)."""
    path = output_dir / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(manifest, format=FORMAT), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path

"""Cloud Hypervisor snapshot fix-up done by the factory after a template save.

The template VM maps its RAM file shared (so the file *is* guest memory);
CLH writes that into the snapshot's config.json. A clone restored from it
unchanged would write into the template, so the factory turns every memory
`shared` flag (top level and each zone) to false: clones then map the file
private, copy-on-write.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

CONFIG_FILE = "config.json"


class SnapshotConfigError(ValueError):
    pass


def make_memory_private(snapshot_dir: Path) -> int:
    """Patch <snapshot_dir>/config.json in place (atomically); returns how
    many `shared` flags were set to false."""
    path = snapshot_dir / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise SnapshotConfigError(f"{path} missing: the snapshot is incomplete") from None
    except ValueError as exc:
        raise SnapshotConfigError(f"{path} is not JSON: {exc}") from None
    memory = config.get("memory") if isinstance(config, dict) else None
    if not isinstance(memory, dict):
        raise SnapshotConfigError(f"{path} has no memory section")
    patched = 0
    for section in (memory, *(memory.get("zones") or ())):
        if not isinstance(section, dict):
            raise SnapshotConfigError(f"{path}: a memory zone is not an object")
        if section.get("shared") is not False:
            patched += 1
        section["shared"] = False
    tmp = path.with_name(f".{CONFIG_FILE}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f)
    os.replace(tmp, path)
    return patched

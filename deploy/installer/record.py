"""What the installer put on the node, kept in ``<prefix>/install-record.json``: removal
undoes exactly that, and a second install can tell its own earlier work from an admin's.

Saved before each change it describes (a crash in between leaves a record that is ahead of
the node, which the next run repairs), and only when its content changed.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .host import InstallError, write_if_changed

RECORD_NAME = "install-record.json"
FORMAT = 1


@dataclass
class ContainerdRecord:
    path: str                        # node path of config.toml
    backup: str                      # node path of the pre-graft copy
    original_absent: bool = False    # there was no config.toml: removal deletes it
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    written_sha256: str = ""         # the file right after our last write
    exact_restore: bool = True       # the backup is the file minus exactly our handler
    restarted_sha256: str = ""       # containerd was restarted with this file


@dataclass
class InstallRecord:
    prefix: str
    created_prefix: bool = False
    handler: str = "graft"
    graft_config: str = ""
    shim_link: str = ""
    packages_digest: str = ""
    python_runtime: bool = False     # <prefix>/python was copied by us
    guest_image: bool = False        # <prefix>/share/guest was filled by us
    template: bool = False           # `graft factory init` ran
    node_label: str = ""             # "key=value" set on --node-name
    containerd: ContainerdRecord | None = None
    format: int = FORMAT

    def save(self, path: Path) -> bool:
        text = json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"
        return write_if_changed(path, text.encode(), 0o600)

    @classmethod
    def load(cls, path: Path) -> "InstallRecord | None":
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise InstallError(f"{path}: unreadable install record ({exc}); move it away "
                               "and clean up by hand") from exc
        if data.get("format") != FORMAT:
            raise InstallError(f"{path}: install record format {data.get('format')} is not "
                               f"{FORMAT} (written by another installer version)")
        containerd = data.pop("containerd", None)
        record = cls(**data)
        record.containerd = ContainerdRecord(**containerd) if containerd else None
        return record

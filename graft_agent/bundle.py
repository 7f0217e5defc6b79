"""OCI documents from the host: validation and the agent's rewrites before the runtime sees them."""

from __future__ import annotations

import os
import re

from .errors import InvalidArgument

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_id(kind: str, value: str, allow_empty: bool = False) -> str:
    if allow_empty and value == "":
        return value
    if not _ID.fullmatch(value):
        raise InvalidArgument(f"invalid {kind} {value!r}: use 1-128 of [A-Za-z0-9_.-], "
                              "starting with a letter or digit")
    return value


def parse_object(kind: str, raw: bytes) -> dict:
    import json

    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{kind} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{kind} must be a JSON object, not {type(doc).__name__}")
    return doc


def open_rootfs(rootfs_path: str) -> int:
    """An O_PATH fd of the container's rootfs directory. Held while the container is made, it
    keeps the directory's dentry (and its parents') cached: over 9p the runtime's lookups of
    the rootfs path then cost no round trips to the host."""
    if not rootfs_path or not os.path.isabs(rootfs_path):
        raise InvalidArgument(f"rootfs_path must be an absolute guest path, got {rootfs_path!r}")
    try:
        return os.open(rootfs_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise InvalidArgument(f"rootfs_path {rootfs_path} is not a directory in the guest") from None


def container_spec(raw: bytes, rootfs_path: str, cgroups_path: str) -> dict:
    """The host's runtime spec with the guest's rootfs (checked by open_rootfs) and the
    agent's cgroup layout."""
    spec = parse_object("oci_spec_json", raw)
    process = spec.get("process")
    if not isinstance(process, dict) or not process.get("args"):
        raise InvalidArgument("oci_spec_json: process.args is required")
    root = spec.get("root") if isinstance(spec.get("root"), dict) else {}
    spec["root"] = {"path": rootfs_path, "readonly": bool(root.get("readonly", False))}
    linux = spec.setdefault("linux", {})
    if not isinstance(linux, dict):
        raise InvalidArgument("oci_spec_json: linux must be an object")
    # The host's cgroup layout means nothing inside the VM: the agent owns the guest's.
    linux["cgroupsPath"] = cgroups_path
    return spec


def exec_process(raw: bytes) -> dict:
    process = parse_object("process_json", raw)
    if not process.get("args"):
        raise InvalidArgument("process_json: args is required")
    if "cwd" not in process:
        process["cwd"] = "/"
    return process


def write_json(path: str, doc: object) -> None:
    import json

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)

"""What the shim reads from an OCI bundle written by containerd.

Light on imports (no dataclasses, no pathlib): `start` reads the bundle for every container.
"""
from __future__ import annotations

import enum
import json
import os

CONTAINER_TYPE = "io.kubernetes.cri.container-type"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"


class BundleInfo:
    __slots__ = ("container_type", "sandbox_id")

    def __init__(self, container_type: str, sandbox_id: str) -> None:
        # "sandbox", "container", or "" (no CRI annotations: ctr-style pod of one)
        self.container_type = container_type
        self.sandbox_id = sandbox_id  # the pod this container belongs to (its own id for a sandbox)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, BundleInfo) and other.container_type == self.container_type
                and other.sandbox_id == self.sandbox_id)

    @property
    def is_sandbox(self) -> bool:
        return self.container_type != "container"

    @property
    def kind(self) -> "ContainerKind":
        if self.container_type == "container":
            return ContainerKind.APP
        if self.container_type == "sandbox":
            return ContainerKind.POD_VM
        return ContainerKind.SINGLE


class ContainerKind(enum.Enum):
    POD_VM = "pod-vm"   # CRI pause container: the task *is* the VM, nothing runs in the guest
    SINGLE = "single"   # no CRI annotations (ctr run): a pod of one, VM + container in the guest
    APP = "app"         # CRI app container: runs in its sandbox's VM


def read_spec(bundle: "str | Path") -> dict:
    """The bundle's OCI spec; {} when there is none. ValueError when it is not an OCI spec."""
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            spec = json.loads(f.read())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if not isinstance(spec, dict):
        raise ValueError(f"{path} is not a JSON object")
    if not isinstance(spec.get("annotations") or {}, dict):
        raise ValueError(f"{path}: annotations is not an object")
    return spec


def bundle_info(container_id: str, spec: dict) -> BundleInfo:
    annotations = spec.get("annotations") or {}
    ctype = annotations.get(CONTAINER_TYPE, "")
    sandbox = annotations.get(SANDBOX_ID, "")
    if not isinstance(ctype, str) or not isinstance(sandbox, str):
        raise ValueError(f"container {container_id}: {CONTAINER_TYPE} and {SANDBOX_ID} "
                         "must be strings")
    if ctype == "container":
        if not sandbox:
            raise ValueError(f"container {container_id} has {CONTAINER_TYPE}=container "
                             f"but no {SANDBOX_ID} annotation")
        return BundleInfo(ctype, sandbox)
    return BundleInfo(ctype, container_id)


def network_namespace(spec: dict) -> "Path | None":
    """The pod netns path from linux.namespaces (where the VMM must run), if any."""
    from pathlib import Path

    for ns in (spec.get("linux") or {}).get("namespaces") or []:
        if ns.get("type") == "network" and ns.get("path"):
            return Path(ns["path"])
    return None


def hostname(spec: dict) -> str:
    return str(spec.get("hostname") or "")

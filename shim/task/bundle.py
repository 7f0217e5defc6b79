"""What the shim reads from an OCI bundle written by containerd."""
from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path

CONTAINER_TYPE = "io.kubernetes.cri.container-type"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"


@dataclass(frozen=True)
class BundleInfo:
    container_type: str   # "sandbox", "container", or "" (no CRI annotations: ctr-style pod of one)
    sandbox_id: str       # the pod this container belongs to (its own id for a sandbox)

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


def read_spec(bundle: Path) -> dict:
    """The bundle's OCI spec; {} when there is none. ValueError when it is not an OCI spec."""
    path = bundle / "config.json"
    try:
        spec = json.loads(path.read_text())
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


def network_namespace(spec: dict) -> Path | None:
    """The pod netns path from linux.namespaces (where the VMM must run), if any."""
    for ns in (spec.get("linux") or {}).get("namespaces") or []:
        if ns.get("type") == "network" and ns.get("path"):
            return Path(ns["path"])
    return None


def hostname(spec: dict) -> str:
    return str(spec.get("hostname") or "")

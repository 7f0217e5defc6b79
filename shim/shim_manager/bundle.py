"""What the shim reads from an OCI bundle written by containerd."""
from __future__ import annotations

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


def read_spec(bundle: Path) -> dict:
    try:
        return json.loads((bundle / "config.json").read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {bundle / 'config.json'}: {exc}") from exc


def bundle_info(container_id: str, spec: dict) -> BundleInfo:
    annotations = spec.get("annotations") or {}
    ctype = annotations.get(CONTAINER_TYPE, "")
    if ctype == "container":
        sandbox = annotations.get(SANDBOX_ID, "")
        if not sandbox:
            raise ValueError(f"container {container_id} has {CONTAINER_TYPE}=container "
                             f"but no {SANDBOX_ID} annotation")
        return BundleInfo(ctype, sandbox)
    return BundleInfo(ctype, container_id)

"""The pod overhead graft declares, read from its one place: the RuntimeClass manifest
(deploy/manifests/runtimeclass.yaml, ``overhead.podFixed``). A benchmark measuring what a
graft pod really costs the node (host PSS per pod) compares against this, and the number
is changed in the manifest only.

    python3 deploy/pod_overhead.py     # prints {"memory_bytes": ..., "cpu_cores": ...}
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml
from kubernetes.utils import parse_quantity

RUNTIME_CLASS = Path(__file__).resolve().parent / "manifests" / "runtimeclass.yaml"


@dataclass(frozen=True)
class PodOverhead:
    memory_bytes: int
    cpu_cores: float

    @property
    def memory_mib(self) -> float:
        return self.memory_bytes / 2**20


def declared(path: Path = RUNTIME_CLASS) -> PodOverhead:
    fixed = yaml.safe_load(path.read_text())["overhead"]["podFixed"]
    return PodOverhead(memory_bytes=int(parse_quantity(fixed["memory"])),
                       cpu_cores=float(parse_quantity(fixed["cpu"])))


if __name__ == "__main__":
    print(json.dumps(asdict(declared())))

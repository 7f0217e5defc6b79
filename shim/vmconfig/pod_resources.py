"""What a pod asks of its VM (vCPUs, memory), read from the sandbox's OCI spec.

Sources, first match wins:
  * CRI (containerd >= 1.6 with a kubelet that sizes sandboxes) puts the sum
    of the pod's container limits on the sandbox container as annotations
    ``io.kubernetes.cri.sandbox-cpu-quota/-period`` and
    ``io.kubernetes.cri.sandbox-memory`` (bytes);
  * otherwise the spec's own ``linux.resources`` (``ctr run --cpus 2
    --memory-limit ...`` on a pod of one).
A quota of 0 or less, or a missing period, means "no CPU limit asked".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from shim.errors import InvalidArgument

CRI_CPU_QUOTA = "io.kubernetes.cri.sandbox-cpu-quota"
CRI_CPU_PERIOD = "io.kubernetes.cri.sandbox-cpu-period"
CRI_MEMORY = "io.kubernetes.cri.sandbox-memory"

MIB = 1 << 20


@dataclass(frozen=True)
class PodResources:
    vcpus: int | None = None       # None: the pod asks for no CPU limit
    memory_mib: int | None = None  # None: the pod asks for no memory limit


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise InvalidArgument(f"{where}: expected an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{where}: expected an integer, got {value!r}") from None


def _vcpus(quota: int, period: int) -> int | None:
    if quota <= 0 or period <= 0:
        return None
    return math.ceil(quota / period)


def _mib(limit_bytes: int) -> int | None:
    return math.ceil(limit_bytes / MIB) if limit_bytes > 0 else None


def requested_resources(spec: dict) -> PodResources:
    """The vCPUs and memory the pod asks for (see the module doc)."""
    annotations = spec.get("annotations") or {}
    resources = (spec.get("linux") or {}).get("resources") or {}
    cpu = resources.get("cpu") or {}
    memory = resources.get("memory") or {}

    if CRI_CPU_QUOTA in annotations or CRI_CPU_PERIOD in annotations:
        vcpus = _vcpus(_int(annotations.get(CRI_CPU_QUOTA, 0), f"annotation {CRI_CPU_QUOTA}"),
                       _int(annotations.get(CRI_CPU_PERIOD, 0), f"annotation {CRI_CPU_PERIOD}"))
    else:
        vcpus = _vcpus(_int(cpu.get("quota") or 0, "linux.resources.cpu.quota"),
                       _int(cpu.get("period") or 0, "linux.resources.cpu.period"))
    if CRI_MEMORY in annotations:
        memory_mib = _mib(_int(annotations[CRI_MEMORY], f"annotation {CRI_MEMORY}"))
    else:
        memory_mib = _mib(_int(memory.get("limit") or 0, "linux.resources.memory.limit"))
    return PodResources(vcpus=vcpus, memory_mib=memory_mib)

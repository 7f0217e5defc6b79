"""`linux.resources` → cgroup v2 file writes (pure; cgroups.py does the writing).

Conversions are crun's, so a container sees the same limits under either runtime: cpu shares
→ cpu.weight linearly from [2, 262144] to [1, 10000], blkio weight → io.weight from
[10, 1000] to [1, 10000], memory.swap is memory+swap (OCI) → memory.swap.max is the swap part.
What cgroup v2 cannot express is refused naming the field (crun refuses the same ones).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ..errors import InvalidArgument
from .device_filter import DeviceRule, parse_rules
from .fields import UNSUPPORTED, objects, only_known

_HUGEPAGE_SIZE = re.compile(r"[0-9]+[KMG]B")
_CPU_LIST = re.compile(r"[0-9,\- ]*")
_V1_ONLY = {
    ("memory", "kernel"): "kernel memory limits do not exist in cgroup v2",
    ("memory", "kernelTCP"): "kernel TCP memory limits do not exist in cgroup v2",
    ("memory", "swappiness"): "memory swappiness does not exist in cgroup v2",
    ("memory", "useHierarchy"): "useHierarchy does not exist in cgroup v2 (always hierarchical)",
    ("cpu", "realtimeRuntime"): "realtime CPU limits are not supported on cgroup v2",
    ("cpu", "realtimePeriod"): "realtime CPU limits are not supported on cgroup v2",
    ("blockIO", "leafWeight"): "blkio leaf weights do not exist in cgroup v2",
}
_KNOWN = {
    "memory": {"limit", "reservation", "swap", "disableOOMKiller", "checkBeforeUpdate"},
    "cpu": {"shares", "quota", "period", "cpus", "mems", "idle", "burst"},
    "pids": {"limit"},
    "blockIO": {"weight", "throttleReadBpsDevice", "throttleWriteBpsDevice",
                "throttleReadIOPSDevice", "throttleWriteIOPSDevice"},
}
_THROTTLE_KEYS = {"throttleReadBpsDevice": "rbps", "throttleWriteBpsDevice": "wbps",
                  "throttleReadIOPSDevice": "riops", "throttleWriteIOPSDevice": "wiops"}


class CgroupWrite(NamedTuple):
    file: str
    value: str
    optional: bool = False        # a missing file is not an error (e.g. no swap accounting)
    fallback: "CgroupWrite | None" = None   # written instead if `file` does not exist


class ResourcePlan(NamedTuple):
    devices: list[DeviceRule] | None   # None: no device rules given (nothing attached)
    writes: list[CgroupWrite]


def _int(section: dict, key: str, field: str) -> int | None:
    value = section.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"{field}.{key} must be an integer")
    return value


def _max(value: int) -> str:
    return "max" if value == -1 else str(value)


def plan_resources(resources: object, field: str = "linux.resources") -> ResourcePlan:
    if resources is None:
        return ResourcePlan(None, [])
    if not isinstance(resources, dict):
        raise InvalidArgument(f"{field} must be an object")
    only_known({k: v for k, v in resources.items() if not (k in ("network", "rdma") and not v)},
               field, ("devices", "memory", "cpu", "pids", "blockIO", "hugepageLimits", "unified"),
               {"network": f"{UNSUPPORTED} (cgroup v1 only)"})
    for section, known in _KNOWN.items():
        doc = resources.get(section)
        if doc is not None:
            v1_only = {key: why for (sec, key), why in _V1_ONLY.items() if sec == section}
            only_known(doc, f"{field}.{section}", known | set(v1_only),
                       {key: why for key, why in v1_only.items() if doc.get(key) not in (None, 0)}
                       if isinstance(doc, dict) else None)
    devices = resources.get("devices")
    writes = (_memory(resources.get("memory"), f"{field}.memory")
              + _pids(resources.get("pids"), f"{field}.pids")
              + _cpu(resources.get("cpu"), f"{field}.cpu")
              + _block_io(resources.get("blockIO"), f"{field}.blockIO")
              + _hugepages(resources.get("hugepageLimits"), f"{field}.hugepageLimits")
              + _unified(resources.get("unified"), f"{field}.unified"))
    return ResourcePlan(parse_rules(devices, f"{field}.devices") if devices else None, writes)


def _memory(memory: dict | None, field: str) -> list[CgroupWrite]:
    if not memory:
        return []
    if memory.get("disableOOMKiller"):
        raise InvalidArgument(f"{field}.disableOOMKiller: cgroup v2 cannot disable the OOM killer")
    if memory.get("checkBeforeUpdate"):
        raise InvalidArgument(f"{field}.checkBeforeUpdate is not supported by the native runtime")
    limit, swap = _int(memory, "limit", field), _int(memory, "swap", field)
    reservation = _int(memory, "reservation", field)
    writes = []
    if limit is not None:
        writes.append(CgroupWrite("memory.max", _max(limit)))
    if swap is not None:
        if swap != -1:
            if limit is None:
                raise InvalidArgument(f"{field}.swap needs {field}.limit (it is memory+swap)")
            if swap < limit:
                raise InvalidArgument(f"{field}.swap ({swap}) is memory+swap: it cannot be less "
                                      f"than the limit ({limit})")
            swap -= limit
        writes.append(CgroupWrite("memory.swap.max", _max(swap), optional=True))
    if reservation is not None:
        writes.append(CgroupWrite("memory.low", str(reservation)))
    return writes


def _pids(pids: dict | None, field: str) -> list[CgroupWrite]:
    limit = _int(pids or {}, "limit", field)
    return [CgroupWrite("pids.max", _max(limit))] if limit else []


def _cpu(cpu: dict | None, field: str) -> list[CgroupWrite]:
    if not cpu:
        return []
    writes = []
    shares = _int(cpu, "shares", field)
    if shares:
        if not 2 <= shares <= 262144:
            raise InvalidArgument(f"{field}.shares must be 2-262144")
        writes.append(CgroupWrite("cpu.weight", str(1 + ((shares - 2) * 9999) // 262142)))
    idle = _int(cpu, "idle", field)
    if idle is not None:
        writes.append(CgroupWrite("cpu.idle", str(idle)))
    quota, period = _int(cpu, "quota", field) or -1, _int(cpu, "period", field) or -1
    if quota > 0 or period > 0:
        period = period if period > 0 else 100000
        writes.append(CgroupWrite("cpu.max", f"{quota if quota > 0 else 'max'} {period}"))
    burst = _int(cpu, "burst", field)
    if burst is not None:
        writes.append(CgroupWrite("cpu.max.burst", str(burst)))
    for key in ("cpus", "mems"):
        value = cpu.get(key)
        if value:
            if not isinstance(value, str) or not _CPU_LIST.fullmatch(value):
                raise InvalidArgument(f"{field}.{key} must be a list like 0-2,4")
            writes.append(CgroupWrite(f"cpuset.{key}", value))
    return writes


def _device(entry: dict, field: str) -> str:
    if not all(isinstance(entry.get(k), int) for k in ("major", "minor")):
        raise InvalidArgument(f"{field} needs integer major and minor")
    return f"{entry['major']}:{entry['minor']}"


def _block_io(blkio: dict | None, field: str) -> list[CgroupWrite]:
    if not blkio:
        return []
    writes = []
    weight = _int(blkio, "weight", field)
    if weight:
        if not 10 <= weight <= 1000:
            raise InvalidArgument(f"{field}.weight must be 10-1000")
        writes.append(CgroupWrite("io.bfq.weight", str(weight), fallback=CgroupWrite(
            "io.weight", str(1 + (weight - 10) * 9999 // 990))))
    for key, name in _THROTTLE_KEYS.items():
        for where, entry in objects(blkio.get(key), f"{field}.{key}"):
            rate = _int(entry, "rate", where)
            if rate is None or rate < 0:
                raise InvalidArgument(f"{where}.rate must be a non-negative integer")
            writes.append(CgroupWrite("io.max", f"{_device(entry, where)} {name}={rate}"))
    return writes


def _hugepages(limits: list | None, field: str) -> list[CgroupWrite]:
    writes = []
    for where, entry in objects(limits, field):
        size = entry.get("pageSize")
        if not isinstance(size, str) or not _HUGEPAGE_SIZE.fullmatch(size):
            raise InvalidArgument(f"{where}.pageSize must look like 2MB")
        limit = _int(entry, "limit", where)
        if limit is None:
            raise InvalidArgument(f"{where}.limit is required")
        writes.append(CgroupWrite(f"hugetlb.{size}.max", str(limit)))
    return writes


def _unified(unified: dict | None, field: str) -> list[CgroupWrite]:
    if not unified:
        return []
    if not isinstance(unified, dict):
        raise InvalidArgument(f"{field} must be an object of file: value")
    writes = []
    for key, value in unified.items():
        if not key or "/" in key or key.startswith(".") or not isinstance(value, str):
            raise InvalidArgument(f"{field}.{key}: keys are cgroup file names, values strings")
        writes.append(CgroupWrite(key, value))
    return writes

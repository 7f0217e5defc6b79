"""Checks of the OCI documents containerd hands over, before anything is made of them.

What the OCI runtime in the guest would refuse anyway is refused here, with InvalidArgument
and the field's name, instead of an opaque runtime failure from inside the VM: a process must
have args; rlimits must be known, within 64 bits, soft <= hard (and RLIMIT_NOFILE within what
any Linux allows); resource numbers must fit their OCI types (-1 means "unlimited" where the
type is signed, as runc reads it). Unknown fields are left alone: runtimes ignore them too.
What runc accepts but the guest's runtime would not is rewritten to runc's meaning.
"""
from __future__ import annotations

from typing import Any

from .errors import InvalidArgument

_U64_MAX = 2 ** 64 - 1
_NR_OPEN_MAX = 2 ** 31 - 64  # the kernel's ceiling for fs.nr_open (INT_MAX & -BITS_PER_LONG)
RLIMIT_TYPES = frozenset(f"RLIMIT_{name}" for name in (
    "AS", "CORE", "CPU", "DATA", "FSIZE", "LOCKS", "MEMLOCK", "MSGQUEUE", "NICE", "NOFILE",
    "NPROC", "RSS", "RTPRIO", "RTTIME", "SIGPENDING", "STACK"))

# linux.resources fields checked here: (section, field) → lowest value allowed
_RESOURCE_MINIMA: dict[tuple[str, str], int] = {
    ("memory", "limit"): -1, ("memory", "reservation"): -1, ("memory", "swap"): -1,
    ("memory", "kernel"): -1, ("memory", "kernelTCP"): -1,
    ("cpu", "shares"): 0, ("cpu", "quota"): -1, ("cpu", "period"): 0,
    ("cpu", "realtimeRuntime"): -1, ("cpu", "realtimePeriod"): 0,
}


def _integer(value: Any, where: str, low: int, high: int = _U64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{where}: expected an integer, got {value!r}")
    if not low <= value <= high:
        raise InvalidArgument(f"{where}: {value} is out of range [{low}, {high}]")
    return value


def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: expected an object, got {type(value).__name__}")
    return value


def check_process(process: Any, where: str = "process") -> None:
    process = _object(process, where)
    args = process.get("args")
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        raise InvalidArgument(f"{where}.args must be a non-empty list of strings")
    rlimits = process.get("rlimits") or []
    if not isinstance(rlimits, list):
        raise InvalidArgument(f"{where}.rlimits must be a list")
    for i, rlimit in enumerate(rlimits):
        _check_rlimit(_object(rlimit, f"{where}.rlimits[{i}]"), f"{where}.rlimits[{i}]")


def _check_rlimit(rlimit: dict, where: str) -> None:
    kind = rlimit.get("type")
    if kind not in RLIMIT_TYPES:
        raise InvalidArgument(f"{where}.type: unknown rlimit {kind!r}")
    high = _NR_OPEN_MAX if kind == "RLIMIT_NOFILE" else _U64_MAX
    hard = _integer(rlimit.get("hard"), f"{where}.hard ({kind})", 0, high)
    soft = _integer(rlimit.get("soft"), f"{where}.soft ({kind})", 0, high)
    if soft > hard:
        raise InvalidArgument(f"{where} ({kind}): soft limit {soft} exceeds hard limit {hard}")


def check_resources(resources: Any, where: str = "linux.resources") -> None:
    resources = _object(resources, where)
    for (section, name), low in _RESOURCE_MINIMA.items():
        part = resources.get(section)
        if part is None:
            continue
        value = _object(part, f"{where}.{section}").get(name)
        if value is not None:
            _integer(value, f"{where}.{section}.{name}", low, _U64_MAX if low >= 0 else 2 ** 63 - 1)
    pids = resources.get("pids")
    if pids is not None:  # any int64: runc reads <= 0 as unlimited
        limit = _object(pids, f"{where}.pids").get("limit")
        if limit is not None:
            _integer(limit, f"{where}.pids.limit", -(2 ** 63), 2 ** 63 - 1)


def check_spec(spec: dict) -> None:
    """The runtime spec of a container (config.json)."""
    if "process" not in spec:
        raise InvalidArgument("the OCI spec has no process")
    check_process(spec["process"])
    linux = spec.get("linux")
    if linux is not None:
        resources = _object(linux, "linux").get("resources")
        if resources is not None:
            check_resources(resources)


def runc_compatible(spec: dict) -> dict:
    """The spec as runc would read it, for runtimes that are stricter: a pids limit <= 0 means
    "no limit" to runc (crun refuses it). Returns a copy when something changed."""
    resources = (spec.get("linux") or {}).get("resources") or {}
    limit = (resources.get("pids") or {}).get("limit")
    if limit is None or limit > 0:
        return spec
    import copy

    out = copy.deepcopy(spec)
    del out["linux"]["resources"]["pids"]
    return out

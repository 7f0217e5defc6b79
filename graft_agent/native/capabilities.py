"""Capability sets: OCI names → bit masks (in the agent), and applying them (in the child)."""

from __future__ import annotations

import errno
from typing import NamedTuple

from ..errors import InvalidArgument
from . import linux

# linux/capability.h
CAPABILITIES = {name: number for number, name in enumerate((
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
    "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON",
    "CAP_BPF", "CAP_CHECKPOINT_RESTORE"))}
_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")


class CapabilitySets(NamedTuple):
    bounding: int
    effective: int
    inheritable: int
    permitted: int
    ambient: int


def parse_capabilities(caps: object, field: str) -> CapabilitySets:
    """`process.capabilities` → masks. A missing set is empty (as with crun and runc);
    an unknown name is refused rather than dropped."""
    if caps is None:
        return CapabilitySets(0, 0, 0, 0, 0)
    if not isinstance(caps, dict):
        raise InvalidArgument(f"{field} must be an object")
    unknown = set(caps) - set(_SETS)
    if unknown:
        raise InvalidArgument(f"{field}.{sorted(unknown)[0]} is not a capability set")
    masks = []
    for name in _SETS:
        values = caps.get(name) or []
        if not isinstance(values, list):
            raise InvalidArgument(f"{field}.{name} must be a list of capability names")
        mask = 0
        for value in values:
            number = CAPABILITIES.get(str(value).upper())
            if number is None:
                raise InvalidArgument(f"{field}.{name}: unknown capability {value!r}")
            mask |= 1 << number
        masks.append(mask)
    sets = CapabilitySets(*masks)
    stray = sets.ambient & ~(sets.permitted & sets.inheritable)
    if stray:  # the kernel would refuse to raise them; say so now instead of dropping them
        raise InvalidArgument(f"{field}.ambient: {', '.join(names(stray))} must also be in "
                              "permitted and inheritable")
    return sets


def names(mask: int) -> list[str]:
    return [name for name, number in CAPABILITIES.items() if mask & (1 << number)]


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return max(CAPABILITIES.values())


def drop_bounding(bounding: int, highest: int) -> None:
    """Child side, while still privileged: drop what the bounding set does not keep."""
    for cap in range(highest + 1):
        if not bounding & (1 << cap):
            try:
                linux.prctl(linux.PR_CAPBSET_DROP, cap, what="prctl(PR_CAPBSET_DROP)")
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # a capability this kernel does not know
                    raise


def apply_sets(caps: CapabilitySets, highest: int) -> None:
    """Child side, after the uid/gid switch (PR_SET_KEEPCAPS kept the permitted set)."""
    linux.capset(caps.effective, caps.permitted, caps.inheritable)
    try:
        linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_CLEAR_ALL, what="prctl(PR_CAP_AMBIENT)")
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EPERM):
            raise
    for cap in range(highest + 1):
        if caps.ambient & (1 << cap):
            linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_RAISE, cap,
                        what="prctl(PR_CAP_AMBIENT_RAISE)")

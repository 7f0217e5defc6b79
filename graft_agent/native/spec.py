"""A container's OCI runtime spec → a ContainerPlan the child executes (pure validation).

Every field the native runtime does not implement is refused here with an InvalidArgument
naming it, before any process exists.
"""

from __future__ import annotations

import stat
from typing import NamedTuple

from ..errors import InvalidArgument
from . import linux as L
from .fields import UNSUPPORTED, objects, only_known
from .mount_plan import MountPlan, parse_mounts, parse_paths, root_propagation
from .process_spec import ProcessPlan, plan_process
from .resources import ResourcePlan, plan_resources
from .seccomp_filter import parse_profile

NAMESPACE_FLAGS = {"pid": L.CLONE_NEWPID, "network": L.CLONE_NEWNET, "mount": L.CLONE_NEWNS,
                   "ipc": L.CLONE_NEWIPC, "uts": L.CLONE_NEWUTS, "cgroup": L.CLONE_NEWCGROUP}
_REFUSED_NAMESPACES = {"user": "user namespaces", "time": "time namespaces"}
_TOP_LEVEL = {"ociVersion", "process", "root", "hostname", "domainname", "mounts", "linux",
              "annotations"}
_LINUX = {"namespaces", "resources", "cgroupsPath", "devices", "sysctl", "seccomp",
          "rootfsPropagation", "maskedPaths", "readonlyPaths", "personality"}
_EMPTY_OK = {"uidMappings", "gidMappings"}   # refused only when they say something
_DEVICE_TYPES = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
_PERSONALITIES = {"LINUX": 0x0000, "LINUX32": 0x0008}
# sysctls living in the IPC namespace (crun's list); net.* need a network namespace
_IPC_SYSCTLS = {"kernel/msgmax", "kernel/msgmnb", "kernel/msgmni", "kernel/sem", "kernel/shmall",
                "kernel/shmmax", "kernel/shmmni", "kernel/shm_rmid_forced"}


class Namespaces(NamedTuple):
    clone_flags: int               # CLONE_NEW* created at clone (the cgroup one comes later)
    new_cgroup: bool               # unshared by the child once it is in its cgroup
    join: list[tuple[str, str]]    # (type, path) entered with setns
    types: frozenset[str]          # every namespace the container has, new or joined


class DeviceNode(NamedTuple):
    path: str
    kind: int        # S_IFCHR, S_IFBLK or S_IFIFO
    major: int
    minor: int
    mode: int
    uid: int
    gid: int


class ContainerPlan(NamedTuple):
    rootfs: str
    readonly_root: bool
    namespaces: Namespaces
    process: ProcessPlan
    hostname: str
    domainname: str
    mounts: list[MountPlan]
    masked_paths: list[str]
    readonly_paths: list[str]
    root_propagation: int
    devices: list[DeviceNode]
    sysctls: list[tuple[str, str]]   # (path under /proc/sys, value)
    personality: int | None
    resources: ResourcePlan
    seccomp: dict | None
    cgroup_path: str


def plan_container(spec: dict) -> ContainerPlan:
    only_known(spec, "", _TOP_LEVEL, {"hooks": f"{UNSUPPORTED} (they would run guest binaries; "
                                                "the shim drops the host's)"})
    linux = spec.get("linux") or {}
    only_known({k: v for k, v in linux.items() if not (k in _EMPTY_OK and not v)}
               if isinstance(linux, dict) else linux, "linux", _LINUX,
               {"mountLabel": f"host LSM labels mean nothing in the guest; {UNSUPPORTED}"})
    root = spec.get("root") or {}
    if not isinstance(root, dict) or not str(root.get("path", "")).startswith("/"):
        raise InvalidArgument("root.path must be an absolute guest path")
    namespaces = _namespaces(linux.get("namespaces"))
    hostname, domainname = spec.get("hostname") or "", spec.get("domainname") or ""
    for name, value in (("hostname", hostname), ("domainname", domainname)):
        if not isinstance(value, str) or len(value.encode()) > 64:
            raise InvalidArgument(f"{name} must be a string of at most 64 bytes")
        if value and not namespaces.clone_flags & L.CLONE_NEWUTS:   # (crun's rule too)
            raise InvalidArgument(f"{name} needs a new UTS namespace in linux.namespaces")
    seccomp = linux.get("seccomp")
    if seccomp is not None:
        parse_profile(seccomp)   # validated now; compiled (and cached) by the runtime
    cgroup_path = linux.get("cgroupsPath")
    if not isinstance(cgroup_path, str) or not cgroup_path.startswith("/") or ".." in cgroup_path.split("/"):
        raise InvalidArgument("linux.cgroupsPath must be an absolute cgroup path")
    return ContainerPlan(
        rootfs=root["path"], readonly_root=bool(root.get("readonly")), namespaces=namespaces,
        process=plan_process(spec.get("process")), hostname=hostname, domainname=domainname,
        mounts=parse_mounts(spec.get("mounts")),
        masked_paths=parse_paths(linux.get("maskedPaths"), "linux.maskedPaths"),
        readonly_paths=parse_paths(linux.get("readonlyPaths"), "linux.readonlyPaths"),
        root_propagation=root_propagation(linux.get("rootfsPropagation")),
        devices=_devices(linux.get("devices")),
        sysctls=_sysctls(linux.get("sysctl"), namespaces.types, domainname),
        personality=_personality(linux.get("personality")),
        resources=plan_resources(linux.get("resources")),
        seccomp=seccomp, cgroup_path=cgroup_path)


def _namespaces(entries: object) -> Namespaces:
    flags, new_cgroup, join, types = 0, False, [], set()
    for field, entry in objects(entries, "linux.namespaces"):
        kind = entry.get("type")
        if kind in _REFUSED_NAMESPACES:
            raise InvalidArgument(f"{field}: {_REFUSED_NAMESPACES[kind]} are not supported by "
                                  "the native runtime")
        if kind not in NAMESPACE_FLAGS:
            raise InvalidArgument(f"{field}.type: unknown namespace type {kind!r}")
        if kind in types:
            raise InvalidArgument(f"{field}: namespace {kind} given twice")
        types.add(kind)
        path = entry.get("path") or ""
        if path:
            if not isinstance(path, str) or not path.startswith("/"):
                raise InvalidArgument(f"{field}.path must be an absolute path")
            if kind == "mount":
                raise InvalidArgument(f"{field}.path: joining an existing mount namespace is "
                                      "not supported by the native runtime")
            join.append((kind, path))
        elif kind == "cgroup":
            new_cgroup = True
        else:
            flags |= NAMESPACE_FLAGS[kind]
    if "mount" not in types:
        raise InvalidArgument("linux.namespaces: the native runtime needs a mount namespace")
    join.sort(key=lambda item: item[0] != "pid")  # the pid namespace is entered by the parent
    return Namespaces(flags, new_cgroup, join, frozenset(types))


def _devices(devices: object) -> list[DeviceNode]:
    nodes = []
    for field, device in objects(devices, "linux.devices"):
        path = device.get("path")
        if not isinstance(path, str) or not path.startswith("/") or ".." in path.split("/"):
            raise InvalidArgument(f"{field}.path must be an absolute path")
        kind = _DEVICE_TYPES.get(device.get("type"))
        if kind is None:
            raise InvalidArgument(f"{field}.type must be c, b, u or p")
        numbers = []
        for key, default in (("major", 0), ("minor", 0), ("fileMode", 0o666), ("uid", 0), ("gid", 0)):
            value = device.get(key, default)
            if key in ("major", "minor") and kind != stat.S_IFIFO and key not in device:
                raise InvalidArgument(f"{field}.{key} is required")
            if not isinstance(value, int) or value < 0:
                raise InvalidArgument(f"{field}.{key} must be a non-negative integer")
            numbers.append(value)
        nodes.append(DeviceNode(path, kind, numbers[0], numbers[1], numbers[2] & 0o7777,
                                numbers[3], numbers[4]))
    return nodes


def _sysctls(sysctl: object, types: frozenset[str], domainname: str) -> list[tuple[str, str]]:
    if not sysctl:
        return []
    if not isinstance(sysctl, dict):
        raise InvalidArgument("linux.sysctl must be an object of name: value")
    out = []
    for key, value in sysctl.items():
        field = f"linux.sysctl[{key!r}]"
        if not isinstance(value, str):
            raise InvalidArgument(f"{field} must be a string")
        name = key.replace(".", "/").strip("/")
        if not name or any(part in ("", "..") for part in name.split("/")):
            raise InvalidArgument(f"{field}: invalid sysctl name")
        if name.startswith("fs/mqueue/") or name in _IPC_SYSCTLS:
            needed = "ipc"
        elif name == "kernel/domainname":
            if domainname and value != domainname:
                raise InvalidArgument(f"{field} conflicts with the domainname field")
            needed = "uts"
        elif name == "kernel/hostname":
            raise InvalidArgument(f"{field} conflicts with the hostname field")
        elif name.startswith("net/"):
            needed = "network"
        else:
            raise InvalidArgument(f"{field}: the sysctl is not namespaced")
        if needed not in types:
            raise InvalidArgument(f"{field} needs a {needed} namespace in linux.namespaces")
        out.append((name, value))
    return out


def _personality(personality: object) -> int | None:
    if personality is None:
        return None
    only_known(personality, "linux.personality", ("domain", "flags"),
               {"flags": UNSUPPORTED} if personality.get("flags") else None)
    domain = personality.get("domain")
    if domain not in _PERSONALITIES:
        raise InvalidArgument(f"linux.personality.domain: unknown domain {domain!r}")
    return _PERSONALITIES[domain]

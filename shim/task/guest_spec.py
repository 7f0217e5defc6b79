"""The host's OCI spec (as containerd/CRI wrote it) → the spec the guest's runtime can use.

What only makes sense on the host is rewritten:
  * namespaces: the network namespace is dropped (containers share the VM's network, the VM
    being the pod); paths to host namespaces (/proc/<pid>/ns/...) are dropped (new ones);
  * hooks run host binaries: dropped;
  * host LSM labels (process.apparmorProfile, process.selinuxLabel, linux.mountLabel) name
    profiles and contexts of the host's AppArmor/SELinux policy, which the guest kernel does
    not load: dropped, for every guest runtime alike (the VM boundary is the isolation; a
    spec that reaches the agent with one anyway is refused by its native runtime);
  * ociVersion: the guest's runtimes (Debian 12's crun 1.8 and runc 1.1) refuse a spec version
    newer than they know (crun: "unknown version specified" for containerd 1.7's 1.2.0 and
    2.x's 1.2.1), although every field they understand means the same: a 1.x version is
    declared as GUEST_OCI_VERSION;
  * bind mounts of host files/dirs (CRI's /etc/hosts, resolv.conf, hostname, volumes) are
    exposed through the 9p share: the caller bind-mounts each source under the share and the
    guest mounts it from there; the host-side /dev/shm of the sandbox becomes a guest tmpfs.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

GUEST_OCI_VERSION = "1.0.2"
HOST_LSM_PROCESS_FIELDS = ("apparmorProfile", "selinuxLabel")

SHM_MOUNT = {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}


@dataclass(frozen=True)
class HostBind:
    source: Path        # host path to expose
    share_name: str     # name under the share's per-container mounts dir
    readonly: bool = False  # the mount asks for ro: enforced on the host side too


def _is_host_bind(mount: dict) -> bool:
    options = mount.get("options") or []
    is_bind = mount.get("type") in ("bind", "rbind") or "bind" in options or "rbind" in options
    return is_bind and str(mount.get("source", "")).startswith("/")


def guest_spec(spec: dict, guest_mounts_dir: str) -> tuple[dict, list[HostBind]]:
    """Rewrite *spec* for the guest; host binds are to appear under *guest_mounts_dir*."""
    out = copy.deepcopy(spec)
    out.pop("hooks", None)
    for key in HOST_LSM_PROCESS_FIELDS:
        (out.get("process") or {}).pop(key, None)
    if str(out.get("ociVersion", "")).startswith("1."):
        out["ociVersion"] = GUEST_OCI_VERSION
    linux = out.get("linux") or {}
    linux.pop("mountLabel", None)
    namespaces = []
    for ns in linux.get("namespaces") or []:
        if ns.get("type") == "network":
            continue
        namespaces.append({"type": ns["type"]})
    if "namespaces" in linux:
        linux["namespaces"] = namespaces

    binds: list[HostBind] = []
    mounts = []
    for mount in out.get("mounts") or []:
        if not _is_host_bind(mount):
            mounts.append(mount)
        elif mount.get("destination") == "/dev/shm":
            mounts.append(dict(SHM_MOUNT))
        else:
            name = str(len(binds))
            readonly = "ro" in (mount.get("options") or [])
            binds.append(HostBind(Path(mount["source"]), name, readonly))
            mounts.append({**mount, "source": f"{guest_mounts_dir}/{name}"})
    if "mounts" in out:
        out["mounts"] = mounts
    return out, binds

"""The host's OCI spec (as containerd/CRI wrote it) → the spec the guest's runtime can use.

What only makes sense on the host is rewritten:
  * namespaces: the network namespace is dropped (containers share the VM's network, the VM
    being the pod). CRI names the pod's shared namespaces by the sandbox process's
    /proc/<pid>/ns/<type>: IPC and UTS always, PID when the pod shares its process namespace
    (shareProcessNamespace). In the guest these become the pod's own namespaces, which the
    agent creates on first use (graft_agent.pod_paths names them); any other path is dropped
    (a new namespace). No entry at all means the node's namespace (hostPID, hostIPC,
    hostNetwork with its UTS): a pod VM cannot reach the node's namespaces, and inheriting
    the guest agent's instead would let the container see, signal and ptrace the agent, so
    such a spec is refused (NodeNamespaceRefused; the pod sandbox is refused the same way,
    see check_sandbox_namespaces);
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
    guest mounts it from there; the sandbox's /dev/shm (a host tmpfs) becomes the pod's
    /dev/shm in the guest, one tmpfs the pod's containers share.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from graft_agent.pod_paths import POD_NAMESPACES, POD_SHM, SHARED_NAMESPACES
from shim.errors import InvalidArgument

GUEST_OCI_VERSION = "1.0.2"
HOST_LSM_PROCESS_FIELDS = ("apparmorProfile", "selinuxLabel")

SHM_BIND_OPTIONS = ("nosuid", "nodev", "noexec")

# What asking for the node's namespace is called in Kubernetes, by the namespace left out.
_NODE_NAMESPACES = {"pid": "hostPID", "ipc": "hostIPC", "uts": "hostNetwork (the node's UTS namespace)",
                    "mount": "the node's mount namespace"}


class NodeNamespaceRefused(InvalidArgument):
    pass


_SANDBOX_NODE_NAMESPACES = {"pid": "hostPID", "ipc": "hostIPC", "network": "hostNetwork"}


def _refusal(names: list[str], what: str) -> NodeNamespaceRefused:
    return NodeNamespaceRefused(
        f"{what} asks for {', '.join(names)}: graft runs each pod in its own VM, which cannot "
        "share the node's namespaces (and will not hand out the guest agent's)")


def _left_out(spec: dict, kinds: dict[str, str]) -> list[str]:
    present = {ns.get("type") for ns in (spec.get("linux") or {}).get("namespaces") or []}
    return [name for kind, name in kinds.items() if kind not in present]


def check_sandbox_namespaces(spec: dict) -> None:
    """A pod sandbox (or a single container that is its own pod) asking for the node's PID,
    IPC or network namespace is refused before any VM is started."""
    missing = _left_out(spec, _SANDBOX_NODE_NAMESPACES)
    if missing:
        raise _refusal(missing, "the pod")


def refuse_node_namespaces(kinds: list[str]) -> None:
    """The same for the Sandbox API, from the CRI namespace options set to NODE."""
    if kinds:
        raise _refusal([_SANDBOX_NODE_NAMESPACES[kind] for kind in kinds], "the pod")


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
    missing = _left_out(out, _NODE_NAMESPACES)
    if missing:
        raise _refusal(missing, "the container")
    linux["namespaces"] = [_guest_namespace(ns) for ns in linux["namespaces"]
                           if ns.get("type") != "network"]

    binds: list[HostBind] = []
    mounts = []
    for mount in out.get("mounts") or []:
        if not _is_host_bind(mount):
            mounts.append(mount)
        elif mount.get("destination") == "/dev/shm":   # as the host mounts the sandbox's
            options = list(mount.get("options") or [])
            options += [o for o in SHM_BIND_OPTIONS if o not in options]
            mounts.append({**mount, "source": POD_SHM, "options": options})
        else:
            name = str(len(binds))
            readonly = "ro" in (mount.get("options") or [])
            binds.append(HostBind(Path(mount["source"]), name, readonly))
            mounts.append({**mount, "source": f"{guest_mounts_dir}/{name}"})
    if "mounts" in out:
        out["mounts"] = mounts
    return out, binds


def _guest_namespace(ns: dict) -> dict:
    """A host namespace path (the sandbox's) becomes the pod's namespace in the guest."""
    kind = ns["type"]
    if ns.get("path") and kind in SHARED_NAMESPACES:
        return {"type": kind, "path": f"{POD_NAMESPACES}/{kind}"}
    return {"type": kind}

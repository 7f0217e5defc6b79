"""What the agent does before anyone asks: whatever a pod's start would otherwise do first.

On a template VM this runs before the VM is saved (`graft factory init` waits for the agent's
health check, which waits for this), so every clone starts with it done: imports made, the
default runtime set up, the pod's namespaces and /dev/shm prepared (graft_agent/pod.py), the
netlink socket open, and one throwaway container created, started and removed with the
native runtime, so that the agent's cgroup parent is delegated, the default device filter
is loaded, and the create path's lazy work (imports, caches) is done. Nothing of it is
visible to a pod: the throwaway container is gone before the first request is answered.
Every step is best effort: what fails here fails again, reported, when a pod needs it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os

from .fsutil import remove_tree, which, write_text
from .pod_paths import POD_NAMESPACES, POD_SHM

log = logging.getLogger(__name__)

THROWAWAY_ID = "graft-agent-warmup"
_WAIT_S = 30.0
_NOSUID_NOEXEC_NODEV = ["nosuid", "noexec", "nodev"]
CRI_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# kubelet's defaults (what CRI containers carry unless privileged)
_MASKED = ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
           "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"]
_READONLY = ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
             "/proc/sysrq-trigger"]
_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
         "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
         "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]


def cri_spec(args: list[str], env: list[str], binds: list[dict], namespaces: list[dict]) -> dict:
    """A pod container's spec in the shape containerd 1.6's CRI plugin writes it: its default
    capabilities and mounts, then `binds`, a deny-all device rule, `namespaces`."""
    return {
        "ociVersion": "1.0.2-dev",
        "process": {"user": {"uid": 0, "gid": 0, "additionalGids": [0]}, "args": args,
                    "env": env, "cwd": "/",
                    "capabilities": {"bounding": _CAPS, "effective": _CAPS, "permitted": _CAPS}},
        "root": {"path": "rootfs"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": _NOSUID_NOEXEC_NODEV},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": _NOSUID_NOEXEC_NODEV},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": _NOSUID_NOEXEC_NODEV + ["ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": _NOSUID_NOEXEC_NODEV + ["relatime", "ro"]},
            *binds,
        ],
        "linux": {"resources": {"devices": [{"allow": False, "access": "rwm"}]},
                  "namespaces": namespaces},
    }


async def warm(agent) -> None:
    await asyncio.sleep(0)
    import ctypes  # noqa: F401  (mounts, 9p share)
    import ipaddress  # noqa: F401  (network)
    try:
        runtime = agent.containers.runtime("")   # the default runtime, set up (imports done)
    except Exception as exc:   # reported again, to the host, by the first container
        log.warning("default container runtime: %s", exc)
        return
    try:
        agent.containers.pod.prepare()
    except Exception as exc:
        log.warning("preparing the pod's namespaces: %s", exc)
    try:
        await agent.network.list_links()
        await agent.network.list_routes()
    except OSError as exc:
        log.warning("netlink: %s", exc)
    if runtime.name == "native":
        await throwaway_container(agent.containers, os.path.join(agent.config.run_dir, "warmup"))


def throwaway_spec(busybox: str) -> dict:
    """CRI's spec as the guest gets it (pod IPC and UTS namespaces, /dev/shm), with kubelet's
    masked and read-only paths, CRI's $PATH and HOME from /etc/passwd, running `sh -c :` from
    the guest's busybox."""
    spec = cri_spec(
        ["sh", "-c", ":"], [CRI_PATH_ENV, "HOSTNAME=warmup"],
        [{"destination": "/bin/sh", "type": "bind", "source": busybox,
          "options": ["rbind", "rprivate", "ro"]},
         {"destination": "/dev/shm", "type": "bind", "source": POD_SHM,
          "options": ["rbind", "rprivate", "rw", "nosuid", "nodev", "noexec"]}],
        [{"type": "pid"}, {"type": "mount"}, {"type": "ipc", "path": f"{POD_NAMESPACES}/ipc"},
         {"type": "uts", "path": f"{POD_NAMESPACES}/uts"}])
    spec["linux"].update(maskedPaths=_MASKED, readonlyPaths=_READONLY)
    return spec


async def throwaway_container(containers, directory: str) -> None:
    busybox = which("busybox")
    if busybox is None:
        return
    rootfs = os.path.join(directory, "rootfs")
    try:
        os.makedirs(os.path.join(rootfs, "etc"), mode=0o755)
        write_text(os.path.join(rootfs, "etc", "passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        spec = json.dumps(throwaway_spec(os.path.realpath(busybox))).encode()
        await containers.create(THROWAWAY_ID, spec, rootfs, False, "native")
        try:
            await containers.start(THROWAWAY_ID)
            await asyncio.wait_for(containers.wait(THROWAWAY_ID, ""), _WAIT_S)
        finally:
            await containers.remove(THROWAWAY_ID, force=True)
    except Exception as exc:
        log.warning("warm-up container: %s", exc)
    finally:
        remove_tree(directory)

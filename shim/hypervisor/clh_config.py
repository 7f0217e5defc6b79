"""Cloud Hypervisor VmConfig payloads (pure, unit-tested).

Field names follow CLH's OpenAPI spec (vmm/src/api/openapi/cloud-hypervisor.yaml).

Shared directory: CLH has no 9p; it shares directories over virtio-fs, which
needs a virtiofsd serving HypervisorConfig.virtiofs_socket. graft does not
run virtiofsd yet, so with virtiofs_socket=None the VM gets no share device
(VmPaths.shared_dir is unused) and the agent's 9p mount of the share tag
fails under CLH. Note that virtio-fs (vhost-user) also requires shared guest
memory, which private template clones do not have.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from .base import HypervisorConfig, HypervisorError, VmPaths
from .kernel_params import guest_cmdline

MIB = 1024 * 1024
MEMORY_ZONE_ID = "mem0"
VSOCK_GUEST_CID = 3
# Guest vsock port the agent listens on under CLH; passed on the kernel
# command line so the agent does not have to guess.
AGENT_VSOCK_PORT = 1024
AGENT_VSOCK_PORT_PARAM = "graft.agent_vsock_port"
SNAPSHOT_FILES = ("config.json", "state.json", "memory-ranges")


def memory_bytes(config: HypervisorConfig) -> int:
    return config.memory_mib * MIB


def memory_config(config: HypervisorConfig) -> dict[str, Any]:
    fbm = config.file_backed_memory
    if fbm is None:
        return {"size": memory_bytes(config), "shared": False}
    # All RAM in one file-backed zone: a snapshot then skips it (O(1) save).
    return {"size": 0, "shared": fbm.shared,
            "zones": [{"id": MEMORY_ZONE_ID, "size": memory_bytes(config),
                       "file": str(fbm.path), "shared": fbm.shared}]}


def vm_config(config: HypervisorConfig, paths: VmPaths) -> dict[str, Any]:
    if not 1 <= config.vcpus <= config.max_vcpus:
        raise HypervisorError(f"vcpus={config.vcpus} must be between 1 and max_vcpus={config.max_vcpus}")
    if config.vmgenid:
        raise HypervisorError("Cloud Hypervisor has no vmgenid device: set vmgenid=False "
                              "(clones are reseeded by the agent)")
    try:
        cmdline = guest_cmdline(config.kernel_params, config.agent_port_name)
        cmdline += f" {AGENT_VSOCK_PORT_PARAM}={AGENT_VSOCK_PORT}"
    except ValueError as exc:
        raise HypervisorError(f"invalid kernel parameters: {exc}") from exc
    payload: dict[str, Any] = {
        "cpus": {"boot_vcpus": config.vcpus, "max_vcpus": config.max_vcpus},
        "memory": memory_config(config),
        "payload": {"kernel": str(config.kernel), "initramfs": str(config.initrd),
                    "cmdline": cmdline},
        "serial": {"mode": "File", "file": str(paths.console_log)},
        "console": {"mode": "Off"},
        "rng": {"src": "/dev/urandom"},
        # Hybrid vsock: the host reaches guest ports through this unix socket.
        "vsock": {"cid": VSOCK_GUEST_CID, "socket": str(paths.agent_socket)},
    }
    if config.virtiofs_socket is not None:
        payload["fs"] = [{"tag": config.share_mount_tag, "socket": str(config.virtiofs_socket),
                          "num_queues": 1, "queue_size": 1024}]
    return payload


def snapshot_config_for_restore(saved: dict[str, Any], config: HypervisorConfig,
                                 paths: VmPaths) -> dict[str, Any]:
    """The config.json a VM restores with: the saved one, with this VM's host
    paths (vsock socket, console, virtio-fs socket) and memory file/sharing.
    Guest-visible shape (vCPUs, RAM size, devices) must match the saved VM."""
    restored = copy.deepcopy(saved)
    saved_memory = restored.get("memory") or {}
    saved_size = saved_memory.get("size", 0) + sum(z.get("size", 0) for z in saved_memory.get("zones") or [])
    if saved_size != memory_bytes(config):
        raise HypervisorError(f"snapshot has {saved_size // MIB} MiB of RAM, config wants "
                              f"{config.memory_mib} MiB")
    saved_cpus = restored.get("cpus") or {}
    if saved_cpus.get("max_vcpus") != config.max_vcpus:
        raise HypervisorError(f"snapshot has max_vcpus={saved_cpus.get('max_vcpus')}, "
                              f"config wants {config.max_vcpus}")
    fbm = config.file_backed_memory
    zones = saved_memory.get("zones") or []
    if fbm is not None:
        if len(zones) != 1:
            raise HypervisorError("snapshot memory is not a single file-backed zone")
        saved_memory["shared"] = fbm.shared
        zones[0]["shared"] = fbm.shared
        zones[0]["file"] = str(fbm.path)
    elif zones:
        raise HypervisorError("snapshot uses file-backed memory but the config has none")
    if "vsock" in restored:
        restored["vsock"]["socket"] = str(paths.agent_socket)
    if "serial" in restored and restored["serial"].get("mode") == "File":
        restored["serial"]["file"] = str(paths.console_log)
    if restored.get("fs"):
        if config.virtiofs_socket is None:
            raise HypervisorError("snapshot has a virtio-fs share but config.virtiofs_socket is unset")
        for fs in restored["fs"]:
            fs["socket"] = str(config.virtiofs_socket)
    return restored


def check_snapshot_dir(directory: Path) -> None:
    missing = [name for name in SNAPSHOT_FILES if not (directory / name).exists()]
    if missing:
        raise HypervisorError(f"no CLH snapshot in {directory} (missing {', '.join(missing)})")

"""One pod sandbox: a VM, its agent, and the host resources it owns.

Phases: launch (prepare dirs → factory boots or restores the VM and sizes it
to the pod → agent CreateSandbox), per container (rootfs bind-mounted into the 9p share), stop
(agent DestroySandbox → VM stop → unmount → remove dirs). Everything a sandbox
creates on the host lives under ``<state_dir>/sandboxes/<id>/`` so that
:func:`cleanup_sandbox_leftovers` can remove it even when the owning process
died.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import signal
import time
from pathlib import Path

import psutil

from shim.agent.client import AgentClient
from shim.config import GraftConfig
from shim.factory.boot import BootPath, boot_vm
from shim.factory.sizing import VmSize
from shim.hypervisor.base import Hypervisor, NetworkDevice, VmPaths
from shim.network import (NoPodInterface, PodEndpoint, agent_interface, agent_routes,
                          attach_endpoint, detach_endpoint)
from shim.sandbox import boot_metrics
from shim.mounts import bind_mount, unmount_all_under
from shim.vmconfig.pod_resources import PodResources

log = logging.getLogger(__name__)

GUEST_SHARE_MOUNT = "/run/graft/shared"
_VALID_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_VMM_PID_FILE = "vmm.pid"
_BOOT_PATH_FILE = "boot_path.json"
_METRICS_FILE = "metrics.prom"
_NETWORK_FILE = "network.json"


class InvalidSandboxId(ValueError):
    pass


def sandbox_dir(config: GraftConfig, sandbox_id: str) -> Path:
    if not _VALID_ID.match(sandbox_id):
        raise InvalidSandboxId(f"invalid sandbox/container id {sandbox_id!r}")
    return config.state_dir / "sandboxes" / sandbox_id


class Sandbox:
    def __init__(self, sandbox_id: str, config: GraftConfig, paths: VmPaths,
                 vm: Hypervisor, agent: AgentClient, boot_path: BootPath,
                 size: VmSize | None = None) -> None:
        self.id = sandbox_id
        self.config = config
        self.paths = paths
        self.vm = vm
        self.agent = agent
        self.boot_path = boot_path
        self.size = size or VmSize(vcpus=vm.config.vcpus, memory_mib=vm.config.memory_mib)
        self._stopped = False
        self._rootfs: dict[str, Path] = {}
        self.endpoint: PodEndpoint | None = None

    @classmethod
    async def launch(cls, sandbox_id: str, config: GraftConfig, netns: Path | None = None,
                     hostname: str = "", dns: list[str] | None = None,
                     resources: PodResources | None = None) -> "Sandbox":
        run_dir = sandbox_dir(config, sandbox_id)
        if run_dir.exists():
            raise FileExistsError(f"sandbox {sandbox_id} already exists at {run_dir}")
        paths = VmPaths(run_dir=run_dir, shared_dir=run_dir / "shared")
        paths.shared_dir.mkdir(parents=True, mode=0o700)
        endpoint: PodEndpoint | None = None
        try:
            if netns is not None:
                endpoint = await _attach_network(netns)
            booted = await boot_vm(config, sandbox_id, paths, netns, resources)
        except BaseException:
            if endpoint is not None:
                await asyncio.to_thread(detach_endpoint, endpoint.netns, endpoint.tap_name)
            _remove_run_dir(run_dir)
            raise
        sandbox = cls(sandbox_id, config, paths, booted.hypervisor, booted.agent,
                      booted.boot_path, booted.size)
        sandbox.endpoint = endpoint
        try:
            sandbox._record_state(booted.seconds)
            if endpoint is not None:
                await sandbox._plug_network(endpoint)
            await booted.agent.create_sandbox(
                sandbox_id=sandbox_id, hostname=hostname or sandbox_id[:63],
                share_mount_tag=booted.hypervisor.config.share_mount_tag,
                share_mount_point=GUEST_SHARE_MOUNT, dns=dns)
        except BaseException:
            await sandbox.stop()
            raise
        log.info("sandbox %s: %s in %.2fs", sandbox_id, booted.boot_path.describe(),
                 booted.seconds)
        return sandbox

    async def _plug_network(self, endpoint: PodEndpoint) -> None:
        """Hot-plug the pod's NIC (same path for cold-booted and restored
        VMs) and hand the pod's addresses and routes to the guest."""
        await self.vm.add_network_device(NetworkDevice(id="net0", tap_name=endpoint.tap_name,
                                                       mac=endpoint.mac))
        await self.agent.update_interface(agent_interface(endpoint))
        await self.agent.update_routes(agent_routes(endpoint))

    def _record_state(self, boot_seconds: float) -> None:
        (self.paths.run_dir / _VMM_PID_FILE).write_text(str(self.vm.pid))
        if self.endpoint is not None:
            (self.paths.run_dir / _NETWORK_FILE).write_text(json.dumps({
                "netns": str(self.endpoint.netns), "tap": self.endpoint.tap_name}))
        record = {
            "restored": self.boot_path.restored, "reason": self.boot_path.reason,
            "boot_seconds": round(boot_seconds, 3), "created_at": time.time(),
            "vcpus": self.size.vcpus, "memory_mib": self.size.memory_mib,
            "shortfalls": list(self.size.shortfalls)}
        (self.paths.run_dir / _BOOT_PATH_FILE).write_text(json.dumps(record))
        boot_metrics.write(self.paths.run_dir / _METRICS_FILE, self.id, record)

    @property
    def vmm_pid(self) -> int | None:
        return self.vm.pid

    async def wait_vm_exit(self) -> int:
        return await self.vm.wait_exit()

    # -- per container -------------------------------------------------------
    def add_container_rootfs(self, container_id: str, rootfs: Path) -> str:
        """Expose *rootfs* to the guest; returns its path inside the guest."""
        sandbox_dir(self.config, container_id)  # validates the id
        if container_id in self._rootfs:
            raise FileExistsError(f"container {container_id} already has a rootfs")
        target = self.paths.shared_dir / container_id / "rootfs"
        target.mkdir(parents=True)
        try:
            bind_mount(rootfs, target)
        except OSError:
            shutil.rmtree(target.parent, ignore_errors=True)
            raise
        self._rootfs[container_id] = target
        return f"{GUEST_SHARE_MOUNT}/{container_id}/rootfs"

    def remove_container_rootfs(self, container_id: str) -> None:
        target = self._rootfs.pop(container_id, None)
        if target is None:
            return
        unmount_all_under(target)
        shutil.rmtree(target.parent, ignore_errors=True)

    # -- whole VM --------------------------------------------------------------
    async def pause_vm(self) -> None:
        await self.vm.pause_vm()

    async def resume_vm(self) -> None:
        await self.vm.resume_vm()

    async def stop(self) -> None:
        """Tear everything down. Idempotent; never raises for a dead VM."""
        if self._stopped:
            return
        self._stopped = True
        if not self.agent.closed:
            try:
                await asyncio.wait_for(self.agent.destroy_sandbox(), 5)
            except Exception as exc:  # the VM may be dead or wedged: stop it anyway
                log.debug("sandbox %s: DestroySandbox failed: %s", self.id, exc)
            await self.agent.close()
        await self.vm.stop_vm()
        if self.endpoint is not None:
            await asyncio.to_thread(detach_endpoint, self.endpoint.netns, self.endpoint.tap_name)
        for container_id in list(self._rootfs):
            self.remove_container_rootfs(container_id)
        _remove_run_dir(self.paths.run_dir)


async def _attach_network(netns: Path) -> PodEndpoint | None:
    """Join the pod's CNI interface to a tap; None when the netns has no
    configured interface (e.g. `ctr run` without CNI): loopback only."""
    try:
        return await asyncio.to_thread(attach_endpoint, netns)
    except NoPodInterface:
        log.info("netns %s has no configured interface: the VM gets loopback only", netns)
        return None


def _remove_run_dir(run_dir: Path) -> None:
    unmount_all_under(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)


def _kill_recorded_vmm(run_dir: Path) -> None:
    try:
        pid = int((run_dir / _VMM_PID_FILE).read_text())
        proc = psutil.Process(pid)
        # Only kill it if it really is this sandbox's VMM (pids get reused).
        if not any(str(run_dir) in arg for arg in proc.cmdline()):
            return
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    except (OSError, ValueError, psutil.Error):
        pass


def cleanup_sandbox_leftovers(config: GraftConfig, sandbox_id: str) -> None:
    """Remove whatever a dead owner left of *sandbox_id*: VMM process,
    mounts, sockets, directories. Safe to call when nothing is left."""
    run_dir = sandbox_dir(config, sandbox_id)
    if not run_dir.exists():
        return
    _kill_recorded_vmm(run_dir)
    try:
        net = json.loads((run_dir / _NETWORK_FILE).read_text())
        detach_endpoint(Path(net["netns"]), net["tap"])
    except (OSError, ValueError, KeyError):
        pass
    _remove_run_dir(run_dir)


def read_boot_path(config: GraftConfig, sandbox_id: str) -> dict | None:
    try:
        return json.loads((sandbox_dir(config, sandbox_id) / _BOOT_PATH_FILE).read_text())
    except (OSError, ValueError):
        return None


def list_sandboxes(config: GraftConfig) -> list[str]:
    root = config.state_dir / "sandboxes"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


__all__ = ["Sandbox", "cleanup_sandbox_leftovers", "read_boot_path", "list_sandboxes",
           "GUEST_SHARE_MOUNT", "InvalidSandboxId"]

"""One pod sandbox: a VM, its agent, and the host resources it owns.

Phases: launch (prepare dirs → factory boots or restores the VM and sizes it
to the pod → agent CreateSandbox), per container (rootfs bind-mounted into the 9p share), stop
(agent DestroySandbox → VM stop → unmount → remove dirs). Everything a sandbox
creates on the host lives under its run dir (shim/sandbox/state.py) so that
state.cleanup_leftovers can remove it even when the owning process died.
"""
from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from pathlib import Path

from shim import failpoints
from shim.agent.client import AgentClient
from shim.config import GraftConfig
from shim.factory.boot import BootedVm, BootPath, boot_vm
from shim.factory.boot_nic import open_clone_tap
from shim.factory.sizing import VmSize
from shim.hypervisor.base import Hypervisor, NetworkDevice, VmPaths
from shim.mounts import bind_mount, mount_tmpfs, unmount_all_under
from shim.network import (NoPodInterface, PodEndpoint, agent_interface, agent_routes,
                          attach_endpoint, detach_endpoint)
from shim.sandbox import boot_metrics, preflight
from shim.sandbox import state
from shim.sandbox.state import SandboxRef, validate_id
from shim.timeline import Timeline
from shim.vmconfig.pod_resources import PodResources

log = logging.getLogger(__name__)

GUEST_SHARE_MOUNT = "/run/graft/shared"
# The share's root holds only directories graft makes (per-container rootfs and volume binds
# are mounts of their own): a small nosuid/nodev tmpfs bounds what the guest can put there.
SHARE_ROOT_BYTES = 16 << 20


class Sandbox:
    def __init__(self, ref: SandboxRef, config: GraftConfig, paths: VmPaths,
                 vm: Hypervisor, agent: AgentClient, boot_path: BootPath,
                 size: VmSize | None = None) -> None:
        self.ref = ref
        self.id = ref.id
        self.config = config
        self.paths = paths
        self.vm = vm
        self.agent = agent
        self.boot_path = boot_path
        self.size = size or VmSize(vcpus=vm.config.vcpus, memory_mib=vm.config.memory_mib)
        self._stop_started = False
        self._stopped = asyncio.Event()
        self._rootfs: dict[str, Path] = {}
        self.endpoint: PodEndpoint | None = None

    @classmethod
    async def launch(cls, ref: SandboxRef | str, config: GraftConfig, netns: Path | None = None,
                     hostname: str = "", dns: list[str] | None = None,
                     resources: PodResources | None = None,
                     timeline: Timeline | None = None) -> "Sandbox":
        ref = SandboxRef.of(ref)
        state.check_socket_room(config)
        preflight.check_host(config, resources)
        timeline = timeline or Timeline()
        run_dir = state.run_dir(config, ref)
        if run_dir.exists():
            raise FileExistsError(f"sandbox {ref.describe()} already exists at {run_dir}")
        paths = VmPaths(run_dir=run_dir, shared_dir=run_dir / "shared")
        paths.shared_dir.mkdir(parents=True, mode=0o700)
        state.write_owner(run_dir, ref)
        timeline.attach(run_dir)
        # The network is attached while the template is validated and the VM launched: a
        # restored clone needs the tap only once its VMM starts (boot_nic.py).
        attaching = asyncio.ensure_future(_attach_network(netns, timeline))
        endpoint: PodEndpoint | None = None

        async def nic_tap() -> int:
            return await asyncio.to_thread(open_clone_tap, await asyncio.shield(attaching),
                                           ref.key)
        booted = None
        try:
            mount_tmpfs(paths.shared_dir, SHARE_ROOT_BYTES)
            booted = await boot_vm(config, ref.id, paths, netns, resources, timeline, nic_tap)
            endpoint = await attaching
            failpoints.reach(failpoints.NETWORK_ATTACHED)
        except BaseException:
            timeline.detach()
            if booted is not None:  # the network failed under a VM that came up
                await _collect([], booted.agent.close())
                await _collect([], booted.hypervisor.stop_vm())
            if not attaching.done():
                attaching.cancel()
            done = await asyncio.gather(attaching, return_exceptions=True)
            attached = done[0]
            if isinstance(attached, PodEndpoint):
                await asyncio.to_thread(detach_endpoint, attached.netns, attached.tap_name)
            state.remove_run_dir(run_dir)
            raise
        return await cls.complete(ref, config, paths, booted, endpoint, hostname, dns, timeline)

    @classmethod
    async def complete(cls, ref: SandboxRef, config: GraftConfig, paths: VmPaths,
                       booted: BootedVm, endpoint: PodEndpoint | None, hostname: str,
                       dns: list[str] | None, timeline: Timeline) -> "Sandbox":
        """The last phase, whichever way the VM came (booted, restored, or handed over from
        the warm pool): record it, give the guest the pod's network, CreateSandbox. On
        failure everything is torn down."""
        sandbox = cls(ref, config, paths, booted.hypervisor, booted.agent,
                      booted.boot_path, booted.size)
        sandbox.endpoint = endpoint
        async def network() -> None:
            if endpoint is not None:
                await sandbox._plug_network(endpoint, booted.nic_mac)
                timeline.mark("nic ready")
                failpoints.reach(failpoints.NIC_ATTACHED)

        async def guest_sandbox() -> None:
            await booted.agent.create_sandbox(
                sandbox_id=ref.id, hostname=hostname or ref.id[:63],
                share_mount_tag=booted.hypervisor.config.share_mount_tag,
                share_mount_point=GUEST_SHARE_MOUNT, dns=dns)
            timeline.mark("sandbox ready")
            failpoints.reach(failpoints.SANDBOX_CREATED)
        try:
            sandbox._record_state(booted.seconds)
            # Independent in the guest: the pod's NIC, and its hostname, DNS and share.
            await _all(network(), guest_sandbox())
        except BaseException:
            timeline.detach()
            await sandbox.stop()
            raise
        log.info("sandbox %s: %s in %.2fs", ref.describe(), booted.boot_path.describe(),
                 booted.seconds)
        return sandbox

    async def _plug_network(self, endpoint: PodEndpoint, present_nic_mac: str) -> None:
        """Give the guest the pod's NIC — the one a restored VM already has (it carries
        *present_nic_mac* and gets the pod's), else hot-plugged — then the pod's MAC,
        addresses and routes."""
        if not present_nic_mac:
            await self.vm.add_network_device(NetworkDevice(
                id="net0", tap_name=endpoint.tap_name, mac=endpoint.mac))
        await self.agent.update_interface(agent_interface(endpoint),
                                          match_hw_addr=present_nic_mac)
        await self.agent.update_routes(agent_routes(endpoint))

    def _record_state(self, boot_seconds: float) -> None:
        run_dir = self.paths.run_dir
        if self.vm.pid is not None:
            state.record_vmm(run_dir, self.vm.pid)
        if self.endpoint is not None:
            (run_dir / state.NETWORK_FILE).write_text(json.dumps({
                "netns": str(self.endpoint.netns), "tap": self.endpoint.tap_name}))
        record = {
            "restored": self.boot_path.restored, "reason": self.boot_path.reason,
            "boot_seconds": round(boot_seconds, 3), "created_at": time.time(),
            "vcpus": self.size.vcpus, "memory_mib": self.size.memory_mib,
            "shortfalls": list(self.size.shortfalls)}
        (run_dir / state.BOOT_PATH_FILE).write_text(json.dumps(record))
        boot_metrics.write(run_dir / state.METRICS_FILE, self.id, record)

    @property
    def vmm_pid(self) -> int | None:
        return self.vm.pid

    async def wait_vm_exit(self) -> int:
        return await self.vm.wait_exit()

    # -- per container -------------------------------------------------------
    def add_container_rootfs(self, container_id: str, rootfs: Path) -> str:
        """Expose *rootfs* to the guest; returns its path inside the guest."""
        validate_id(container_id, "container id")
        if container_id in self._rootfs:
            raise FileExistsError(f"container {container_id} already has a rootfs")
        target = self.paths.shared_dir / container_id / "rootfs"
        target.mkdir(parents=True)
        try:
            bind_mount(rootfs, target, confined=True)
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
        """Tear everything down. Idempotent; never raises for a dead VM. Every step runs even
        when an earlier one fails (a VMM that will not die must not keep the mounts and the
        run dir alive); the first failure is raised at the end."""
        if self._stop_started:
            await self._stopped.wait()
            return
        self._stop_started = True
        failures: list[BaseException] = []
        try:
            if not self.agent.closed:
                try:
                    await asyncio.wait_for(self.agent.destroy_sandbox(), 5)
                except Exception as exc:  # the VM may be dead or wedged: stop it anyway
                    log.debug("sandbox %s: DestroySandbox failed: %s", self.id, exc)
                await _collect(failures, self.agent.close())
            await _collect(failures, self.vm.stop_vm())
            if self.endpoint is not None:
                await _collect(failures, asyncio.to_thread(
                    detach_endpoint, self.endpoint.netns, self.endpoint.tap_name))
            for container_id in list(self._rootfs):
                try:
                    self.remove_container_rootfs(container_id)
                except OSError as exc:
                    failures.append(exc)
            try:
                state.remove_run_dir(self.paths.run_dir)
            except OSError as exc:
                failures.append(exc)
        finally:
            self._stopped.set()
        if failures:
            raise failures[0]


async def _all(*steps) -> None:
    """Run *steps* together; when one fails, wait for the others, then raise the first."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _collect(failures: list[BaseException], step) -> None:
    try:
        await step
    except Exception as exc:
        log.warning("teardown step failed: %s", exc)
        failures.append(exc)


async def _attach_network(netns: Path | None, timeline: Timeline) -> PodEndpoint | None:
    """Join the pod's CNI interface to a tap; None when there is no netns or it has no
    configured interface (e.g. `ctr run` without CNI): loopback only."""
    if netns is None:
        return None
    try:
        return await asyncio.to_thread(attach_endpoint, netns)
    except NoPodInterface:
        log.info("netns %s has no configured interface: the VM gets loopback only", netns)
        return None
    finally:
        timeline.mark("network attached")


__all__ = ["Sandbox", "GUEST_SHARE_MOUNT"]

"""Get a running VM with a connected agent: restore a template or cold boot.

The factory never builds a template inline; templates are made out of band by
`graft factory init`. Whatever path is taken is recorded in :class:`BootPath`
so the sandbox can show it (log line, `graft status [--json]`, its
metrics.prom and `graft metrics`). The VM is then sized to the pod (sizing.py).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from shim import failpoints
from shim.agent.client import AgentClient, connect_agent
from shim.config import GraftConfig
from shim.hypervisor.base import (FileBackedMemoryConfig, Hypervisor, HypervisorConfig,
                                  HypervisorError, VmPaths)
from shim.timeline import Timeline
from shim.vmconfig.hypervisor_config import hypervisor_config

from .boot_nic import TEMPLATE_MAC, open_clone_tap
from shim.vmconfig.pod_resources import PodResources

from .sizing import VmSize, fit_to_request

log = logging.getLogger(__name__)

RESEED_BYTES = 512
# A restored agent answers in ~0.1 s. It keeps its port open while it ends
# the template's host session, so the first check is not lost; should one
# still go unanswered this long, reconnect rather than wait for the whole
# boot timeout (see connect_agent).
RESTORE_CHECK_ATTEMPT_S = 1.0


@dataclass(frozen=True)
class BootPath:
    restored: bool
    reason: str  # why a cold boot happened, or which template was restored

    def describe(self) -> str:
        return f"restored ({self.reason})" if self.restored else f"cold boot ({self.reason})"


@dataclass
class BootedVm:
    hypervisor: Hypervisor
    agent: AgentClient
    boot_path: BootPath
    seconds: float  # launch → agent answering
    size: VmSize | None = None  # set by boot_vm once sized to the pod's request
    # MAC of the NIC the VM already has (restored with its template's); "" = none: the
    # pod's NIC is hot-plugged.
    nic_mac: str = ""


def hypervisor_class(config: GraftConfig) -> type[Hypervisor]:
    if config.get("hypervisor", "kind") == "clh":
        from shim.hypervisor.clh import CloudHypervisor
        return CloudHypervisor
    from shim.hypervisor.qemu import QemuHypervisor
    return QemuHypervisor


def make_hypervisor(config: GraftConfig, vm_id: str, hv_config: HypervisorConfig,
                    paths: VmPaths, netns: Path | None) -> Hypervisor:
    return hypervisor_class(config)(vm_id, hv_config, paths, netns)


def template_hypervisor_config(config: GraftConfig,
                               memory: FileBackedMemoryConfig) -> HypervisorConfig:
    """The VM a template is built as and every clone restored as: file-backed memory, and
    the boot NIC where the VMM supports one (boot_nic.py)."""
    mac = TEMPLATE_MAC if hypervisor_class(config).supports_boot_nic else ""
    return hypervisor_config(config, memory, boot_nic_mac=mac)


# Gives the fd of the tap a clone's boot NIC uses (the caller of boot_vm knows the pod's
# network); the fd is the booting code's to close.
NicTap = Callable[[], Awaitable[int]]


async def _connect(config: GraftConfig, vm: Hypervisor, started: float,
                   attempt_timeout: float | None = None) -> AgentClient:
    loop = asyncio.get_running_loop()
    timeout = float(config.get("agent", "boot_timeout_s"))
    connecting = asyncio.ensure_future(connect_agent(vm.open_agent_stream, started + timeout,
                                                     attempt_timeout=attempt_timeout))
    exited = asyncio.ensure_future(vm.wait_exit())
    try:
        done, _ = await asyncio.wait({connecting, exited}, return_when=asyncio.FIRST_COMPLETED)
        if connecting in done:
            return connecting.result()
        raise HypervisorError(
            f"VM {vm.vm_id} exited (status {exited.result()}) before its agent answered; "
            f"console:\n{vm.console_tail()}")
    except TimeoutError:
        raise HypervisorError(
            f"agent of VM {vm.vm_id} did not answer within {timeout:.0f}s "
            f"(launched {loop.time() - started:.1f}s ago); console:\n{vm.console_tail()}") from None
    finally:
        for task in (connecting, exited):
            task.cancel()
        await asyncio.gather(connecting, exited, return_exceptions=True)


async def cold_boot(config: GraftConfig, vm_id: str, paths: VmPaths,
                    netns: Path | None, reason: str,
                    timeline: Timeline | None = None) -> BootedVm:
    timeline = timeline or Timeline()
    hv_config = hypervisor_config(config)
    vm = make_hypervisor(config, vm_id, hv_config, paths, netns)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await vm.start_vm()
        timeline.mark("vm launched")
        failpoints.reach(failpoints.VM_LAUNCHED)
        agent = await _connect(config, vm, started)
        timeline.mark("agent ready")
    except BaseException:
        await vm.stop_vm()
        raise
    return BootedVm(vm, agent, BootPath(False, reason), loop.time() - started)


async def restore_clone(config: GraftConfig, vm_id: str, paths: VmPaths, netns: Path | None,
                        template_dir: Path, memory_file: Path, reason: str,
                        timeline: Timeline | None = None, nic_tap: NicTap | None = None,
                        memory_readonly: bool = False) -> BootedVm:
    """Restore a clone of the template in *template_dir* (private memory, opened read-only
    where the VMM can: *memory_readonly*), resume it and wait for its agent. *nic_tap*
    backs the template's NIC (a transient tap of the clone's own when not given)."""
    timeline = timeline or Timeline()
    hv_config = template_hypervisor_config(
        config, FileBackedMemoryConfig(path=memory_file, shared=False, readonly=memory_readonly))
    vm = make_hypervisor(config, vm_id, hv_config, paths, netns)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        if hv_config.boot_nic_mac:
            vm.boot_nic_fd = await (nic_tap() if nic_tap is not None else asyncio.to_thread(
                open_clone_tap, None, vm_id))
        try:
            await vm.restore_vm(template_dir)
        finally:
            if vm.boot_nic_fd is not None:  # the VMM holds its own copy (or failed)
                os.close(vm.boot_nic_fd)
                vm.boot_nic_fd = None
        timeline.mark("vm restored")
        failpoints.reach(failpoints.VM_RESTORED)
        await vm.resume_vm()
        failpoints.reach(failpoints.VM_RESUMED)
        agent = await _connect(config, vm, started, attempt_timeout=RESTORE_CHECK_ATTEMPT_S)
        timeline.mark("agent ready")
        try:
            await refresh_clone_identity(agent)
            timeline.mark("clone identity refreshed")
        except BaseException:
            await agent.close()
            raise
    except BaseException:
        await vm.stop_vm()
        raise
    return BootedVm(vm, agent, BootPath(True, reason), loop.time() - started,
                    nic_mac=hv_config.boot_nic_mac)


async def refresh_clone_identity(agent: AgentClient) -> None:
    """Every clone resumes with the template's RNG state and wall clock:
    push fresh host entropy and the current time before anything runs."""
    now_ns = time.time_ns()
    await asyncio.gather(  # independent: one round trip's worth of waiting, not two
        agent.reseed_random_dev(os.urandom(RESEED_BYTES)),
        agent.set_guest_date_time(now_ns // 1_000_000_000, (now_ns // 1000) % 1_000_000))


async def boot_vm(config: GraftConfig, vm_id: str, paths: VmPaths,
                  netns: Path | None = None,
                  resources: PodResources | None = None,
                  timeline: Timeline | None = None, nic_tap: NicTap | None = None) -> BootedVm:
    """Restore from a valid template when enabled, else cold boot, then
    hot-add what the pod asks for beyond the template's size. A template
    problem is never fatal: it is logged and we cold boot."""
    timeline = timeline or Timeline()
    booted = await _restore_or_cold_boot(config, vm_id, paths, netns, timeline, nic_tap)
    try:
        booted.size = await fit_to_request(booted.hypervisor, booted.agent,
                                           resources or PodResources())
        timeline.mark("vm sized")
    except BaseException:
        await booted.agent.close()
        await booted.hypervisor.stop_vm()
        raise
    return booted


async def _restore_or_cold_boot(config: GraftConfig, vm_id: str, paths: VmPaths,
                                netns: Path | None, timeline: Timeline | None = None,
                                nic_tap: NicTap | None = None) -> BootedVm:
    timeline = timeline or Timeline()
    if not config.enable_template:
        return await cold_boot(config, vm_id, paths, netns, "templates disabled", timeline)
    from shim.factory.template import TemplateUnusable, find_usable_template

    try:
        # Off the event loop: validation may hash the kernel/initrd/VMM binary
        # when the digest cache does not know them (yet).
        template = await asyncio.to_thread(find_usable_template, config)
    except TemplateUnusable as why:
        log.info("sandbox %s: cold boot: %s", vm_id, why)
        return await cold_boot(config, vm_id, paths, netns, str(why), timeline)
    except Exception as exc:  # a template problem is never fatal to the pod
        log.warning("sandbox %s: cold boot: cannot inspect the template: %s", vm_id, exc)
        return await cold_boot(config, vm_id, paths, netns,
                               f"cannot inspect the template: {exc}", timeline)
    try:
        timeline.mark("template validated")
        booted = await restore_clone(config, vm_id, paths, netns, template.directory,
                                     template.memory_file, f"template {template.directory}",
                                     timeline, nic_tap,
                                     template.metadata.hypervisor.private_readonly_memory)
    except Exception as exc:  # VMM, agent (TtrpcError) or file trouble; cancellation passes
        log.warning("sandbox %s: restore from %s failed, cold boot instead: %s",
                    vm_id, template.directory, exc)
        return await cold_boot(config, vm_id, paths, netns, f"restore failed: {exc}", timeline)
    log.info("sandbox %s: restored from template %s in %.3fs", vm_id, template.directory,
             booted.seconds)
    return booted

"""Give a booted VM what its pod asks for beyond the template's size.

A template (and so every clone) has the configured ``[hypervisor] vcpus`` and
``memory_mib``. A pod asking for more vCPUs gets them hot-added (up to
``max_vcpus``); a pod asking for more memory than ``memory_mib`` gets one DIMM
hot-added (up to ``max_memory_mib``, rounded up to whole guest memory
blocks). The agent onlines both before anything runs. Cold-booted VMs take
the same path so both boot paths end in the same shape.

The VM's RAM is sized to cover the pod's memory limit (it is not added on top
of ``memory_mib``). What cannot be met (caps, no slots, a VMM without memory
hot-add) is reported (log, boot record, metrics), not failed; a hot-add that
is attempted and fails does fail the sizing.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from shim.agent.client import AgentClient
from shim.hypervisor.base import Hypervisor
from shim.vmconfig.pod_resources import PodResources

log = logging.getLogger(__name__)

MIB = 1 << 20


@dataclass(frozen=True)
class VmSize:
    vcpus: int                  # online in the guest
    memory_mib: int             # guest RAM (boot RAM + hot-added)
    shortfalls: tuple[str, ...] = ()  # requests that were not met in full


def target_vcpus(request: PodResources, base: int, maximum: int) -> tuple[int, str | None]:
    """vCPUs the VM should have, and why it is fewer than asked (if so)."""
    if request.vcpus is None or request.vcpus <= base:
        return base, None
    if request.vcpus > maximum:
        return maximum, (f"pod asks for {request.vcpus} vCPUs, capped at "
                         f"[hypervisor] max_vcpus={maximum}")
    return request.vcpus, None


def memory_to_add(asked_mib: int, base_mib: int, max_mib: int,
                  block_mib: int) -> tuple[int, str | None]:
    """MiB to hot-add so the VM covers *asked_mib* (whole guest memory blocks,
    never beyond *max_mib*), and why that falls short of the request (if so)."""
    if asked_mib <= base_mib:
        return 0, None
    wanted = math.ceil((asked_mib - base_mib) / block_mib) * block_mib
    room = (max(0, max_mib - base_mib) // block_mib) * block_mib
    if wanted <= room:
        return wanted, None
    return room, (f"pod asks for {asked_mib} MiB of memory, capped at {base_mib + room} MiB "
                  f"([hypervisor] max_memory_mib={max_mib}, {block_mib} MiB guest memory blocks)")


def _no_hot_add(vm: Hypervisor, asked_mib: int) -> str:
    if not vm.supports_memory_hotplug:
        why = f"{type(vm).__name__} cannot hot-add memory"
    else:
        why = "memory hot-add is off ([hypervisor] memory_slots / max_memory_mib)"
    return f"pod asks for {asked_mib} MiB of memory, the VM has {vm.config.memory_mib} MiB ({why})"


@dataclass(frozen=True)
class _MemoryPlan:
    add_mib: int = 0
    note: str | None = None
    guest_total_bytes: int = 0  # guest MemTotal before the hot-add


async def _memory_plan(vm: Hypervisor, agent: AgentClient, request: PodResources) -> _MemoryPlan:
    cfg = vm.config
    asked = request.memory_mib
    if asked is None or asked <= cfg.memory_mib:
        return _MemoryPlan()
    if not vm.supports_memory_hotplug or cfg.memory_slots == 0:
        return _MemoryPlan(note=_no_hot_add(vm, asked))
    details = await agent.get_guest_details()
    block = details.mem_block_size_bytes
    if block <= 0 or block % MIB:
        return _MemoryPlan(note=f"pod asks for {asked} MiB of memory, the VM has "
                                f"{cfg.memory_mib} MiB (the guest kernel has no memory hot-plug)")
    add_mib, note = memory_to_add(asked, cfg.memory_mib, cfg.max_memory_mib, block // MIB)
    return _MemoryPlan(add_mib, note, details.memory_total_bytes)


async def _check_guest_memory(vm: Hypervisor, agent: AgentClient, plan: _MemoryPlan,
                              memory_mib: int) -> tuple[int, str | None]:
    """The guest's MemTotal must have grown by the hot-added size (an agent
    that predates OnlineCPUMem.memory_bytes returns before the blocks exist
    and leaves them offline): the VM's usable RAM, and a note if short."""
    grown_mib = ((await agent.get_guest_details()).memory_total_bytes
                 - plan.guest_total_bytes) // MIB
    if grown_mib >= plan.add_mib:
        return memory_mib, None
    usable = vm.config.memory_mib + max(0, grown_mib)
    return usable, (f"hot-added {plan.add_mib} MiB of memory but the guest onlined only "
                    f"{max(0, grown_mib)} MiB (guest agent too old?)")


async def fit_to_request(vm: Hypervisor, agent: AgentClient, request: PodResources) -> VmSize:
    """Hot-add and online the vCPUs and memory the pod asks for; report what
    cannot be met. Raises HypervisorError/TtrpcError when a hot-add fails."""
    base = vm.config.vcpus
    vcpus, cpu_note = target_vcpus(request, base, vm.config.max_vcpus)
    plan = await _memory_plan(vm, agent, request)
    memory_mib, online_note = vm.config.memory_mib, None
    if vcpus > base or plan.add_mib:
        started = time.monotonic()
        if vcpus > base:
            await vm.add_vcpus(vcpus - base)
        if plan.add_mib:
            memory_mib = await vm.add_memory(plan.add_mib)
        # ACPI hot-plug leaves new CPUs and memory blocks offline; the agent
        # onlines them and returns once the guest really has them.
        await agent.online_cpu_mem(vcpus if vcpus > base else 0, cpu_only=not plan.add_mib,
                                   memory_bytes=memory_mib * MIB if plan.add_mib else 0)
        if plan.add_mib:
            memory_mib, online_note = await _check_guest_memory(vm, agent, plan, memory_mib)
        log.info("VM %s: hot-added %d vCPU(s) and %d MiB in %.3fs: %d vCPUs, %d MiB",
                 vm.vm_id, vcpus - base, plan.add_mib, time.monotonic() - started, vcpus,
                 memory_mib)
    shortfalls = tuple(n for n in (cpu_note, plan.note, online_note) if n)
    for note in shortfalls:
        log.warning("VM %s: %s", vm.vm_id, note)
    return VmSize(vcpus=vcpus, memory_mib=memory_mib, shortfalls=shortfalls)

"""Give a booted VM what its pod asks for beyond the template's size.

A template (and so every clone) has the configured ``[hypervisor] vcpus`` and
``memory_mib``; a pod asking for more vCPUs gets them hot-added (up to
``max_vcpus``) and onlined by the agent before anything runs. Cold-booted VMs
take the same path so both boot paths end in the same shape.

Memory cannot be hot-added yet: the QEMU launcher gives the VM no DIMM slots
(``-m size,slots=N,maxmem=M``). A larger memory request is reported (log,
boot record, metrics), not failed: the pod runs with the VM's memory.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from shim.agent.client import AgentClient
from shim.hypervisor.base import Hypervisor
from shim.sandbox.resources import PodResources

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VmSize:
    vcpus: int                  # online in the guest
    memory_mib: int             # guest RAM
    shortfalls: tuple[str, ...] = ()  # requests that were not met in full


def target_vcpus(request: PodResources, base: int, maximum: int) -> tuple[int, str | None]:
    """vCPUs the VM should have, and why it is fewer than asked (if so)."""
    if request.vcpus is None or request.vcpus <= base:
        return base, None
    if request.vcpus > maximum:
        return maximum, (f"pod asks for {request.vcpus} vCPUs, capped at "
                         f"[hypervisor] max_vcpus={maximum}")
    return request.vcpus, None


def memory_shortfall(request: PodResources, memory_mib: int) -> str | None:
    if request.memory_mib is None or request.memory_mib <= memory_mib:
        return None
    return (f"pod asks for {request.memory_mib} MiB of memory, the VM has {memory_mib} MiB "
            f"(memory hot-add is not supported yet)")


async def fit_to_request(vm: Hypervisor, agent: AgentClient, request: PodResources) -> VmSize:
    """Hot-add and online vCPUs the pod asks for; report what cannot be met.
    Raises HypervisorError/TtrpcError when a hot-add the pod needs fails."""
    base = vm.config.vcpus
    vcpus, cpu_note = target_vcpus(request, base, vm.config.max_vcpus)
    if vcpus > base:
        started = time.monotonic()
        await vm.add_vcpus(vcpus - base)
        # ACPI hot-plug leaves new CPUs offline; the agent onlines them and
        # returns once the guest really has that many.
        await agent.online_cpu_mem(vcpus, cpu_only=True)
        log.info("VM %s: hot-added %d vCPU(s) in %.3fs, %d online", vm.vm_id, vcpus - base,
                 time.monotonic() - started, vcpus)
    shortfalls = tuple(n for n in (cpu_note, memory_shortfall(request, vm.config.memory_mib))
                       if n)
    for note in shortfalls:
        log.warning("VM %s: %s", vm.vm_id, note)
    return VmSize(vcpus=vcpus, memory_mib=vm.config.memory_mib, shortfalls=shortfalls)

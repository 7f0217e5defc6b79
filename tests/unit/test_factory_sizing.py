"""Sizing a booted VM to its pod (one layer: hypervisor and agent are fakes
here; tests/integration/test_template_clone.py does it on real QEMU)."""
from __future__ import annotations

from pathlib import Path

import pytest

from graft_agent.api import agent_pb2 as pb
from shim.factory.sizing import fit_to_request, memory_to_add, target_vcpus
from shim.hypervisor.base import HypervisorConfig, HypervisorError
from shim.vmconfig.pod_resources import PodResources

MIB = 1 << 20


class FakeVm:
    supports_memory_hotplug = True

    def __init__(self, vcpus: int = 1, max_vcpus: int = 4, memory_mib: int = 256,
                 memory_slots: int = 2, max_memory_mib: int = 1024, fail: bool = False) -> None:
        self.vm_id = "fake"
        self.config = HypervisorConfig(kernel=Path("k"), initrd=Path("i"), vcpus=vcpus,
                                       max_vcpus=max_vcpus, memory_mib=memory_mib,
                                       memory_slots=memory_slots, max_memory_mib=max_memory_mib)
        self.added: list[int] = []
        self.added_mib: list[int] = []
        self.fail = fail

    async def add_vcpus(self, count: int) -> None:
        if self.fail:
            raise HypervisorError("device_add failed")
        self.added.append(count)

    async def add_memory(self, mib: int) -> int:
        if self.fail:
            raise HypervisorError("device_add failed")
        self.added_mib.append(mib)
        return self.config.memory_mib + sum(self.added_mib)


class NoMemoryHotplugVm(FakeVm):
    supports_memory_hotplug = False


class FakeAgent:
    """Reports MemTotal as 140 MiB of a 256 MiB VM plus whatever memory
    OnlineCPUMem was asked to wait for (a stale agent ignores that field)."""

    def __init__(self, block_mib: int = 128, stale: bool = False) -> None:
        self.onlined: list[tuple[int, bool, int]] = []
        self.block_mib = block_mib
        self.stale = stale
        self.online_bytes = 256 * MIB

    async def online_cpu_mem(self, nb_cpus: int, cpu_only: bool = False,
                             memory_bytes: int = 0) -> None:
        self.onlined.append((nb_cpus, cpu_only, memory_bytes))
        if not self.stale:
            self.online_bytes = max(self.online_bytes, memory_bytes)

    async def get_guest_details(self) -> pb.GuestDetailsResponse:
        return pb.GuestDetailsResponse(mem_block_size_bytes=self.block_mib * MIB,
                                       memory_total_bytes=self.online_bytes - 116 * MIB)


@pytest.mark.parametrize("asked, expected", [
    (None, (1, None)), (1, (1, None)), (3, (3, None)),
    (9, (4, "pod asks for 9 vCPUs, capped at [hypervisor] max_vcpus=4")),
])
def test_target_vcpus(asked: int | None, expected: tuple) -> None:
    assert target_vcpus(PodResources(vcpus=asked), base=1, maximum=4) == expected


async def test_more_vcpus_are_hot_added_and_onlined() -> None:
    vm, agent = FakeVm(), FakeAgent()
    size = await fit_to_request(vm, agent, PodResources(vcpus=3))
    assert (vm.added, agent.onlined) == ([2], [(3, True, 0)])
    assert (size.vcpus, size.memory_mib, size.shortfalls) == (3, 256, ())


async def test_a_request_within_the_template_changes_nothing() -> None:
    vm, agent = FakeVm(vcpus=2), FakeAgent()
    size = await fit_to_request(vm, agent, PodResources(vcpus=2, memory_mib=128))
    assert (vm.added, agent.onlined, size.vcpus, size.shortfalls) == ([], [], 2, ())


async def test_unmet_requests_are_reported_not_failed() -> None:
    vm, agent = FakeVm(max_vcpus=2, max_memory_mib=512), FakeAgent()
    size = await fit_to_request(vm, agent, PodResources(vcpus=8, memory_mib=1024))
    assert size.vcpus == 2 and vm.added == [1] and vm.added_mib == [256]
    assert agent.onlined == [(2, False, 512 * MIB)]
    assert size.memory_mib == 512
    assert size.shortfalls == (
        "pod asks for 8 vCPUs, capped at [hypervisor] max_vcpus=2",
        "pod asks for 1024 MiB of memory, capped at 512 MiB "
        "([hypervisor] max_memory_mib=512, 128 MiB guest memory blocks)")


@pytest.mark.parametrize("asked, expected", [
    (256, (0, None)), (100, (0, None)),
    (257, (128, None)), (384, (128, None)), (385, (256, None)), (1024, (768, None)),
    (1025, (768, "pod asks for 1025 MiB of memory, capped at 1024 MiB "
                  "([hypervisor] max_memory_mib=1024, 128 MiB guest memory blocks)")),
])
def test_memory_to_add_rounds_up_to_whole_blocks(asked: int, expected: tuple) -> None:
    assert memory_to_add(asked, base_mib=256, max_mib=1024, block_mib=128) == expected


def test_memory_to_add_never_exceeds_max_with_a_partial_block() -> None:
    # 256 + 2 x 128 = 512 <= 600 < 640: only whole blocks fit under the cap.
    added, note = memory_to_add(700, base_mib=256, max_mib=600, block_mib=128)
    assert added == 256 and note is not None and "capped at 512 MiB" in note


async def test_more_memory_is_hot_added_in_whole_blocks_and_onlined() -> None:
    vm, agent = FakeVm(), FakeAgent()
    size = await fit_to_request(vm, agent, PodResources(memory_mib=300))
    assert vm.added_mib == [128] and vm.added == []
    assert agent.onlined == [(0, False, 384 * MIB)]  # waits for the memory, not for CPUs
    assert (size.vcpus, size.memory_mib, size.shortfalls) == (1, 384, ())


async def test_cpus_and_memory_are_onlined_in_one_call() -> None:
    vm, agent = FakeVm(), FakeAgent()
    size = await fit_to_request(vm, agent, PodResources(vcpus=2, memory_mib=512))
    assert (vm.added, vm.added_mib, agent.onlined) == ([1], [256], [(2, False, 512 * MIB)])
    assert (size.vcpus, size.memory_mib) == (2, 512)


@pytest.mark.parametrize("vm, why", [
    (FakeVm(memory_slots=0), "memory hot-add is off ([hypervisor] memory_slots / max_memory_mib)"),
    (NoMemoryHotplugVm(), "NoMemoryHotplugVm cannot hot-add memory"),
])
async def test_memory_without_hot_add_is_a_shortfall(vm: FakeVm, why: str) -> None:
    agent = FakeAgent()
    size = await fit_to_request(vm, agent, PodResources(memory_mib=512))
    assert (vm.added_mib, agent.onlined, size.memory_mib) == ([], [], 256)
    assert size.shortfalls == (f"pod asks for 512 MiB of memory, the VM has 256 MiB ({why})",)


async def test_a_guest_without_memory_blocks_is_a_shortfall() -> None:
    vm, agent = FakeVm(), FakeAgent(block_mib=0)
    size = await fit_to_request(vm, agent, PodResources(memory_mib=512))
    assert vm.added_mib == [] and size.memory_mib == 256
    assert size.shortfalls == ("pod asks for 512 MiB of memory, the VM has 256 MiB "
                               "(the guest kernel has no memory hot-plug)",)


async def test_memory_the_guest_did_not_online_is_a_shortfall() -> None:
    vm, agent = FakeVm(), FakeAgent(stale=True)
    size = await fit_to_request(vm, agent, PodResources(memory_mib=512))
    assert vm.added_mib == [256] and size.memory_mib == 256
    assert size.shortfalls == ("hot-added 256 MiB of memory but the guest onlined only 0 MiB "
                               "(guest agent too old?)",)


async def test_a_failed_hot_add_fails_the_sizing() -> None:
    vm, agent = FakeVm(fail=True), FakeAgent()
    with pytest.raises(HypervisorError):
        await fit_to_request(vm, agent, PodResources(vcpus=2))
    with pytest.raises(HypervisorError):
        await fit_to_request(vm, agent, PodResources(memory_mib=512))
    assert agent.onlined == []

"""Sizing a booted VM to its pod (one layer: hypervisor and agent are fakes
here; tests/integration/test_template_clone.py does it on real QEMU)."""
from __future__ import annotations

from pathlib import Path

import pytest

from shim.factory.sizing import fit_to_request, target_vcpus
from shim.hypervisor.base import HypervisorConfig, HypervisorError
from shim.sandbox.resources import PodResources


class FakeVm:
    def __init__(self, vcpus: int = 1, max_vcpus: int = 4, memory_mib: int = 256,
                 fail: bool = False) -> None:
        self.vm_id = "fake"
        self.config = HypervisorConfig(kernel=Path("k"), initrd=Path("i"), vcpus=vcpus,
                                       max_vcpus=max_vcpus, memory_mib=memory_mib)
        self.added: list[int] = []
        self.fail = fail

    async def add_vcpus(self, count: int) -> None:
        if self.fail:
            raise HypervisorError("device_add failed")
        self.added.append(count)


class FakeAgent:
    def __init__(self) -> None:
        self.onlined: list[tuple[int, bool]] = []

    async def online_cpu_mem(self, nb_cpus: int, cpu_only: bool = False) -> None:
        self.onlined.append((nb_cpus, cpu_only))


@pytest.mark.parametrize("asked, expected", [
    (None, (1, None)), (1, (1, None)), (3, (3, None)),
    (9, (4, "pod asks for 9 vCPUs, capped at [hypervisor] max_vcpus=4")),
])
def test_target_vcpus(asked: int | None, expected: tuple) -> None:
    assert target_vcpus(PodResources(vcpus=asked), base=1, maximum=4) == expected


async def test_more_vcpus_are_hot_added_and_onlined() -> None:
    vm, agent = FakeVm(), FakeAgent()
    size = await fit_to_request(vm, agent, PodResources(vcpus=3))
    assert (vm.added, agent.onlined) == ([2], [(3, True)])
    assert (size.vcpus, size.memory_mib, size.shortfalls) == (3, 256, ())


async def test_a_request_within_the_template_changes_nothing() -> None:
    vm, agent = FakeVm(vcpus=2), FakeAgent()
    size = await fit_to_request(vm, agent, PodResources(vcpus=2, memory_mib=128))
    assert (vm.added, agent.onlined, size.vcpus, size.shortfalls) == ([], [], 2, ())


async def test_unmet_requests_are_reported_not_failed() -> None:
    vm, agent = FakeVm(max_vcpus=2), FakeAgent()
    size = await fit_to_request(vm, agent, PodResources(vcpus=8, memory_mib=1024))
    assert size.vcpus == 2 and vm.added == [1]
    assert size.shortfalls == (
        "pod asks for 8 vCPUs, capped at [hypervisor] max_vcpus=2",
        "pod asks for 1024 MiB of memory, the VM has 256 MiB "
        "(memory hot-add is not supported yet)")


async def test_a_failed_hot_add_fails_the_sizing() -> None:
    vm, agent = FakeVm(fail=True), FakeAgent()
    with pytest.raises(HypervisorError):
        await fit_to_request(vm, agent, PodResources(vcpus=2))
    assert agent.onlined == []

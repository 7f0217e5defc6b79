"""The pod's vCPU/memory request as read from its sandbox spec."""
from __future__ import annotations

import pytest

from shim.errors import InvalidArgument
from shim.vmconfig.pod_resources import (CRI_CPU_PERIOD, CRI_CPU_QUOTA, CRI_MEMORY, PodResources,
                                    requested_resources)


def test_cri_sandbox_annotations_round_up() -> None:
    spec = {"annotations": {CRI_CPU_QUOTA: "150000", CRI_CPU_PERIOD: "100000",
                            CRI_MEMORY: str(300 * 1024 * 1024 + 1)}}
    assert requested_resources(spec) == PodResources(vcpus=2, memory_mib=301)


def test_annotations_win_over_linux_resources() -> None:
    spec = {"annotations": {CRI_CPU_QUOTA: "100000", CRI_CPU_PERIOD: "100000"},
            "linux": {"resources": {"cpu": {"quota": 400000, "period": 100000}}}}
    assert requested_resources(spec).vcpus == 1


def test_linux_resources_of_a_pod_of_one() -> None:
    # what `ctr run --cpus 3 --memory-limit 536870912` writes
    spec = {"linux": {"resources": {"cpu": {"quota": 300000, "period": 100000},
                                    "memory": {"limit": 512 * 1024 * 1024}}}}
    assert requested_resources(spec) == PodResources(vcpus=3, memory_mib=512)


@pytest.mark.parametrize("spec", [
    {},
    {"linux": {"resources": {"cpu": {"quota": -1, "period": 100000}}}},
    {"linux": {"resources": {"cpu": {"shares": 1024}, "memory": {"limit": 0}}}},
    {"annotations": {CRI_CPU_QUOTA: "0", CRI_CPU_PERIOD: "100000", CRI_MEMORY: "0"}},
    {"annotations": {CRI_CPU_QUOTA: "50000"}},  # no period: nothing to divide by
])
def test_no_limit_asks_for_nothing(spec: dict) -> None:
    assert requested_resources(spec) == PodResources()


@pytest.mark.parametrize("spec", [
    {"annotations": {CRI_CPU_QUOTA: "lots", CRI_CPU_PERIOD: "100000"}},
    {"annotations": {CRI_MEMORY: "1G"}},
    {"linux": {"resources": {"cpu": {"quota": True, "period": 100000}}}},
])
def test_malformed_values_are_invalid_arguments(spec: dict) -> None:
    with pytest.raises(InvalidArgument):
        requested_resources(spec)

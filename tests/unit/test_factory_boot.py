"""The restore-or-cold-boot decision (shim/factory/boot.py) with the layers
below faked: whatever goes wrong with a template, the pod gets a cold-booted
VM and the reason; a half-restored clone is never left running."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from types import SimpleNamespace

from shim.config import GraftConfig, parse_config
from shim.factory import boot, template as template_mod
from shim.factory.boot import BootedVm, BootPath
from shim.hypervisor.base import VmPaths
from shim.ttrpc import Code, TtrpcError


@pytest.fixture
def config(tmp_path: Path) -> GraftConfig:
    return parse_config({"runtime": {"state_dir": str(tmp_path / "state")},
                         "factory": {"enable_template": True,
                                     "template_path": str(tmp_path / "tpl")}})


@pytest.fixture
def paths(tmp_path: Path) -> VmPaths:
    return VmPaths(run_dir=tmp_path / "run", shared_dir=tmp_path / "run" / "shared")


@pytest.fixture
def cold_boots(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reasons: list[str] = []

    async def fake_cold_boot(config, vm_id, paths, netns, reason, timeline=None):
        reasons.append(reason)
        return BootedVm(hypervisor=None, agent=None, boot_path=BootPath(False, reason),
                        seconds=1.0)
    monkeypatch.setattr(boot, "cold_boot", fake_cold_boot)
    return reasons


class StubTemplate:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.memory_file = directory / "memory"
        self.metadata = SimpleNamespace(
            hypervisor=SimpleNamespace(private_readonly_memory=False))


def a_template(tmp_path: Path) -> StubTemplate:
    return StubTemplate(tmp_path / "tpl" / "tpl-x")


async def test_agent_refusing_the_reseed_means_cold_boot(
        config, paths, cold_boots, tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(template_mod, "find_usable_template", lambda _: a_template(tmp_path))

    async def restore_whose_agent_fails(*args):
        raise TtrpcError(Code.INTERNAL, "ReseedRandomDev: injected")
    monkeypatch.setattr(boot, "restore_clone", restore_whose_agent_fails)
    with caplog.at_level(logging.WARNING, logger="shim.factory.boot"):
        booted = await boot._restore_or_cold_boot(config, "pod", paths, None)
    assert not booted.boot_path.restored
    assert cold_boots == ["restore failed: INTERNAL: ReseedRandomDev: injected"]
    assert any("cold boot instead" in r.getMessage() for r in caplog.records)


async def test_template_inspection_crashing_means_cold_boot(
        config, paths, cold_boots, monkeypatch) -> None:
    def broken(_):
        raise RuntimeError("injected")
    monkeypatch.setattr(template_mod, "find_usable_template", broken)
    booted = await boot._restore_or_cold_boot(config, "pod", paths, None)
    assert not booted.boot_path.restored
    assert cold_boots == ["cannot inspect the template: injected"]


async def test_cancellation_is_not_turned_into_a_cold_boot(
        config, paths, cold_boots, tmp_path, monkeypatch) -> None:
    import asyncio

    monkeypatch.setattr(template_mod, "find_usable_template", lambda _: a_template(tmp_path))

    async def cancelled(*args):
        raise asyncio.CancelledError()
    monkeypatch.setattr(boot, "restore_clone", cancelled)
    with pytest.raises(asyncio.CancelledError):
        await boot._restore_or_cold_boot(config, "pod", paths, None)
    assert cold_boots == []


class FakeVm:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.boot_nic_fd = None

    async def restore_vm(self, directory: Path) -> None:
        self.calls.append("restore")

    async def resume_vm(self) -> None:
        self.calls.append("resume")

    async def stop_vm(self) -> None:
        self.calls.append("stop")


class AgentFailingReseed:
    closed_calls = 0

    async def reseed_random_dev(self, data: bytes) -> None:
        assert len(data) == boot.RESEED_BYTES
        raise TtrpcError(Code.INTERNAL, "injected")

    async def set_guest_date_time(self, sec: int, usec: int) -> None:
        pass

    async def close(self) -> None:
        self.closed_calls += 1


async def test_failed_clone_refresh_stops_the_clone_and_closes_its_agent(
        config, paths, tmp_path, monkeypatch) -> None:
    vm, agent = FakeVm(), AgentFailingReseed()
    monkeypatch.setattr(boot, "template_hypervisor_config",
                        lambda *a, **k: SimpleNamespace(boot_nic_mac=""))
    monkeypatch.setattr(boot, "make_hypervisor", lambda *a: vm)

    async def connected(*args, **kwargs):
        return agent
    monkeypatch.setattr(boot, "_connect", connected)
    with pytest.raises(TtrpcError):
        await boot.restore_clone(config, "pod", paths, None, tmp_path, tmp_path / "memory", "t")
    assert vm.calls == ["restore", "resume", "stop"]
    assert agent.closed_calls == 1

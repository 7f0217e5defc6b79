"""VmBackend's pod-level entry points with shim.sandbox.Sandbox faked: who owns the pod VM.

A VM launched for the CRI pause container's task (or a pod of one) goes with the last container;
one launched through the Sandbox API (launch_pod) outlives its app containers until stop_pod."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shim.factory.boot import BootPath
from shim.factory.sizing import VmSize
from shim.hypervisor.base import VmPaths
from shim.task.backend import ContainerConfig, PodVm
from shim.task.bundle import ContainerKind
from shim.task.errors import FailedPrecondition
from shim.task.stdio import StdioSpec
from shim.task.vm_backend import VmBackend
from shim.vmconfig.pod_resources import PodResources

VMM_PID = 4321


class FakeAgent:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.closed = False

    async def get_oom_event(self) -> str:
        await asyncio.sleep(3600)  # no OOM; cancelled at teardown
        return ""

    async def create_container(self, cid, spec_json, rootfs, stdin, runtime="") -> None:
        self.calls.append(("create", cid))

    async def remove_container(self, cid, force) -> None:
        self.calls.append(("remove", cid))


class FakeSandbox:
    """What VmBackend uses of shim.sandbox.Sandbox, on a fake VM that exits when stopped."""

    launched: list["FakeSandbox"] = []

    def __init__(self, ref, run_dir: Path, netns, hostname, resources) -> None:
        self.ref, self.netns, self.hostname, self.resources = ref, netns, hostname, resources
        self.paths = VmPaths(run_dir=run_dir, shared_dir=run_dir / "shared")
        self.agent = FakeAgent()
        self.vmm_pid = VMM_PID
        self.boot_path = BootPath(restored=False, reason="templates disabled")
        self.size = VmSize(vcpus=2, memory_mib=512)
        self.stopped = False
        self._exit = asyncio.get_running_loop().create_future()

    @classmethod
    async def launch(cls, ref, config, netns=None, hostname="", resources=None, timeline=None):
        sandbox = cls(ref, config.state_dir / ref.id, netns, hostname, resources)
        sandbox.config = config
        cls.launched.append(sandbox)
        return sandbox

    async def wait_vm_exit(self) -> int:
        return await asyncio.shield(self._exit)

    async def stop(self) -> None:
        self.stopped = True
        if not self._exit.done():
            self._exit.set_result(0)

    def add_container_rootfs(self, cid: str, rootfs: Path) -> str:
        return f"/run/graft/shared/{cid}/rootfs"

    def remove_container_rootfs(self, cid: str) -> None:
        pass


@pytest.fixture
def backend(monkeypatch, tmp_path):
    from shim.sandbox import sandbox as sandbox_module

    FakeSandbox.launched = []
    monkeypatch.setattr(sandbox_module, "Sandbox", FakeSandbox)
    config = tmp_path / "graft.toml"
    config.write_text(f'[runtime]\nstate_dir = "{tmp_path / "state"}"\n')
    return VmBackend(str(config), "k8s.io", "/run/containerd.sock")


# As CRI writes them: the pod's namespaces by the sandbox's paths, the network the pod's netns.
_NAMESPACES = [{"type": "pid"}, {"type": "ipc", "path": "/proc/9/ns/ipc"},
               {"type": "uts", "path": "/proc/9/ns/uts"}, {"type": "mount"},
               {"type": "network", "path": "/var/run/netns/cni-1"}]


def _container(tmp_path: Path, cid: str, kind: ContainerKind, sandbox_id: str) -> ContainerConfig:
    return ContainerConfig(id=cid, bundle=tmp_path,
                           spec={"process": {"args": ["sh"]}, "linux": {"namespaces": _NAMESPACES}},
                           rootfs=tmp_path / "rootfs", stdio=StdioSpec("", "", "", False),
                           kind=kind, sandbox_id=sandbox_id)


async def test_a_sandbox_api_vm_outlives_its_containers(backend, tmp_path):
    pod = PodVm("pod1", tmp_path / "netns", "web-0", PodResources(vcpus=2))
    assert await backend.launch_pod(pod) == VMM_PID
    vm = FakeSandbox.launched[0]
    assert (vm.ref.id, vm.ref.namespace, vm.netns, vm.hostname, vm.resources) == \
        ("pod1", "k8s.io", pod.netns, "web-0", pod.resources)
    with pytest.raises(FailedPrecondition):
        await backend.launch_pod(pod)  # one pod VM per shim

    for cid in ("app", "side"):
        assert await backend.create_container(
            _container(tmp_path, cid, ContainerKind.APP, "pod1")) == VMM_PID
        await backend.remove_container(cid)
    assert not vm.stopped  # no container left, the sandbox still stands
    assert await backend.create_container(
        _container(tmp_path, "again", ContainerKind.APP, "pod1")) == VMM_PID
    assert backend.pod_details() == {"boot": "cold boot (templates disabled)", "vcpus": "2",
                                     "memory_mib": "512"}
    assert (await backend.pod_metrics()).DESCRIPTOR.full_name == "io.containerd.cgroups.v2.Metrics"

    waiter = asyncio.ensure_future(backend.wait_pod())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await backend.stop_pod()
    assert vm.stopped and (await asyncio.wait_for(waiter, 5)).status == 0
    with pytest.raises(FailedPrecondition):
        await backend.pod_metrics()
    await backend.stop_pod()  # idempotent
    with pytest.raises(FailedPrecondition):
        await backend.launch_pod(pod)  # the shim ran its pod: no second VM
    await backend.remove_container("again")  # after the VM: host-side cleanup only


async def test_a_pause_container_vm_goes_with_the_last_container(backend, tmp_path):
    assert await backend.create_container(
        _container(tmp_path, "pod2", ContainerKind.POD_VM, "pod2")) == VMM_PID
    vm = FakeSandbox.launched[0]
    await backend.create_container(_container(tmp_path, "app", ContainerKind.APP, "pod2"))
    await backend.remove_container("app")
    assert not vm.stopped  # the pause container's task still holds it
    await backend.remove_container("pod2")
    assert vm.stopped and (await backend.wait_pod()).status == 0


async def test_wait_pod_before_any_launch_is_a_failed_precondition(backend):
    with pytest.raises(FailedPrecondition):
        await backend.wait_pod()
    assert backend.pod_details() == {}

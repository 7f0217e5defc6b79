"""The agent's warm-ups (graft_agent/warmup.py, clone_warmup.py) with the real agent on the
host: the pod's namespaces and /dev/shm are ready before the first container, the throwaway
container leaves nothing behind, WarmUp repeats it until the VM has a sandbox and leaves a
down NIC as it was, and a pod hostname set after the namespaces were made reaches the pod's
UTS namespace. (WarmUp's 9p part runs against QEMU: tests/integration/test_clone_warmup.py.)"""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from agent_harness import AgentClient, AgentProcess, unique
from graft_agent.api import agent_pb2 as pb
from graft_agent.pod_paths import POD_NAMESPACES
from graft_agent.warmup import THROWAWAY_ID
from shim.ttrpc import Code, TtrpcError
from test_agent_pod import holders_of, pod_mounts, pod_spec

pytestmark = [
    pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox"),
    pytest.mark.asyncio(loop_scope="session"),
]


@pytest.fixture(scope="module")
def agent_runtime() -> str:
    return "native"


def warm_ups(agent_process: AgentProcess) -> int:
    return agent_process.log().count(f"removed container {THROWAWAY_ID}")


def assert_nothing_left_running(agent_process: AgentProcess) -> None:
    """No container state: no bundle, no container cgroup, no warm-up rootfs."""
    bundles = agent_process.run_dir / "containers"
    assert not bundles.exists() or list(bundles.iterdir()) == []
    assert [p.name for p in agent_process.cgroup_dir.iterdir() if p.is_dir()] == []
    assert not (agent_process.run_dir / "warmup").exists()


async def test_the_pod_is_ready_before_its_first_container(agent, agent_process):
    await agent.call("Check", pb.CheckRequest())   # waits for the warm-up
    assert len(holders_of(agent_process.pid)) == 1
    assert len(pod_mounts(agent_process.pid)) == 4   # ipc, uts and pid namespaces, shm
    assert warm_ups(agent_process) == 1
    assert_nothing_left_running(agent_process)


async def test_warm_up_again_until_there_is_a_sandbox(agent, agent_process):
    await agent.call("Check", pb.CheckRequest())
    before = warm_ups(agent_process)
    await agent.call("WarmUp", pb.WarmUpRequest())
    assert warm_ups(agent_process) == before + 1
    assert_nothing_left_running(agent_process)
    await agent.call("CreateSandbox", pb.CreateSandboxRequest(sandbox_id="s1", hostname="pod-one"))
    try:
        with pytest.raises(TtrpcError) as refused:
            await agent.call("WarmUp", pb.WarmUpRequest())
        assert refused.value.code is Code.FAILED_PRECONDITION
        assert warm_ups(agent_process) == before + 1
    finally:
        await agent.call("DestroySandbox", pb.DestroySandboxRequest())


async def test_the_pod_hostname_reaches_namespaces_made_before(tmp_path, busybox_rootfs):
    agent_process = AgentProcess(tmp_path, runtime="native")
    agent_process.start()
    try:
        client = await AgentClient.connect(agent_process)
        await client.call("Check", pb.CheckRequest())   # the pod's UTS namespace exists now
        await client.call("CreateSandbox", pb.CreateSandboxRequest(sandbox_id="s2",
                                                                   hostname="pod-two"))
        cid = unique("host")
        doc = json.loads(pod_spec(["hostname"], share_pid=False))
        assert {"type": "uts", "path": f"{POD_NAMESPACES}/uts"} in doc["linux"]["namespaces"]
        await client.call("CreateContainer", pb.CreateContainerRequest(
            container_id=cid, oci_spec_json=json.dumps(doc).encode(),
            rootfs_path=str(busybox_rootfs)))
        await client.start(cid)
        assert (await client.read_all(cid)).decode().strip() == "pod-two"
        assert await client.wait(cid) == 0
        await client.remove(cid)
        await client.call("DestroySandbox", pb.DestroySandboxRequest())
        await client.close()
    finally:
        rc = agent_process.stop()
    assert rc == 0, agent_process.log()
    assert agent_process.leftovers() == [], agent_process.log()


def _in_agent_netns(agent_process: AgentProcess, *argv: str) -> str:
    return subprocess.run(["nsenter", "-t", str(agent_process.pid), "-n", *argv], check=True,
                          capture_output=True, text=True).stdout


def _flags(agent_process: AgentProcess, name: str) -> set[str]:
    shown = _in_agent_netns(agent_process, "ip", "-o", "link", "show", name)
    return set(shown.split("<", 1)[1].split(">", 1)[0].split(","))


@pytest.mark.skipif(shutil.which("nsenter") is None or shutil.which("ip") is None,
                    reason="needs nsenter and ip")
async def test_warm_up_leaves_a_down_nic_down_and_bare(tmp_path):
    agent_process = AgentProcess(tmp_path, runtime="native")
    agent_process.start()
    try:
        client = await AgentClient.connect(agent_process)
        _in_agent_netns(agent_process, "ip", "link", "add", "warm0", "type", "veth",
                        "peer", "name", "warm1")
        before = _flags(agent_process, "warm0")
        assert "UP" not in before
        await client.call("WarmUp", pb.WarmUpRequest())
        links = {i.name: i for i in (await client.call(
            "ListInterfaces", pb.google_dot_protobuf_dot_empty__pb2.Empty())).interfaces}
        assert links["warm0"].addresses == links["warm1"].addresses == []
        assert _flags(agent_process, "warm0") == _flags(agent_process, "warm1") == before
        assert "UP" in _flags(agent_process, "lo")   # an up link is left alone
        await client.close()
    finally:
        rc = agent_process.stop()
    assert rc == 0, agent_process.log()

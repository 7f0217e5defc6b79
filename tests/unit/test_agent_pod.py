"""The pod's shared namespaces and /dev/shm (graft_agent/pod.py), with the real agent on the
host, under crun and under the native runtime: two containers of one pod share IPC, UTS and
/dev/shm, and the PID namespace when asked; the holder goes away with the sandbox."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from agent_harness import AgentClient, AgentProcess, process_alive, spec, unique
from graft_agent.api import agent_pb2 as pb
from graft_agent.pod_paths import POD_NAMESPACES, POD_SHM

pytestmark = [
    pytest.mark.skipif(shutil.which("crun") is None, reason="needs crun"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox (the pod's holder)"),
    pytest.mark.asyncio(loop_scope="session"),
]


@pytest.fixture(scope="module")
def agent_runtime(each_runtime: str) -> str:
    return each_runtime


def pod_spec(args: list[str], share_pid: bool) -> bytes:
    doc = json.loads(spec(args))
    doc.pop("hostname")   # as CRI: the name comes from the pod's UTS namespace
    doc["linux"]["namespaces"] = [
        {"type": "pid", **({"path": f"{POD_NAMESPACES}/pid"} if share_pid else {})},
        {"type": "ipc", "path": f"{POD_NAMESPACES}/ipc"},
        {"type": "uts", "path": f"{POD_NAMESPACES}/uts"},
        {"type": "mount"}, {"type": "network"}]
    doc["mounts"].append({"destination": "/dev/shm", "type": "bind", "source": POD_SHM,
                          "options": ["rbind", "rprivate", "rw"]})
    return json.dumps(doc).encode()


async def run(agent: AgentClient, cid: str, args: list[str], rootfs, share_pid: bool) -> None:
    await agent.call("CreateContainer", pb.CreateContainerRequest(
        container_id=cid, oci_spec_json=pod_spec(args, share_pid), rootfs_path=str(rootfs)))
    await agent.start(cid)


async def test_containers_of_a_pod_share_ipc_uts_and_shm(agent, busybox_rootfs):
    first, second = unique("pod-a"), unique("pod-b")
    await run(agent, first, ["sh", "-c", "echo hi >/dev/shm/x; readlink /proc/self/ns/ipc; "
                                         "readlink /proc/self/ns/uts; hostname; echo ready; "
                                         "sleep 1000"],
              busybox_rootfs, share_pid=False)
    seen_by_first = (await agent.read_until(first, b"ready")).decode().split()
    await run(agent, second, ["sh", "-c", "cat /dev/shm/x; readlink /proc/self/ns/ipc; "
                                          "readlink /proc/self/ns/uts; readlink /proc/self/ns/pid; "
                                          "hostname; ps -o pid,args"],
              busybox_rootfs, share_pid=False)
    seen_by_second = (await agent.read_all(second)).decode().split("\n")
    assert await agent.wait(second) == 0
    assert seen_by_second[0] == "hi"                   # one /dev/shm
    assert seen_by_second[1:3] == seen_by_first[:2]    # one IPC and one UTS namespace
    assert seen_by_second[4] == seen_by_first[2]       # so one hostname
    own = [os.readlink(f"/proc/{agent.agent.pid}/ns/{kind}") for kind in ("ipc", "uts")]
    assert seen_by_second[1:3] != own                  # the pod's, not the agent's
    assert "sleep 1000" not in "\n".join(seen_by_second)   # its own PID namespace
    for cid in (first, second):
        await agent.remove(cid)


async def test_a_pod_sharing_its_pid_namespace(agent, busybox_rootfs):
    first, second = unique("pid-a"), unique("pid-b")
    await run(agent, first, ["sleep", "1000"], busybox_rootfs, share_pid=True)
    await run(agent, second, ["ps", "-o", "pid,args"], busybox_rootfs, share_pid=True)
    listing = (await agent.read_all(second)).decode()
    assert await agent.wait(second) == 0
    lines = [line.split(None, 1) for line in listing.strip().splitlines()[1:]]
    assert lines[0][0] == "1" and "sh -c trap" in lines[0][1]   # the pod's holder
    assert any(args == "sleep 1000" for _, args in lines), listing       # the other container
    assert any(args == "ps -o pid,args" for _, args in lines), listing
    assert not any("graft_agent" in args for _, args in lines), listing  # never the agent
    for cid in (first, second):
        await agent.remove(cid)


def holders_of(agent_pid: int) -> list[int]:
    """The agent's children running the holder script."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == agent_pid and argv[:2] == [b"sh", b"-c"] and argv[2].startswith(b"trap"):
            found.append(int(entry.name))
    return found


def pod_mounts(agent_pid: int) -> list[str]:
    return [line for line in Path(f"/proc/{agent_pid}/mountinfo").read_text().splitlines()
            if "/pod/" in line]


async def test_the_holder_goes_with_the_sandbox(tmp_path, busybox_rootfs, agent_runtime):
    agent_process = AgentProcess(tmp_path, runtime=agent_runtime)
    agent_process.start()
    try:
        client = await AgentClient.connect(agent_process)
        await run(client, "p1", ["sleep", "1000"], busybox_rootfs, share_pid=True)
        holders = holders_of(agent_process.pid)
        assert len(holders) == 1
        assert len(pod_mounts(agent_process.pid)) == 4   # ipc, uts and pid namespaces, shm
        await client.call("DestroySandbox", pb.DestroySandboxRequest())
        assert pod_mounts(agent_process.pid) == []
        assert not (agent_process.run_dir / "pod").exists()
        assert not process_alive(holders[0])
        await client.close()
    finally:
        rc = agent_process.stop()
    assert rc == 0, agent_process.log()
    assert agent_process.leftovers() == [], agent_process.log()

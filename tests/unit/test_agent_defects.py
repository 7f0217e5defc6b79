"""Defects found by reading the agent, reproduced against the real agent on the host (real crun):
exec release, Kill(all) of an exec, stdin against slow or absent readers, SIGINT to PID 1."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal

import pytest

from agent_harness import AgentClient, process_alive, unique
from graft_agent.api import agent_pb2 as pb
from shim.ttrpc import Code, TtrpcError

pytestmark = [
    pytest.mark.skipif(shutil.which("crun") is None, reason="needs crun"),
    pytest.mark.asyncio(loop_scope="session"),
]


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _code_of(call) -> Code:
    with pytest.raises(TtrpcError) as err:
        await call
    return err.value.code


async def _running(agent: AgentClient, cid: str, busybox_rootfs) -> int:
    pid = await agent.create(cid, ["sleep", "1000"], busybox_rootfs)
    await agent.start(cid)
    return pid


async def test_deleted_tty_execs_free_their_fds(agent, busybox_rootfs):
    """Each tty exec holds a pty master until the host deletes it: without DeleteProcess a
    probe loop exhausts the agent's fds."""
    cid = unique("fds")
    await _running(agent, cid, busybox_rootfs)

    async def probe(eid: str) -> None:
        await agent.exec(cid, eid, ["true"], terminal=True)
        await agent.read_all(cid, eid)
        assert await agent.wait(cid, eid) == 0
        await agent.call("DeleteProcess", pb.ProcessRequest(container_id=cid, exec_id=eid))

    await probe("warm-up")
    before = _open_fds(agent.agent.pid)
    for i in range(40):
        await probe(f"probe-{i}")
    assert _open_fds(agent.agent.pid) <= before + 2
    assert await _code_of(agent.wait(cid, "probe-0")) == Code.NOT_FOUND

    await agent.exec(cid, "busy", ["sleep", "1000"], terminal=True)
    assert await _code_of(agent.call("DeleteProcess", pb.ProcessRequest(
        container_id=cid, exec_id="busy"))) == Code.FAILED_PRECONDITION
    assert await _code_of(agent.call("DeleteProcess", pb.ProcessRequest(
        container_id=cid, exec_id=""))) == Code.INVALID_ARGUMENT
    assert await _code_of(agent.call("DeleteProcess", pb.ProcessRequest(
        container_id=cid, exec_id="never"))) == Code.NOT_FOUND
    await agent.remove(cid)


async def test_kill_all_of_an_exec_signals_only_the_exec(agent, busybox_rootfs):
    cid = unique("killall")
    init_pid = await _running(agent, cid, busybox_rootfs)
    await agent.exec(cid, "probe", ["sleep", "1000"])
    await agent.signal(cid, signal.SIGKILL, exec_id="probe", all=True)
    assert await agent.wait(cid, "probe", timeout=10) == 137
    await asyncio.sleep(0.3)  # a cgroup-wide kill would have reached init by now
    assert process_alive(init_pid)
    state = await agent.call("ListProcesses", pb.ContainerRequest(container_id=cid))
    assert init_pid in state.pids
    await agent.remove(cid)


async def _stdin_container(agent: AgentClient, cid: str, args: list[str], busybox_rootfs) -> None:
    await agent.create(cid, args, busybox_rootfs, stdin=True)
    await agent.start(cid)


async def test_stdin_write_to_a_slow_reader_loses_and_repeats_nothing(agent, busybox_rootfs):
    """A write that outlives its deadline must not have written part of its data: the caller
    retries it. Each answer says how much went in."""
    cid = unique("slowin")
    await _stdin_container(agent, cid, ["sh", "-c", "sleep 2; exec cat"], busybox_rootfs)
    data = bytes(range(256)) * 2048  # 512 KiB: many pipe buffers
    output = asyncio.ensure_future(agent.read_all(cid))
    sent = 0
    while sent < len(data):
        try:
            response = await agent.call("WriteStdin", pb.WriteStreamRequest(
                container_id=cid, data=data[sent:]), timeout=0.5)
        except TtrpcError as exc:
            assert exc.code == Code.DEADLINE_EXCEEDED
            continue  # nothing went in: send the same bytes again
        assert response.len > 0
        sent += response.len
    await agent.call("CloseStdin", pb.ProcessRequest(container_id=cid))
    assert await output == data
    assert await agent.wait(cid) == 0
    await agent.remove(cid)


async def test_host_client_waits_for_a_reader_slower_than_its_deadline(agent, busybox_rootfs):
    """shim.agent.client's WriteStdin has no deadline of its own (its default one stands for
    the 60 s that used to cut slow readers off)."""
    from shim.agent.client import AgentClient as HostAgentClient

    cid = unique("hostin")
    await _stdin_container(agent, cid, ["sh", "-c", "sleep 2; exec cat"], busybox_rootfs)
    host = HostAgentClient(agent.client, default_timeout=0.5)
    data = b"z" * (256 * 1024)
    output = asyncio.ensure_future(agent.read_all(cid))
    view = memoryview(data)
    while view:
        view = view[await host.write_stdin(cid, "", bytes(view)):]
    await host.close_stdin(cid)
    assert await output == data
    await agent.remove(cid)


async def test_close_stdin_is_not_stuck_behind_a_blocked_write(agent, busybox_rootfs):
    cid = unique("stuckin")
    await _stdin_container(agent, cid, ["sleep", "1000"], busybox_rootfs)  # never reads
    data = b"q" * (1 << 20)
    first = await agent.call("WriteStdin", pb.WriteStreamRequest(container_id=cid, data=data),
                             timeout=5)
    assert 0 < first.len < len(data)  # the pipe took what fits, at once
    stuck = asyncio.ensure_future(agent.call("WriteStdin", pb.WriteStreamRequest(
        container_id=cid, data=data[first.len:]), timeout=None))
    await asyncio.sleep(0.3)
    assert not stuck.done()
    await agent.call("CloseStdin", pb.ProcessRequest(container_id=cid), timeout=5)
    assert await _code_of(asyncio.wait_for(stuck, 5)) == Code.FAILED_PRECONDITION
    await agent.remove(cid)

"""The guest agent on the host, driven over ttrpc, running containers with real crun/runc and
with its native runtime (every test runs under both defaults)."""

from __future__ import annotations

import asyncio
import shutil
import signal

import pytest

from agent_harness import AgentClient, AgentProcess, process_alive, unique
from graft_agent.api import agent_pb2 as pb
from shim.ttrpc import Code, TtrpcError

pytestmark = [
    pytest.mark.skipif(shutil.which("crun") is None, reason="needs crun"),
    # Client connections live in fixtures: tests and fixtures must share one event loop.
    pytest.mark.asyncio(loop_scope="session"),
]


@pytest.fixture(scope="module")
def agent_runtime(each_runtime: str) -> str:
    return each_runtime


async def test_echo_hello(agent, busybox_rootfs):
    cid = unique("echo")
    pid = await agent.create(cid, ["echo", "hello"], busybox_rootfs)
    assert pid > 0
    await agent.start(cid)
    assert await agent.read_all(cid) == b"hello\n"
    assert await agent.read_all(cid, stream="stderr") == b""
    assert await agent.wait(cid) == 0
    await agent.remove(cid, force=False)
    assert not process_alive(pid)
    assert not (agent.agent.run_dir / "runtime" / "crun" / cid).exists()
    with pytest.raises(TtrpcError) as err:
        await agent.wait(cid)
    assert err.value.code == Code.NOT_FOUND


async def test_stderr_and_exit_status(agent, busybox_rootfs):
    cid = unique("err")
    await agent.create(cid, ["sh", "-c", "echo out; echo err >&2; exit 42"], busybox_rootfs)
    await agent.start(cid)
    assert await agent.wait(cid) == 42
    # Output survives a host that reads only after the exit.
    assert await agent.read_all(cid, stream="stderr") == b"err\n"
    assert await agent.read_all(cid) == b"out\n"
    response = await agent.call("WaitProcess", pb.ProcessRequest(container_id=cid))
    assert response.exit_status == 42 and response.exited_at_ns > 0
    await agent.remove(cid)


async def test_wait_before_start(agent, busybox_rootfs):
    cid = unique("early")
    await agent.create(cid, ["sh", "-c", "exit 7"], busybox_rootfs)
    waiting = asyncio.ensure_future(agent.wait(cid))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await agent.start(cid)
    assert await waiting == 7
    await agent.remove(cid)


async def test_stdin_round_trip(agent, busybox_rootfs):
    cid = unique("cat")
    await agent.create(cid, ["cat"], busybox_rootfs, stdin=True)
    await agent.start(cid)
    written = await agent.call("WriteStdin", pb.WriteStreamRequest(container_id=cid, data=b"ping\n"))
    assert written.len == 5
    assert await agent.read_until(cid, b"ping\n") == b"ping\n"
    await agent.call("WriteStdin", pb.WriteStreamRequest(container_id=cid, data=b"pong"))
    await agent.call("CloseStdin", pb.ProcessRequest(container_id=cid))
    assert await agent.read_all(cid) == b"pong"
    assert await agent.wait(cid) == 0
    with pytest.raises(TtrpcError) as err:
        await agent.call("WriteStdin", pb.WriteStreamRequest(container_id=cid, data=b"late"))
    assert err.value.code == Code.FAILED_PRECONDITION
    await agent.remove(cid)


async def test_exec_into_running_container(agent, busybox_rootfs):
    cid = unique("exec")
    init_pid = await agent.create(cid, ["sleep", "1000"], busybox_rootfs)
    await agent.start(cid)
    exec_pid = await agent.exec(cid, "e1", ["sh", "-c", "echo from-exec; cat /proc/1/cmdline"])
    assert exec_pid not in (0, init_pid)
    assert await agent.read_all(cid, "e1") == b"from-exec\nsleep\x001000\x00"
    assert await agent.wait(cid, "e1") == 0

    # A long-running exec shows up in the container's process list; SIGTERM ends it with 143.
    sleeper = await agent.exec(cid, "e2", ["sleep", "1000"])
    pids = (await agent.call("ListProcesses", pb.ContainerRequest(container_id=cid))).pids
    assert set(pids) == {init_pid, sleeper}
    with pytest.raises(TtrpcError) as err:
        await agent.exec(cid, "e2", ["true"])
    assert err.value.code == Code.ALREADY_EXISTS
    await agent.signal(cid, signal.SIGTERM, exec_id="e2")
    assert await agent.wait(cid, "e2") == 143
    assert not process_alive(sleeper)

    # SIGKILL on init: 137, and the container is stopped for exec.
    await agent.signal(cid, signal.SIGKILL)
    assert await agent.wait(cid) == 137
    with pytest.raises(TtrpcError) as err:
        await agent.exec(cid, "e3", ["true"])
    assert err.value.code == Code.FAILED_PRECONDITION
    with pytest.raises(TtrpcError) as err:
        await agent.signal(cid, signal.SIGKILL)
    assert err.value.code == Code.NOT_FOUND  # already finished
    await agent.remove(cid, force=False)


async def test_exec_stdin(agent, busybox_rootfs):
    cid = unique("execin")
    await agent.create(cid, ["sleep", "1000"], busybox_rootfs)
    await agent.start(cid)
    await agent.exec(cid, "rev", ["sh", "-c", "read line; echo got:$line"], stdin=True)
    await agent.call("WriteStdin", pb.WriteStreamRequest(container_id=cid, exec_id="rev", data=b"abc\n"))
    assert await agent.read_all(cid, "rev") == b"got:abc\n"
    assert await agent.wait(cid, "rev") == 0
    await agent.remove(cid)


async def test_tty_and_resize(agent, busybox_rootfs):
    cid = unique("tty")
    await agent.create(cid, ["sh"], busybox_rootfs, stdin=True, terminal=True)
    await agent.start(cid)
    await agent.call("TtyWinResize", pb.TtyWinResizeRequest(container_id=cid, rows=33, cols=101))
    await agent.call("WriteStdin", pb.WriteStreamRequest(container_id=cid, data=b"tty; stty size; exit 5\n"))
    output = await agent.read_all(cid)
    assert b"/dev/pts/" in output, output
    assert b"33 101" in output, output
    assert await agent.wait(cid) == 5
    # A terminal has no separate stderr.
    assert await agent.read_all(cid, stream="stderr") == b""
    await agent.remove(cid)


async def test_exec_with_tty(agent, busybox_rootfs):
    cid = unique("exectty")
    await agent.create(cid, ["sleep", "1000"], busybox_rootfs)
    await agent.start(cid)
    with pytest.raises(TtrpcError) as err:  # init has no terminal
        await agent.call("TtyWinResize", pb.TtyWinResizeRequest(container_id=cid, rows=10, cols=10))
    assert err.value.code == Code.FAILED_PRECONDITION
    await agent.exec(cid, "t", ["sh", "-c", "sleep 0.3; tty; stty size"], terminal=True)
    await agent.call("TtyWinResize", pb.TtyWinResizeRequest(container_id=cid, exec_id="t", rows=12, cols=34))
    output = await agent.read_all(cid, "t")
    assert b"/dev/pts/" in output and b"12 34" in output, output
    assert await agent.wait(cid, "t") == 0
    await agent.remove(cid)


async def test_late_reader_gets_everything(agent, busybox_rootfs):
    """3 MB of output against a 1 MiB buffer: the container blocks (backpressure) until the
    host reads, and no byte is lost."""
    cid = unique("big")
    await agent.create(cid, ["sh", "-c", "head -c 3000000 /dev/zero; echo done >&2"], busybox_rootfs)
    await agent.start(cid)
    waiting = asyncio.ensure_future(agent.wait(cid))
    await asyncio.sleep(1.0)
    assert not waiting.done()  # stuck writing: the host has not read yet
    data = await agent.read_all(cid)
    assert len(data) == 3000000 and data.count(0) == 3000000
    assert await waiting == 0
    assert await agent.read_all(cid, stream="stderr") == b"done\n"
    await agent.remove(cid)


async def test_stats(agent, busybox_rootfs):
    cid = unique("stats")
    await agent.create(cid, ["sh", "-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; "
                                         "echo busy-done; sleep 1000"], busybox_rootfs)
    await agent.start(cid)
    await agent.read_until(cid, b"busy-done")
    stats = await agent.call("StatsContainer", pb.ContainerRequest(container_id=cid))
    assert stats.cpu.usage_usec > 50_000  # the loop burns well over 50 ms of CPU
    assert stats.cpu.usage_usec >= stats.cpu.user_usec
    assert stats.timestamp_ns > 0
    cgroup = agent.agent.cgroup_dir / cid
    if (cgroup / "pids.current").exists():
        assert stats.pids.current >= 1
    if (cgroup / "memory.current").exists():
        assert stats.memory.usage > 0
    await agent.remove(cid)


async def test_pause_resume(agent, busybox_rootfs):
    cid = unique("pause")
    await agent.create(cid, ["sh", "-c", "while true; do echo tick; sleep 0.05; done"], busybox_rootfs)
    await agent.start(cid)
    await agent.read_until(cid, b"tick")
    with pytest.raises(TtrpcError) as err:
        await agent.call("ResumeContainer", pb.ContainerRequest(container_id=cid))
    assert err.value.code == Code.FAILED_PRECONDITION
    await agent.call("PauseContainer", pb.ContainerRequest(container_id=cid))
    assert (agent.agent.cgroup_dir / cid / "cgroup.freeze").read_text().strip() == "1"
    with pytest.raises(TtrpcError) as err:
        await agent.call("PauseContainer", pb.ContainerRequest(container_id=cid))
    assert err.value.code == Code.FAILED_PRECONDITION
    # Drain what was written before the freeze; then nothing more may arrive.
    for _ in range(20):
        try:
            await agent.call("ReadStdout", pb.ReadStreamRequest(container_id=cid), timeout=0.3)
        except TtrpcError as exc:
            assert exc.code == Code.DEADLINE_EXCEEDED
            break
    with pytest.raises(TtrpcError) as err:
        await agent.call("ReadStdout", pb.ReadStreamRequest(container_id=cid), timeout=0.7)
    assert err.value.code == Code.DEADLINE_EXCEEDED
    await agent.call("ResumeContainer", pb.ContainerRequest(container_id=cid))
    assert b"tick" in await agent.read_until(cid, b"tick", timeout=5)
    # A paused container can still be force-removed.
    await agent.call("PauseContainer", pb.ContainerRequest(container_id=cid))
    await agent.remove(cid, force=True)
    assert not (agent.agent.cgroup_dir / cid).exists()


async def test_update_resources(agent, busybox_rootfs):
    cid = unique("update")
    await agent.create(cid, ["sleep", "1000"], busybox_rootfs)
    await agent.start(cid)
    await agent.call("UpdateContainer", pb.UpdateContainerRequest(container_id=cid, resources_json=b"{}"))
    with pytest.raises(TtrpcError) as err:
        await agent.call("UpdateContainer", pb.UpdateContainerRequest(container_id=cid, resources_json=b"{no"))
    assert err.value.code == Code.INVALID_ARGUMENT
    await agent.remove(cid)


async def test_signal_all_and_force_remove(agent, busybox_rootfs):
    cid = unique("all")
    init_pid = await agent.create(cid, ["sh", "-c", "sleep 1000 & sleep 1000 & wait"], busybox_rootfs)
    await agent.start(cid)
    waiting = asyncio.ensure_future(agent.wait(cid))
    for _ in range(100):
        pids = (await agent.call("ListProcesses", pb.ContainerRequest(container_id=cid))).pids
        if len(pids) == 3:
            break
        await asyncio.sleep(0.05)
    assert len(pids) == 3 and init_pid in pids
    with pytest.raises(TtrpcError) as err:
        await agent.remove(cid, force=False)
    assert err.value.code == Code.FAILED_PRECONDITION
    await agent.signal(cid, signal.SIGKILL, all=True)
    assert await waiting == 137
    assert not any(process_alive(p) for p in pids)
    await agent.remove(cid, force=False)


async def test_force_remove_running(agent, busybox_rootfs):
    cid = unique("force")
    init_pid = await agent.create(cid, ["sleep", "1000"], busybox_rootfs)
    await agent.start(cid)
    exec_pid = await agent.exec(cid, "x", ["sleep", "1000"])
    waiting = asyncio.ensure_future(agent.wait(cid))
    reading = asyncio.ensure_future(agent.read_all(cid, "x"))
    await agent.remove(cid, force=True)
    assert await waiting == 137
    assert await reading == b""
    assert not process_alive(init_pid) and not process_alive(exec_pid)


async def test_remove_created_container(agent, busybox_rootfs):
    cid = unique("created")
    pid = await agent.create(cid, ["true"], busybox_rootfs)
    assert process_alive(pid)  # waiting for `start`
    await agent.remove(cid, force=False)
    assert not process_alive(pid)


async def test_errors(agent, busybox_rootfs):
    async def code_of(method, request):
        with pytest.raises(TtrpcError) as err:
            await agent.call(method, request)
        return err.value.code, err.value.message

    missing = pb.ContainerRequest(container_id="no-such-container")
    for method in ("StartContainer", "PauseContainer", "ResumeContainer", "StatsContainer",
                   "ListProcesses"):
        assert (await code_of(method, missing))[0] == Code.NOT_FOUND, method
    for method, request in [
        ("WaitProcess", pb.ProcessRequest(container_id="no-such-container")),
        ("ReadStdout", pb.ReadStreamRequest(container_id="no-such-container")),
        ("SignalProcess", pb.SignalProcessRequest(container_id="no-such-container", signal=9)),
        ("RemoveContainer", pb.RemoveContainerRequest(container_id="no-such-container")),
        ("ExecProcess", pb.ExecProcessRequest(container_id="no-such-container", exec_id="e")),
    ]:
        assert (await code_of(method, request))[0] == Code.NOT_FOUND, method

    def create(cid, spec_json, rootfs=busybox_rootfs, runtime=""):
        return pb.CreateContainerRequest(container_id=cid, oci_spec_json=spec_json,
                                         rootfs_path=str(rootfs), runtime=runtime)

    from agent_harness import spec
    good = spec(["sleep", "1000"])
    assert (await code_of("CreateContainer", create("bad-json", b"{not json")))[0] == Code.INVALID_ARGUMENT
    assert (await code_of("CreateContainer", create("list", b"[]")))[0] == Code.INVALID_ARGUMENT
    assert (await code_of("CreateContainer", create("../escape", good)))[0] == Code.INVALID_ARGUMENT
    assert (await code_of("CreateContainer", create("norootfs", good, rootfs="/no/such/dir")))[0] \
        == Code.INVALID_ARGUMENT
    assert (await code_of("CreateContainer", create("rt", good, runtime="kata")))[0] == Code.INVALID_ARGUMENT

    # The runtime's own words come back when it fails.
    code, message = await code_of("CreateContainer", create(unique("nobin"), spec(["/no/such/binary"])))
    assert code == Code.INTERNAL and "/no/such/binary" in message, message
    if agent.agent.runtime == "crun":
        assert "crun create failed" in message, message

    cid = unique("dup")
    await agent.create(cid, ["sleep", "1000"], busybox_rootfs)
    assert (await code_of("CreateContainer", create(cid, good)))[0] == Code.ALREADY_EXISTS
    assert (await code_of("ExecProcess", pb.ExecProcessRequest(
        container_id=cid, exec_id="early", process_json=b'{"args": ["true"]}')))[0] == Code.FAILED_PRECONDITION
    await agent.start(cid)
    assert (await code_of("StartContainer", pb.ContainerRequest(container_id=cid)))[0] == Code.FAILED_PRECONDITION
    assert (await code_of("ExecProcess", pb.ExecProcessRequest(
        container_id=cid, exec_id="e", process_json=b"nope")))[0] == Code.INVALID_ARGUMENT
    assert (await code_of("WaitProcess", pb.ProcessRequest(container_id=cid, exec_id="nope")))[0] == Code.NOT_FOUND
    assert (await code_of("SignalProcess", pb.SignalProcessRequest(container_id=cid, signal=999)))[0] \
        == Code.INVALID_ARGUMENT
    await agent.remove(cid)


async def test_runc(agent, busybox_rootfs):
    if shutil.which("runc") is None:
        pytest.skip("runc not installed")
    cid = unique("runc")
    await agent.create(cid, ["sh", "-c", "echo hello from runc; exit 3"], busybox_rootfs, runtime="runc")
    assert (agent.agent.run_dir / "runtime" / "runc" / cid).exists()
    await agent.start(cid)
    assert await agent.read_all(cid) == b"hello from runc\n"
    assert await agent.wait(cid) == 3
    await agent.remove(cid, force=False)
    assert not (agent.agent.run_dir / "runtime" / "runc" / cid).exists()


async def test_runc_exec_and_kill(agent, busybox_rootfs):
    if shutil.which("runc") is None:
        pytest.skip("runc not installed")
    cid = unique("runcx")
    await agent.create(cid, ["sleep", "1000"], busybox_rootfs, runtime="runc")
    await agent.start(cid)
    await agent.exec(cid, "e", ["sh", "-c", "echo exec-ok"])
    assert await agent.read_all(cid, "e") == b"exec-ok\n"
    assert await agent.wait(cid, "e") == 0
    await agent.signal(cid, signal.SIGKILL)
    assert await agent.wait(cid) == 137
    await agent.remove(cid)


async def test_shutdown_leaves_nothing_behind(tmp_path, busybox_rootfs, agent_runtime):
    """SIGTERM to an agent with live containers: every process, runtime state, bundle and
    cgroup is gone afterwards."""
    agent_process = AgentProcess(tmp_path, runtime=agent_runtime)
    agent_process.start()
    try:
        client = await AgentClient.connect(agent_process)
        await client.create("running", ["sleep", "1000"], busybox_rootfs)
        await client.start("running")
        await client.exec("running", "e", ["sleep", "1000"])
        await client.create("created-only", ["sleep", "1000"], busybox_rootfs)
        await client.create("with-runc", ["sleep", "1000"], busybox_rootfs, runtime="runc")
        await client.start("with-runc")
        await client.close()
        assert len([p for p in agent_process.pids_seen if process_alive(p)]) == 4
    finally:
        rc = agent_process.stop()
    assert rc == 0, agent_process.log()
    assert agent_process.leftovers() == [], agent_process.log()


async def test_tty_close_stdin_and_failure_message(agent, busybox_rootfs):
    cid = unique("ttycat")
    await agent.create(cid, ["cat"], busybox_rootfs, stdin=True, terminal=True)
    await agent.start(cid)
    await agent.call("WriteStdin", pb.WriteStreamRequest(container_id=cid, data=b"abc\n"))
    await agent.read_until(cid, b"abc\r\nabc\r\n")  # the terminal's echo, then cat's copy
    await agent.call("CloseStdin", pb.ProcessRequest(container_id=cid))  # ^D: cat sees EOF
    assert await agent.wait(cid, timeout=10) == 0
    await agent.remove(cid)

    with pytest.raises(TtrpcError) as err:
        await agent.create(unique("ttybad"), ["/no/such/binary"], busybox_rootfs, terminal=True)
    assert err.value.code == Code.INTERNAL and "/no/such/binary" in err.value.message

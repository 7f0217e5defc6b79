"""One real VM shared by the module: containers, exec, signals, tty and
teardown through the sandbox layer and the guest agent's API."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import psutil
import pytest
import pytest_asyncio

from shim.config import GraftConfig
from shim.oci import default_process, default_spec
from shim.sandbox.sandbox import Sandbox
from vm_streams import collect

pytestmark = pytest.mark.vm


@pytest_asyncio.fixture(scope="module")
async def sandbox(graft_config: GraftConfig):
    box = await Sandbox.launch("it-sandbox", graft_config)
    yield box
    await box.stop()


async def run_container(box: Sandbox, cid: str, rootfs: Path, args: list[str],
                        terminal: bool = False) -> None:
    guest_rootfs = box.add_container_rootfs(cid, rootfs)
    spec = default_spec(args, terminal=terminal)
    await box.agent.create_container(cid, json.dumps(spec).encode(), guest_rootfs, stdin=False)
    await box.agent.start_container(cid)


async def remove(box: Sandbox, cid: str) -> None:
    await box.agent.remove_container(cid, force=True)
    box.remove_container_rootfs(cid)


async def test_boot_path_is_recorded(sandbox: Sandbox) -> None:
    assert sandbox.boot_path.restored is False
    assert sandbox.boot_path.reason
    assert psutil.pid_exists(sandbox.vmm_pid)


async def test_exec_second_process(sandbox: Sandbox, busybox_rootfs: Path) -> None:
    await run_container(sandbox, "c-exec", busybox_rootfs, ["sleep", "1000"])
    try:
        proc = default_process(["sh", "-c", "echo from-exec; ps | grep -c 'sleep 1000'"])
        pid = await sandbox.agent.exec_process("c-exec", "e1", json.dumps(proc).encode(),
                                               stdin=False)
        assert pid > 0
        out = await collect(sandbox, "c-exec", "e1", "stdout")
        status = await sandbox.agent.wait_process("c-exec", "e1")
        assert status.exit_status == 0
        assert out.splitlines()[0] == b"from-exec"
        assert int(out.splitlines()[1]) >= 1  # exec sees the init's sleep: same container
    finally:
        await remove(sandbox, "c-exec")


async def test_sigterm_exec_gives_143_and_sigkill_init_gives_137(
        sandbox: Sandbox, busybox_rootfs: Path) -> None:
    await run_container(sandbox, "c-sig", busybox_rootfs, ["sleep", "1000"])
    try:
        proc = default_process(["sleep", "1000"])
        await sandbox.agent.exec_process("c-sig", "e-term", json.dumps(proc).encode(),
                                         stdin=False)
        await sandbox.agent.signal_process("c-sig", "e-term", 15)
        status = await asyncio.wait_for(sandbox.agent.wait_process("c-sig", "e-term"), 60)
        assert status.exit_status == 143
        await sandbox.agent.signal_process("c-sig", "", 9)
        status = await asyncio.wait_for(sandbox.agent.wait_process("c-sig", ""), 60)
        assert status.exit_status == 137
    finally:
        await remove(sandbox, "c-sig")


async def test_tty_container_and_resize(sandbox: Sandbox, busybox_rootfs: Path) -> None:
    guest_rootfs = sandbox.add_container_rootfs("c-tty", busybox_rootfs)
    spec = default_spec(["sh", "-c", "read line; echo got:$line; stty size"], terminal=True)
    try:
        await sandbox.agent.create_container("c-tty", json.dumps(spec).encode(), guest_rootfs,
                                             stdin=True)
        await sandbox.agent.tty_win_resize("c-tty", "", 33, 111)
        reader = asyncio.ensure_future(collect(sandbox, "c-tty", "", "stdout"))
        await sandbox.agent.start_container("c-tty")
        await sandbox.agent.write_stdin("c-tty", "", b"ping\n")
        status = await asyncio.wait_for(sandbox.agent.wait_process("c-tty", ""), 60)
        out = await asyncio.wait_for(reader, 30)
        assert status.exit_status == 0
        assert b"got:ping" in out
        assert b"33 111" in out
    finally:
        await remove(sandbox, "c-tty")


async def test_errors_carry_codes(sandbox: Sandbox) -> None:
    from shim.ttrpc import Code, TtrpcError
    with pytest.raises(TtrpcError) as err:
        await sandbox.agent.start_container("no-such-container")
    assert err.value.code == Code.NOT_FOUND
    with pytest.raises(TtrpcError) as err:
        await sandbox.agent.create_container("bad-json", b"{not json", "/nowhere", stdin=False)
    assert err.value.code == Code.INVALID_ARGUMENT


async def test_stop_leaves_nothing(graft_config: GraftConfig, busybox_rootfs: Path) -> None:
    box = await Sandbox.launch("it-teardown", graft_config)
    await run_container(box, "c1", busybox_rootfs, ["sleep", "1000"])
    pid = box.vmm_pid
    run_dir = box.paths.run_dir
    await box.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not run_dir.exists()
    assert str(run_dir) not in Path("/proc/self/mountinfo").read_text()

"""VMM process supervision with real (non-VM) child processes."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from shim.hypervisor import HypervisorError, VmExited
from shim.hypervisor.process import Describer, VmmProcess, race_exit

REPO = Path(__file__).resolve().parents[2]


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


async def test_exit_is_noticed_with_status_and_output(tmp_path: Path) -> None:
    log = tmp_path / "vmm.log"
    proc = await VmmProcess.spawn(["sh", "-c", "echo boom >&2; exit 3"], name="vmm", log_path=log)
    assert await asyncio.wait_for(proc.wait(), 5) == 3
    assert proc.exited.is_set() and proc.returncode == 3
    assert proc.log_tail() == "boom"
    await proc.close()


async def test_stop_kills_and_reaps(tmp_path: Path) -> None:
    event = asyncio.Event()
    proc = await VmmProcess.spawn(["sleep", "100"], name="vmm", log_path=tmp_path / "l", exited=event)
    pid = proc.pid
    assert not gone(pid)
    assert await proc.stop(grace=0.05) == -signal.SIGKILL
    assert event.is_set() and gone(pid)
    await proc.close()  # idempotent


async def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HypervisorError, match="not found"):
        await VmmProcess.spawn(["/nonexistent/vmm"], name="vmm", log_path=tmp_path / "l")


async def test_missing_netns_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HypervisorError, match="cannot open network namespace"):
        await VmmProcess.spawn(["true"], name="vmm", log_path=tmp_path / "l", netns=tmp_path / "nope")


async def test_setns_failure_aborts_the_exec(tmp_path: Path) -> None:
    not_a_netns = tmp_path / "plain"
    not_a_netns.write_text("")
    with pytest.raises(HypervisorError, match="entering netns"):
        await VmmProcess.spawn(["true"], name="vmm", log_path=tmp_path / "l", netns=not_a_netns)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ip netns)")
async def test_child_runs_in_the_netns(tmp_path: Path) -> None:
    name = f"gpt{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        netns = Path("/run/netns") / name
        proc = await VmmProcess.spawn(["readlink", "/proc/self/ns/net"], name="vmm",
                                      log_path=tmp_path / "l", netns=netns)
        assert await proc.wait() == 0
        assert proc.log_tail() == f"net:[{os.stat(netns).st_ino}]"
        assert os.readlink("/proc/self/ns/net") != proc.log_tail()  # the owner stays outside
        await proc.close()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


OWNER = """
import asyncio, sys
from pathlib import Path
from shim.hypervisor.process import VmmProcess

async def main():
    proc = await VmmProcess.spawn(["sleep", "1000"], name="vmm", log_path=Path(sys.argv[1]))
    print(proc.pid, flush=True)
    await asyncio.sleep(1000)

asyncio.run(main())
"""


async def test_child_dies_with_sigkilled_owner(tmp_path: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path / "l")], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE)
    child = None
    try:
        assert owner.stdout is not None
        child = int(owner.stdout.readline())
        assert not gone(child)
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 5
        while not gone(child):
            assert time.monotonic() < deadline, "child outlived its SIGKILLed owner"
            await asyncio.sleep(0.02)
    finally:
        owner.kill()
        owner.wait()
        if child is not None and not gone(child):
            os.kill(child, signal.SIGKILL)


def describer(tmp_path: Path) -> Describer:
    console = tmp_path / "console.log"
    console.write_text("line1\nguest said bye\n")
    return Describer("vm1", tmp_path / "l", console)


async def test_race_exit_returns_result(tmp_path: Path) -> None:
    proc = await VmmProcess.spawn(["sleep", "100"], name="vmm", log_path=tmp_path / "l")
    try:
        assert await race_exit(asyncio.sleep(0, "ok"), proc, timeout=5, what="x",
                               describe=describer(tmp_path)) == "ok"
    finally:
        await proc.close()


async def test_race_exit_reports_exit_with_tails(tmp_path: Path) -> None:
    proc = await VmmProcess.spawn(["sh", "-c", "echo fatal >&2; sleep 0.2; exit 1"], name="vmm",
                                  log_path=tmp_path / "l")
    never = asyncio.get_running_loop().create_future()
    with pytest.raises(VmExited) as err:
        await race_exit(never, proc, timeout=5, what="connect", describe=describer(tmp_path))
    text = str(err.value)
    assert "VM vm1: vmm exited (status 1) during connect" in text
    assert "fatal" in text and "guest said bye" in text
    assert never.cancelled()
    await proc.close()


async def test_race_exit_timeout(tmp_path: Path) -> None:
    proc = await VmmProcess.spawn(["sleep", "100"], name="vmm", log_path=tmp_path / "l")
    try:
        with pytest.raises(HypervisorError, match="timed out after 0.1s during slow"):
            await race_exit(asyncio.sleep(10), proc, timeout=0.1, what="slow",
                            describe=describer(tmp_path))
    finally:
        await proc.close()


async def test_race_exit_socket_error_of_dying_vmm_becomes_vm_exited(tmp_path: Path) -> None:
    proc = await VmmProcess.spawn(["sh", "-c", "sleep 0.1; exit 2"], name="vmm", log_path=tmp_path / "l")

    async def fails() -> None:
        raise ConnectionResetError("peer went away")

    with pytest.raises(VmExited, match="status 2"):
        await race_exit(fails(), proc, timeout=5, what="call", describe=describer(tmp_path))
    await proc.close()


async def test_race_exit_error_of_live_vmm_is_passed_through(tmp_path: Path) -> None:
    proc = await VmmProcess.spawn(["sleep", "100"], name="vmm", log_path=tmp_path / "l")

    async def fails() -> None:
        raise ValueError("bad reply")

    try:
        with pytest.raises(ValueError, match="bad reply"):
            await race_exit(fails(), proc, timeout=5, what="call", describe=describer(tmp_path))
    finally:
        await proc.close()

"""Bounded VMM logs with real processes writing into them (a shell stands in for the VMM)."""
from __future__ import annotations

import asyncio
from pathlib import Path

from shim.hypervisor import bounded_log
from shim.hypervisor.bounded_log import console_log, read_tail, rotated
from shim.hypervisor.process import VmmProcess, tail_of_file

FLOOD = "seq -f 'line %g of the flood' 1 100000"  # ~2 MB


async def test_vmm_output_is_bounded_and_keeps_the_newest(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(bounded_log, "DEFAULT_LIMIT", 64 * 1024)
    path = tmp_path / "vmm.log"
    proc = await VmmProcess.spawn(["sh", "-c", FLOOD], name="flood", log_path=path)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    await proc.close()
    assert path.stat().st_size <= 64 * 1024
    assert 0 < rotated(path).stat().st_size <= 64 * 1024
    assert tail_of_file(path, lines=1) == "line 100000 of the flood"


async def test_console_socket_log_and_tail_across_the_rotation(tmp_path: Path):
    path = tmp_path / "console.log"
    log, vmm_end = console_log(path, limit=1000)
    writer = await asyncio.create_subprocess_exec(
        "sh", "-c", "seq -f 'console %g' 1 300", stdout=vmm_end.fileno())
    vmm_end.close()
    await writer.wait()
    await asyncio.wait_for(log.closed(), 10)
    assert path.stat().st_size <= 1000 and rotated(path).stat().st_size == 1000
    lines = read_tail(path).decode().splitlines()
    assert lines[-1] == "console 300"
    # the newest part is short: the tail reaches back into the rotated part, in order
    assert [int(x.split()[1]) for x in lines[1:]] == list(range(int(lines[1].split()[1]), 301))

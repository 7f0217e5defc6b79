"""The demo's leftover check finds what it claims to look for (real processes, a real tmpfs
mount, a bound socket, a link, a directory), and its table and progress lines read right."""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hack.demo.leftovers import Footprint, leftovers
from hack.demo.progress import Progress, StepFailed
from hack.demo.report import PodRow, table
from hack.demo.web_pods import WebPod
from shim.mounts import mount, umount2


def _footprint(base: Path) -> Footprint:
    return Footprint(base=base, containerd_address=str(base / "ctrd" / "containerd.sock"),
                     containerd_config=base / "ctrd" / "config.toml",
                     fork_server=str(base.parent / "fs.sock"))


def _wait_for_cmdline(proc: subprocess.Popen, start: str) -> None:
    deadline = time.monotonic() + 10
    while not Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace") \
            .startswith(start):
        assert time.monotonic() < deadline, "the stand-in process did not start"
        time.sleep(0.02)


def test_nothing_is_reported_when_nothing_is_there(tmp_path: Path) -> None:
    fp = _footprint(tmp_path / "demo")
    fp.bridge = "gbr-not-there"
    assert leftovers(fp) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_every_kind_of_leftover_is_reported(tmp_path: Path) -> None:
    base = tmp_path / "demo"
    (base / "tpl").mkdir(parents=True)
    fp = _footprint(base)
    fp.bridge = "lo"  # a link that exists
    fp.shim_sockets = {tmp_path / "shim.sock"}
    (tmp_path / "shim.sock").write_text("")  # a socket path left as a file
    # Processes that look like the demo's containerd and its shims' fork server.
    containerd = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                   str(fp.containerd_config)])
    title = f"containerd-shim-graft-v2 fork-server {fp.fork_server}"  # as the server sets it
    fork_server = subprocess.Popen([sys.executable, "-c", "import setproctitle, sys, time; "
                                    "setproctitle.setproctitle(sys.argv[1]); time.sleep(60)",
                                    title])
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mount("demo-test", base / "tpl", "tmpfs", 0, "size=1m")
    try:
        listener.bind(str(base / "x.sock"))
        listener.listen(1)
        _wait_for_cmdline(containerd, sys.executable)
        _wait_for_cmdline(fork_server, title)
        found = leftovers(fp)
    finally:
        umount2(base / "tpl")
        listener.close()
        for proc in (containerd, fork_server):
            proc.kill()
            proc.wait()
    assert sorted(found) == sorted([
        f"containerd pid {containerd.pid}", f"fork server pid {fork_server.pid}",
        f"mount {base}/tpl", "network link lo", f"listening socket {base}/x.sock",
        f"socket file {tmp_path}/shim.sock", f"directory {base}"]), found


def test_table_lines_up_runc_and_graft_rows() -> None:
    rows = [PodRow(WebPod("demo-runc", "runc", "p1", 0.131, "10.222.1.2"),
                   [("runc shim", 10.0), ("2 pod processes", 3.5)]),
            PodRow(WebPod("demo-template", "graft", "p2", 1.2, "10.222.1.3"),
                   [("QEMU", 120.25), ("shim", 30.0)],
                   {"boot_path": "restored", "reason": "template /t/tpl-1", "boot_seconds": 0.18})]
    lines = table(rows)
    assert lines[0].split()[:3] == ["pod", "handler", "pod"]
    assert lines[2].split() == ["demo-runc", "runc", "10.222.1.2", "0.13", "s", "-", "13.5",
                                "MiB", "no", "VM", "(runc:", "host", "kernel)"]
    assert lines[3].split() == ["demo-template", "graft", "10.222.1.3", "1.20", "s", "0.18",
                                "s", "150.2", "MiB", "restored:", "template", "/t/tpl-1"]
    # Columns line up: text left-aligned, numbers right-aligned.
    assert lines[0].index("handler") == lines[2].index(" runc ") + 1 == \
        lines[3].index(" graft ") + 1
    assert lines[0].index("memory (PSS)") + len("memory (PSS)") == \
        lines[2].index("MiB") + 3 == lines[3].index("MiB") + 3
    assert rows[1].memory_detail == "QEMU 120.2 + shim 30.0 MiB"


def test_a_failed_step_names_itself_and_its_cause() -> None:
    out = io.StringIO()
    progress = Progress(out, heartbeat_s=0.05)
    with pytest.raises(StepFailed) as failed:
        with progress.step("cold graft pod", "QEMU boots"):
            time.sleep(0.12)
            raise RuntimeError("guest image missing\nsecond line")
    assert str(failed.value) == "cold graft pod: guest image missing"
    text = out.getvalue()
    assert "==> cold graft pod: QEMU boots …" in text and "… still cold graft pod (0s)" in text
    assert "done in" not in text

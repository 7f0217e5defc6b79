"""graft across containerd restarts and under repeated use, through a real private containerd
1.6 and its CRI, with real QEMU VMs restored from a real template and cold-booted side by side.

  * containerd restarted under running template and cold pods: every pod's containers answer
    ExecSync, their logs go on without a lost line, an exit that happened while containerd
    was down and one after are each reported exactly once, Stop/Remove clean everything;
  * the same, with one pod's shim daemon killed while containerd is down: containerd's
    cleanup (our `delete`) removes that pod, the others go on;
  * a short soak (bench/soak.py runs the long one): sequential template pod cycles and pods
    at once, mixed template and cold; no failure, no leak, fds flat, template unchanged.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "hack" / "containerd"), str(ROOT / "bench")]

import private_containerd  # noqa: E402
from graft_node import GraftNode, template_node  # noqa: E402
from leaks import shim_pids  # noqa: E402
from testing import containerd, skip_or_fail, vm_missing  # noqa: E402,F401

pytestmark = [pytest.mark.containerd, pytest.mark.vm]

cri = pytest.importorskip("cri_api.v1.api_pb2",
                          reason="pip install --no-deps container-runtime-interface-api==2.0.1")

TICKER = ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"]
EXIT_CODE_DOWN, EXIT_CODE_AFTER = 7, 3
# Exits while containerd is down: started just before the restart, it outlives the stop.
EXIT_WHILE_DOWN = ["sh", "-c", f"sleep 4; exit {EXIT_CODE_DOWN}"]
EXIT_ON_TRIGGER = ["sh", "-c", f"while [ ! -e /tmp/go ]; do sleep 0.2; done; exit {EXIT_CODE_AFTER}"]


@pytest.fixture(scope="module")
def node(containerd):
    skip_or_fail(vm_missing())
    with template_node(containerd) as node:
        yield node


class Pod:
    def __init__(self, node: GraftNode, name: str, template: bool) -> None:
        node.configure(template=template)
        self.id = node.cri.run_pod(name, "graft")
        assert node.boot_path(self.id)["restored"] is template
        self.ticker = node.cri.create_start(self.id, "ticker", TICKER)
        self.on_trigger = node.cri.create_start(self.id, "trigger", EXIT_ON_TRIGGER)
        self.down: str | None = None


def _ticks(node: GraftNode, cid: str) -> list[int]:
    text = node.cri.logs(cid, "", 0)
    return [int(m.group(1)) for m in re.finditer(r" stdout F tick (\d+)\n", text)]


def _wait_exited(node: GraftNode, cid: str, timeout: float = 60) -> "cri.ContainerStatus":
    deadline = time.monotonic() + timeout
    while (status := node.cri.container_status(cid)).state != cri.CONTAINER_EXITED:
        assert time.monotonic() < deadline, f"{cid} did not exit: {status}"
        time.sleep(0.3)
    return status


def _count_task_exits(text: str, cid: str) -> int:
    """TaskExit events containerd received for *cid*'s init process (containerd's debug log
    names every event it is forwarded, across restarts)."""
    return sum(1 for line in text.splitlines()
               if "TaskExit" in line and f"ContainerID:{cid},ID:{cid}," in line)


def _restart(node: GraftNode, while_down=None) -> None:
    node.reconnect()
    private_containerd.terminate(node.containerd.layout)
    try:
        if while_down is not None:
            while_down()
    finally:
        private_containerd.launch(node.containerd.layout)
    _wait_cri_ready(node)


def _wait_cri_ready(node: GraftNode, timeout: float = 60) -> None:
    import grpc

    deadline = time.monotonic() + timeout
    while True:
        try:
            node.cri.rt.Status(cri.StatusRequest(), timeout=10)
            return
        except grpc.RpcError as exc:
            assert time.monotonic() < deadline, f"CRI not ready: {exc.details()}"
            time.sleep(0.3)


def _check_survivor(node: GraftNode, pod: Pod, ticks_before: int) -> None:
    sync = node.cri.exec_sync(pod.ticker, ["echo", "after-restart"], 120)
    assert (sync.stdout, sync.exit_code) == (b"after-restart\n", 0)
    deadline = time.monotonic() + 30
    while (ticks := _ticks(node, pod.ticker))[-1] <= ticks_before + 5:
        assert time.monotonic() < deadline, f"{pod.ticker}: its log stopped at {ticks[-1]}"
        time.sleep(0.3)
    # What the ticker wrote while containerd was down waited for the new containerd. Only a
    # line the old one had already read when it was stopped may be missing (containerd reads
    # the fifo ahead of writing the log file, runc's containers lose it the same way).
    missing = sorted(set(range(ticks[-1] + 1)) - set(ticks))
    assert len(ticks) == len(set(ticks)), f"lines repeated: {ticks}"
    assert all(ticks_before < n <= ticks_before + 2 for n in missing) and len(missing) <= 1, (
        f"lines lost: {missing} (containerd stopped after line {ticks_before})")
    if pod.down is not None:  # it exited while containerd was down
        status = _wait_exited(node, pod.down)
        assert status.exit_code == EXIT_CODE_DOWN
    assert node.cri.exec_sync(pod.on_trigger, ["touch", "/tmp/go"], 60).exit_code == 0
    assert _wait_exited(node, pod.on_trigger).exit_code == EXIT_CODE_AFTER
    deadline = time.monotonic() + 10
    while (seen := _count_task_exits(node.log_since(0), pod.on_trigger)) == 0:
        assert time.monotonic() < deadline, f"no exit event for {pod.on_trigger}"
        time.sleep(0.3)
    assert seen == 1, f"{pod.on_trigger}: {seen} exit events"
    if pod.down is not None:
        # Exactly once: containerd learnt this exit when it reloaded the task, or from the
        # shim's event (retried through the restart) — never both, never a second event.
        assert _count_task_exits(node.log_since(0), pod.down) <= 1
        assert node.cri.container_status(pod.down).exit_code == EXIT_CODE_DOWN


def test_containerd_restart_under_template_and_cold_pods(node):
    leaks = node.leak_check()
    pods = [Pod(node, "rs-tpl-0", True), Pod(node, "rs-tpl-1", True), Pod(node, "rs-cold", False)]
    try:
        for pod in pods:
            pod.down = node.cri.create_start(pod.id, "down", EXIT_WHILE_DOWN)
        ticks_before = {pod.id: _ticks(node, pod.ticker)[-1] for pod in pods}
        _restart(node, while_down=lambda: time.sleep(6))  # the `down` containers exit now
        for pod in pods:
            _check_survivor(node, pod, ticks_before[pod.id])
    finally:
        node.remove_all_pods()
    leaks.assert_no_leaks()


def test_shim_killed_while_containerd_is_down(node):
    leaks = node.leak_check()
    victim, survivor = Pod(node, "rs-victim", True), Pod(node, "rs-survivor", True)
    cold = Pod(node, "rs-survivor-cold", False)
    try:
        ticks_before = {pod.id: _ticks(node, pod.ticker)[-1] for pod in (survivor, cold)}
        shims = shim_pids(node.containerd.address, victim.id)
        assert len(shims) == 1, shims

        def kill_victim() -> None:
            os.kill(shims[0], signal.SIGKILL)

        _restart(node, while_down=kill_victim)
        for cid in (victim.ticker, victim.on_trigger):
            assert _wait_exited(node, cid).state == cri.CONTAINER_EXITED
        deadline = time.monotonic() + 60
        while node.cri.pod_status(victim.id).state != cri.SANDBOX_NOTREADY:
            assert time.monotonic() < deadline, "the victim pod is still ready"
            time.sleep(0.3)
        for pod in (survivor, cold):
            _check_survivor(node, pod, ticks_before[pod.id])
    finally:
        node.remove_all_pods()
    leaks.assert_no_leaks()


def test_short_soak(node):
    """bench/soak.py in small: no failure, no leak, fds and RSS flat, the template unchanged."""
    from soak import Soak

    report = Soak(node).run(cycles=6, concurrent=4)
    assert report["failures"] == 0, report["failure_details"]
    assert report["leaks"] == 0, report["leak_details"]
    assert report["template_unchanged"], report["template_files"]
    assert report["concurrent"]["alive_at_once"] == 4
    for name, usage in report["processes"].items():
        assert usage["flat"] is True, (name, usage)

"""Faults injected at every named step of pod and container create (shim/failpoints.py),
through a real private containerd 1.6 and its CRI, real QEMU VMs restored from a real template
(or cold-booted for the cold-only step).

For each step and each action (raise / exit / kill -9 of the shim itself):
  * RunPodSandbox or CreateContainer returns an error — except a failed *restore*, after which
    graft cold-boots the pod instead (its documented fallback), which must then work;
  * containerd can stop and remove what is left;
  * afterwards no VMM, shim daemon, mount, tap, ingress qdisc, tc redirect, shim socket, state
    directory or unreaped fork-server child remains (NodeLeaks: whatever the pod's id was).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1] / "hack" / "containerd")]

from graft_node import GraftNode, template_node  # noqa: E402
from testing import containerd, skip_or_fail, vm_missing  # noqa: E402,F401

from shim import failpoints  # noqa: E402

pytestmark = [pytest.mark.containerd, pytest.mark.vm]

grpc = pytest.importorskip("grpc")
cri = pytest.importorskip("cri_api.v1.api_pb2",
                          reason="pip install --no-deps container-runtime-interface-api==2.0.1")

# Where each sandbox step runs: a template restore, or (QEMU launch) a cold boot.
SANDBOX_CASES = [
    (failpoints.NETWORK_ATTACHED, "template"), (failpoints.VM_LAUNCHED, "cold"),
    (failpoints.VM_RESTORED, "template"), (failpoints.VM_RESUMED, "template"),
    (failpoints.NIC_ATTACHED, "template"), (failpoints.SANDBOX_CREATED, "template"),
]
# A failed restore is not fatal: the pod is cold-booted instead (shim/factory/boot.py).
RESTORE_STEPS = (failpoints.VM_RESTORED, failpoints.VM_RESUMED)


@pytest.fixture(scope="module")
def node(containerd):
    skip_or_fail(vm_missing())
    with template_node(containerd, failpoints=True) as node:
        yield node


def _annotation(step: str, action: str) -> dict[str, str]:
    return {failpoints.ANNOTATION: f"{step}={action}"}


def _pod_state(node: GraftNode, pod: str) -> int:
    return node.cri.pod_status(pod).state


def _assert_fired(node: GraftNode, mark: int, step: str, action: str) -> None:
    """The shim said so in containerd's log before failing: the fault really was injected
    at that step (a test whose pod failed for another reason proves nothing)."""
    deadline = time.monotonic() + 10
    while f"failpoint {step}: {action}" not in node.log_since(mark):
        assert time.monotonic() < deadline, f"failpoint {step}={action} never fired"
        time.sleep(0.2)


def test_annotation_is_ignored_unless_the_config_allows_failpoints(node):
    node.configure(template=True, failpoints=False)
    leaks, mark = node.leak_check(), node.log_mark()
    pod = node.cri.run_pod("fp-off", "graft", _annotation(failpoints.SANDBOX_CREATED, "raise"))
    try:
        cid = node.cri.create_start(pod, "app", ["sleep", "1000"])
        sync = node.cri.exec_sync(cid, ["echo", "alive"], 60)
        assert (sync.stdout, sync.exit_code) == (b"alive\n", 0)
    finally:
        node.cri.stop_remove(pod)
    assert "[testing] failpoints is not enabled" in node.log_since(mark)
    leaks.assert_no_leaks()


@pytest.mark.parametrize("action", failpoints.ACTIONS)
@pytest.mark.parametrize("step, boot", SANDBOX_CASES)
def test_fault_in_sandbox_create(node, step, boot, action):
    node.configure(template=boot == "template", failpoints=True)
    leaks, mark = node.leak_check(), node.log_mark()
    name = f"fp-{step}-{action}"
    if action == "raise" and step in RESTORE_STEPS:
        pod = node.cri.run_pod(name, "graft", _annotation(step, action))
        try:
            record = node.boot_path(pod)
            assert not record["restored"], record
            assert f"restore failed: failpoint {step}" in record["reason"], record
            cid = node.cri.create_start(pod, "app", ["sleep", "1000"])
            assert node.cri.exec_sync(cid, ["true"], 60).exit_code == 0
        finally:
            node.cri.stop_remove(pod)
    else:
        with pytest.raises(grpc.RpcError) as failed:
            node.cri.run_pod(name, "graft", _annotation(step, action))
        if action == "raise":
            assert f"failpoint {step}" in failed.value.details()
        # A failed RunPodSandbox leaves no pod to CRI; should one be listed, it must go too.
        node.remove_all_pods()
    _assert_fired(node, mark, step, action)
    leaks.assert_no_leaks()


@pytest.mark.parametrize("action", failpoints.ACTIONS)
@pytest.mark.parametrize("step", failpoints.CONTAINER_STEPS)
def test_fault_in_container_create(node, step, action):
    """The failpoint is the container's annotation: the pod itself starts normally."""
    node.configure(template=True, failpoints=True)
    leaks, mark = node.leak_check(), node.log_mark()
    pod = node.cri.run_pod(f"fp-{step}-{action}", "graft")
    try:
        with pytest.raises(grpc.RpcError) as failed:
            node.cri.create_start(pod, "doomed", ["sleep", "1000"], _annotation(step, action))
        if action == "raise":
            assert f"failpoint {step}" in failed.value.details()
            # The pod survived it: another container runs in the same VM.
            assert _pod_state(node, pod) == cri.SANDBOX_READY
            cid = node.cri.create_start(pod, "next", ["sleep", "1000"])
            assert node.cri.exec_sync(cid, ["true"], 60).exit_code == 0
        else:
            # The shim died: so did the pod's VM, and containerd notices.
            _wait_not_ready(node, pod)
    finally:
        node.cri.stop_remove(pod)
    _assert_fired(node, mark, step, action)
    leaks.assert_no_leaks()


@pytest.mark.parametrize("action", failpoints.ACTIONS)
@pytest.mark.parametrize("step", [failpoints.NETWORK_ATTACHED, failpoints.NIC_ATTACHED,
                                  failpoints.SANDBOX_CREATED])
def test_fault_while_a_warm_vm_becomes_the_pod(node, step, action):
    """The warm pool's handoff runs the same steps: a fault there fails the pod and leaves
    nothing of it (the pool refills; its waiting VM is not the pod's)."""
    from shim.sandbox.warm import waiting_vms

    # The same config for every case (a rewrite would make the fork server replace its pool;
    # the next test's configure() without cache_size stops it).
    config = node.configure(template=True, failpoints=True, cache_size=1)
    if not waiting_vms(config):  # the fork server learns the pool's config from a pod
        node.cri.stop_remove(node.cri.run_pod("fp-warm-up", "graft"))
    deadline = time.monotonic() + 120
    while not waiting_vms(config):
        assert time.monotonic() < deadline, "no warm VM"
        time.sleep(0.2)
    leaks, mark = node.leak_check(), node.log_mark()
    with pytest.raises(grpc.RpcError):
        node.cri.run_pod(f"fp-warm-{step}-{action}", "graft", _annotation(step, action))
    node.remove_all_pods()
    _assert_fired(node, mark, step, action)
    if action == "raise":  # a dying shim's last lines may not make containerd's log
        deadline = time.monotonic() + 10
        while "warm vm adopted" not in node.log_since(mark):  # the shim's log, copied
            assert time.monotonic() < deadline, "the pod was not a warm VM's"
            time.sleep(0.2)
    leaks.assert_no_leaks()


def _wait_not_ready(node: GraftNode, pod: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _pod_state(node, pod) != cri.SANDBOX_NOTREADY:
        assert time.monotonic() < deadline, f"pod {pod} still ready after its shim died"
        time.sleep(0.3)


@pytest.fixture
def pod_netns():
    """A netns with a configured eth0, as CNI leaves it (its peer is never used)."""
    import subprocess
    import uuid

    name = f"g-fp-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (["link", "add", "eth0", "type", "veth", "peer", "name", "peer0"],
                    ["addr", "add", "192.0.2.2/24", "dev", "eth0"], ["link", "set", "eth0", "up"]):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
        yield Path("/run/netns") / name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


async def test_network_failure_after_boot_stops_the_vm_at_once(node, pod_netns):
    """In-process (no shim exit to hide it): a failure once the VM is up but the network is
    not stops that VM before launch returns, not when the process ends."""
    from leaks import netns_leaks, vmm_pids
    from shim.sandbox.sandbox import Sandbox
    from shim.sandbox.state import SandboxRef, run_dir

    config = node.configure(template=True, failpoints=True)
    failpoints.arm(str(node.containerd.layout.graft_config),
                   {"annotations": _annotation(failpoints.NETWORK_ATTACHED, "raise")})
    ref = SandboxRef("fp-in-process", "graft-test")
    try:
        with pytest.raises(failpoints.FailpointError):
            await Sandbox.launch(ref, config, netns=pod_netns)
    finally:
        failpoints.disarm()
    directory = run_dir(config, ref)
    assert vmm_pids(directory) == [] and not directory.exists()
    assert netns_leaks(pod_netns) == []


async def test_a_container_failing_after_its_guest_create_leaves_nothing_in_the_guest(
        node, busybox_rootfs, tmp_path):
    """Over the shim's own socket (as containerd drives it): a failure after the agent created
    the container removes it in the guest too — the same id can then be created again (the
    guest refuses an id it still has)."""
    from shim_pod import GRAFT, pb, run_exec, start_pod, stop_pod

    node.configure(template=True, failpoints=True)
    leaks = node.leak_check()
    shim = await start_pod(node.containerd, GRAFT, "fp-guest", tmp_path, busybox_rootfs,
                           node.containerd.layout.graft_config)
    try:
        doomed = shim.app_spec(["sleep", "1000"])
        doomed["annotations"].update(_annotation(failpoints.CONTAINER_CREATED, "raise"))
        code = await shim.code_of("Create", shim.create_request("again", doomed),
                                  pb.CreateTaskResponse)
        assert code.name != "OK"
        retry = shim.app_spec(["sh", "-c", "exit 4"])
        await shim.call("Create", shim.create_request("again", retry), pb.CreateTaskResponse)
        await shim.call("Start", pb.StartRequest(id="again"), pb.StartResponse)
        waited = await shim.call("Wait", pb.WaitRequest(id="again"), pb.WaitResponse)
        assert waited.exit_status == 4
        await shim.call("Delete", pb.DeleteRequest(id="again"), pb.DeleteResponse)
        assert await run_exec(shim, ["true"]) == 0
    finally:
        await stop_pod(node.containerd, shim)
    leaks.assert_no_leaks()

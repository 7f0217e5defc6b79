"""Faults under a real private containerd 1.6 with the graft runtime (real QEMU VMs):

  * QEMU killed under a running `ctr run` task: Wait returns, an exit event is published, the
    task and container delete cleanly;
  * the shim daemon killed: containerd's cleanup (our `delete` binary) removes the VM, mounts,
    tap and socket — checked before CRI's own StopPodSandbox gets a chance to;
  * containerd restarted with the same directories: the shim is reached again through the
    bundle's `address` file; the task can be exec'd, killed (exit event) and deleted.

Every test ends with a leak check: VMM and shim processes, mounts under the graft state dir and
the bundles, the shim socket in /run/containerd/s, the pod's tap.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "hack" / "containerd"))

import private_containerd  # noqa: E402
from testing import containerd, skip_or_fail, vm_missing  # noqa: E402,F401

from leaks import TASK_DIR, PodLeaks, netns_links, shim_pids, vmm_pids  # noqa: E402
from shim.network import DEFAULT_TAP_NAME  # noqa: E402

pytestmark = pytest.mark.containerd

RUNTIME = "io.containerd.graft.v2"
IMAGE = "graft.local/busybox:latest"


@pytest.fixture(scope="module")
def vm_ready():
    skip_or_fail(vm_missing())


# -- containerd events ------------------------------------------------------------------------

_EVENT_LINE = re.compile(r"^.+? UTC (?P<ns>\S+) (?P<topic>/\S+) (?P<body>\{.*\})$")


class EventLog:
    """`ctr events` running in the background, its lines parsed on demand."""

    def __init__(self, containerd, path: Path) -> None:
        self._containerd = containerd
        self._path = path
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "EventLog":
        with open(self._path, "wb") as out:
            self._proc = subprocess.Popen(["ctr", "--address", self._containerd.address, "events"],
                                          stdout=out, stderr=subprocess.STDOUT)
        time.sleep(0.5)  # subscribed before anything we look for happens
        return self

    def __exit__(self, *exc) -> None:
        assert self._proc is not None
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def events(self) -> list[tuple[str, dict]]:
        out = []
        for line in self._path.read_text(errors="replace").splitlines():
            if m := _EVENT_LINE.match(line):
                out.append((m.group("topic"), json.loads(m.group("body"))))
        return out

    def wait_for(self, topic: str, container_id: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for seen, body in self.events():
                if seen == topic and body.get("container_id") == container_id:
                    return body
            assert time.monotonic() < deadline, (
                f"no {topic} for {container_id}; saw {[t for t, _ in self.events()]}")
            time.sleep(0.2)


# -- helpers -------------------------------------------------------------------------------

def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _task_status(containerd, container_id: str) -> str | None:
    for line in containerd.ctr("task", "ls").stdout.decode().splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == container_id:
            return fields[-1]
    return None


def _restart_containerd(containerd) -> None:
    private_containerd.terminate(containerd.layout)
    private_containerd.launch(containerd.layout)


# -- (a) QEMU dies under a running task -------------------------------------------------------

def test_vmm_killed_under_running_task(containerd, vm_ready, tmp_path):
    cid = "fault-vmm"
    pod = PodLeaks(containerd, cid, "default", [cid])
    with EventLog(containerd, tmp_path / "events") as events:
        run = subprocess.Popen(["ctr", "--address", containerd.address, "run", "--runtime",
                                RUNTIME, IMAGE, cid, "sleep", "1000"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        try:
            _wait_until(lambda: _task_status(containerd, cid) == "RUNNING" or run.poll() is not None,
                        180, "the task to run")
            assert run.poll() is None, run.communicate()
            vmms = vmm_pids(pod.run_dir)
            assert len(vmms) == 1, vmms
            os.kill(vmms[0], signal.SIGKILL)
            _, stderr = run.communicate(timeout=60)  # Wait answered: ctr returns
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        assert run.returncode not in (0, None), stderr
        exit_event = events.wait_for("/tasks/exit", cid)
        assert exit_event.get("exit_status") == run.returncode, stderr
        events.wait_for("/tasks/delete", cid)  # `ctr run` deletes its task after Wait
        assert [t for t, body in events.events() if body.get("container_id") == cid] == [
            "/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    try:
        assert _task_status(containerd, cid) is None
    finally:
        containerd.ctr("task", "rm", "-f", cid, check=False)
        containerd.ctr("container", "rm", cid, check=False)
    assert cid not in containerd.ctr("container", "ls", "-q").stdout.decode().split()
    pod.assert_no_leaks()


# -- (b) the shim daemon dies ----------------------------------------------------------------

cri = None  # imported lazily: the CRI client is optional for the other tests


def _cri_stub(containerd):
    global cri
    grpc = pytest.importorskip("grpc")
    cri = pytest.importorskip("cri_api.v1.api_pb2",
                              reason="pip install --no-deps container-runtime-interface-api==2.0.1")
    from cri_api.v1 import api_pb2_grpc

    channel = grpc.insecure_channel(f"unix://{containerd.address}")
    return channel, api_pb2_grpc.RuntimeServiceStub(channel)


def _run_cri_pod(rt, containerd, name: str) -> tuple[str, str, "cri.PodSandboxConfig"]:
    uid = f"{name}-{os.getpid()}"
    pod_config = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, namespace="default", uid=uid),
        hostname=name, log_directory=str(containerd.layout.base / "pod-logs" / uid),
        linux=cri.LinuxPodSandboxConfig())
    pod = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config, runtime_handler="graft"),
                           timeout=300).pod_sandbox_id
    try:
        cid = rt.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=pod, sandbox_config=pod_config, config=cri.ContainerConfig(
                metadata=cri.ContainerMetadata(name="app"), image=cri.ImageSpec(image=IMAGE),
                command=["sleep", "1000"], log_path="app.log",
                linux=cri.LinuxContainerConfig())), timeout=300).container_id
        rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=300)
    except BaseException:
        _remove_cri_pod(rt, pod)
        raise
    return pod, cid, pod_config


def _remove_cri_pod(rt, pod: str) -> None:
    rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=120)
    rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=120)


def _wait_cri_ready(rt, timeout: float = 60) -> None:
    """After a containerd start the CRI plugin restores its state before it serves."""
    import grpc

    deadline = time.monotonic() + timeout
    while True:
        try:
            rt.Status(cri.StatusRequest(), timeout=10)
            return
        except grpc.RpcError as exc:
            assert time.monotonic() < deadline, f"CRI not ready: {exc.details()}"
            time.sleep(0.3)


def _pod_netns(containerd, pod: str) -> Path:
    bundle = containerd.layout.base / "state" / TASK_DIR / "k8s.io" / pod
    spec = json.loads((bundle / "config.json").read_text())
    return next(Path(ns["path"]) for ns in spec["linux"]["namespaces"] if ns["type"] == "network")


def test_vmm_killed_under_cri_pod(containerd, vm_ready):
    """The pod VM dies: CRI learns of both exits (through Wait), then Stop/RemovePodSandbox
    clean up everything, tap and redirects included."""
    channel, rt = _cri_stub(containerd)
    try:
        pod, cid, _ = _run_cri_pod(rt, containerd, "fault-vmm-cri")
        leftovers = PodLeaks(containerd, pod, "k8s.io", [pod, cid], _pod_netns(containerd, pod))
        try:
            vmms = vmm_pids(leftovers.run_dir)
            assert len(vmms) == 1, vmms
            os.kill(vmms[0], signal.SIGKILL)
            _wait_until(lambda: rt.ContainerStatus(cri.ContainerStatusRequest(
                container_id=cid)).status.state == cri.CONTAINER_EXITED, 30, "container exit")
            _wait_until(lambda: rt.PodSandboxStatus(cri.PodSandboxStatusRequest(
                pod_sandbox_id=pod)).status.state == cri.SANDBOX_NOTREADY, 30, "pod not ready")
            status = rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid)).status
            assert status.exit_code != 0
        finally:
            _remove_cri_pod(rt, pod)
        leftovers.assert_no_leaks()
    finally:
        channel.close()


def test_shim_killed_containerd_cleanup_leaves_nothing(containerd, vm_ready):
    channel, rt = _cri_stub(containerd)
    try:
        pod, cid, _ = _run_cri_pod(rt, containerd, "fault-shim")
        netns = _pod_netns(containerd, pod)
        leftovers = PodLeaks(containerd, pod, "k8s.io", [pod, cid], netns)
        try:
            assert vmm_pids(leftovers.run_dir), "the pod VM is not running"
            assert DEFAULT_TAP_NAME in netns_links(netns), "the pod has no tap: nothing to test"
            shims = shim_pids(containerd.address, pod)
            assert len(shims) == 1, shims
            os.kill(shims[0], signal.SIGKILL)
            # containerd notices the dead connection and runs `delete` for both tasks: that
            # alone must remove everything (checked before CRI's Stop/RemovePodSandbox).
            leftovers.assert_no_leaks()
            _wait_until(lambda: rt.ContainerStatus(cri.ContainerStatusRequest(
                container_id=cid)).status.state == cri.CONTAINER_EXITED, 30, "container exit")
            _wait_until(lambda: rt.PodSandboxStatus(cri.PodSandboxStatusRequest(
                pod_sandbox_id=pod)).status.state == cri.SANDBOX_NOTREADY, 30, "pod not ready")
        finally:
            _remove_cri_pod(rt, pod)
        assert not rt.ListPodSandbox(cri.ListPodSandboxRequest(
            filter=cri.PodSandboxFilter(id=pod))).items
        leftovers.assert_no_leaks()
        assert not netns_links(netns), "the pod netns is left"
    finally:
        channel.close()


# -- (c) containerd restarts under running tasks -----------------------------------------------

def test_containerd_restart_reconnects_to_the_shim(containerd, vm_ready, tmp_path):
    cid = "fault-restart"
    pod = PodLeaks(containerd, cid, "default", [cid])
    containerd.ctr("run", "-d", "--runtime", RUNTIME, IMAGE, cid, "sleep", "1000")
    try:
        shims = shim_pids(containerd.address, cid)
        assert len(shims) == 1, shims
        address = (pod.bundles[0] / "address").read_text()
        assert address == f"unix://{pod.socket}"
        _restart_containerd(containerd)
        # The same shim serves the task: containerd reconnected through the address file.
        assert _task_status(containerd, cid) == "RUNNING"
        assert shim_pids(containerd.address, cid) == shims
        done = containerd.ctr("task", "exec", "--exec-id", "after", cid, "sh", "-c",
                              "echo after-restart; exit 5", check=False)
        assert (done.stdout, done.returncode) == (b"after-restart\n", 5), done.stderr
        with EventLog(containerd, tmp_path / "events") as events:
            containerd.ctr("task", "kill", "-s", "SIGKILL", cid)
            exit_event = events.wait_for("/tasks/exit", cid)  # the publisher found the new
            assert exit_event["exit_status"] == 137           # containerd
        _wait_until(lambda: _task_status(containerd, cid) == "STOPPED", 30, "STOPPED")
        containerd.ctr("task", "rm", cid)
    finally:
        containerd.ctr("task", "rm", "-f", cid, check=False)
        containerd.ctr("container", "rm", cid, check=False)
    pod.assert_no_leaks()


def test_containerd_restart_keeps_cri_pod_usable(containerd, vm_ready):
    channel, rt = _cri_stub(containerd)
    try:
        pod, cid, _ = _run_cri_pod(rt, containerd, "fault-restart-cri")
        netns = _pod_netns(containerd, pod)
        leftovers = PodLeaks(containerd, pod, "k8s.io", [pod, cid], netns)
        try:
            channel.close()
            _restart_containerd(containerd)
            channel, rt = _cri_stub(containerd)
            _wait_cri_ready(rt)
            status = rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid)).status
            assert status.state == cri.CONTAINER_RUNNING
            sync = rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["echo", "still-here"],
                                                   timeout=60), timeout=300)
            assert (sync.stdout, sync.exit_code) == (b"still-here\n", 0)
        finally:
            _remove_cri_pod(rt, pod)
        leftovers.assert_no_leaks()
    finally:
        channel.close()


def test_shim_dead_across_containerd_restart_is_cleaned_up(containerd, vm_ready):
    """The shim dies while containerd is down: the restarted containerd finds the bundle's
    address dead and runs our `delete`, which must remove everything the task had."""
    cid = "fault-dead-restart"
    pod = PodLeaks(containerd, cid, "default", [cid])
    containerd.ctr("run", "-d", "--runtime", RUNTIME, IMAGE, cid, "sleep", "1000")
    try:
        shims = shim_pids(containerd.address, cid)
        assert len(shims) == 1, shims
        private_containerd.terminate(containerd.layout)
        try:
            os.kill(shims[0], signal.SIGKILL)
            _wait_until(lambda: not shim_pids(containerd.address, cid), 10, "the shim to die")
            assert pod.leaks(), "nothing left to clean up: the test would prove nothing"
        finally:
            private_containerd.launch(containerd.layout)
        pod.assert_no_leaks()
        assert _task_status(containerd, cid) is None
    finally:
        containerd.ctr("task", "rm", "-f", cid, check=False)
        containerd.ctr("container", "rm", cid, check=False)
    pod.assert_no_leaks()

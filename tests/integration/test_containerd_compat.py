"""The graft runtime under newer containerd releases (Debian trixie's 1.7, sid's 2.x), each run
privately like the 1.6 of the other tests: `ctr run`, the CRI pod flow, and a containerd
restart under a running task. Every test checks for leaks.

The releases come from Debian's archive (hack/containerd/compat.py, cached under
/var/cache/graft/containerd-compat); without network access and no cached copy the tests skip.
"""
from __future__ import annotations

import ipaddress
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "hack" / "containerd"))
sys.path.insert(0, str(ROOT / "e2e"))

import compat  # noqa: E402
import private_containerd  # noqa: E402
from leaks import PodLeaks, shim_pids  # noqa: E402
from testing import Containerd, containerd_missing, skip_or_fail, vm_missing  # noqa: E402

pytestmark = pytest.mark.containerd

RUNTIME = "io.containerd.graft.v2"
IMAGE = "graft.local/busybox:latest"


@pytest.fixture(scope="module", params=compat.SUITES)
def release(request):
    skip_or_fail(containerd_missing())
    skip_or_fail(vm_missing())
    try:
        bin_dir = compat.fetch(request.param)
    except compat.FetchError as exc:  # no network and nothing cached: not graft's failure
        pytest.skip(f"containerd from Debian {request.param} unavailable: {exc}")
    base = Path(tempfile.mkdtemp(prefix="gctrd-c-", dir="/tmp"))
    layout = private_containerd.Layout(base)
    try:
        private_containerd.start(layout, containerd_bin=bin_dir)
        yield Containerd(layout)
    finally:
        private_containerd.purge(layout)


def _task_status(containerd, container_id: str) -> str | None:
    for line in containerd.ctr("task", "ls").stdout.decode().splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == container_id:
            return fields[-1]
    return None


def test_ctr_run(release):
    cid = "compat-run"
    done = release.ctr("run", "--rm", "--runtime", RUNTIME, IMAGE, cid, "sh", "-c",
                       "echo hello; cat; exit 3", input=b"piped\n", check=False)
    assert (done.stdout, done.returncode) == (b"hello\npiped\n", 3), done.stderr
    PodLeaks(release, cid, "default", [cid]).assert_no_leaks()


def test_cri_pod_flow(release):
    pytest.importorskip("cri_api.v1.api_pb2",
                        reason="pip install --no-deps container-runtime-interface-api==2.0.1")
    from cri_client import Client

    client = Client(release.address, release.layout.base / "cri-client")
    try:
        pod = client.run_pod("compat-pod", "graft")
        try:
            cid = client.create_start(pod, "app", ["sh", "-c", "echo started; exec sleep 1000"])
            assert " stdout F started\n" in client.logs(cid, "started", timeout=30)
            sync = client.exec_sync(cid, ["sh", "-c", "ip -4 addr show eth0; exit 2"], 60)
            pod_ip = client.pod_status(pod).network.ip
            assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(
                release.layout.network.subnet)
            assert sync.exit_code == 2 and f"inet {pod_ip}/24 " in sync.stdout.decode()
            stats = client.stats(cid)
            assert stats["cpu_usage_core_nano_seconds"] > 0 and stats["memory_working_set_bytes"] > 0
            leftovers = PodLeaks(release, pod, "k8s.io", [pod, cid])
        finally:
            client.stop_remove(pod)
        leftovers.assert_no_leaks()
    finally:
        client.close()


def test_containerd_restart_reconnects(release):
    cid = "compat-restart"
    release.ctr("run", "-d", "--runtime", RUNTIME, IMAGE, cid, "sleep", "1000")
    try:
        shims = shim_pids(release.address, cid)
        assert len(shims) == 1, shims
        private_containerd.terminate(release.layout)
        private_containerd.launch(release.layout)
        assert _task_status(release, cid) == "RUNNING"
        assert shim_pids(release.address, cid) == shims  # reconnected, not restarted
        done = release.ctr("task", "exec", "--exec-id", "after", cid, "echo", "after-restart")
        assert done.stdout == b"after-restart\n"
        release.ctr("task", "kill", "-s", "SIGKILL", cid)
        deadline = time.monotonic() + 30
        while _task_status(release, cid) != "STOPPED":
            assert time.monotonic() < deadline, "the task did not stop"
            time.sleep(0.3)
        release.ctr("task", "rm", cid)
    finally:
        release.ctr("task", "rm", "-f", cid, check=False)
        release.ctr("container", "rm", cid, check=False)
    PodLeaks(release, cid, "default", [cid]).assert_no_leaks()

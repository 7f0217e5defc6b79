"""The warm pool through CRI, end to end (real containerd 1.6, QEMU, CNI): with
`[factory] cache_size = 1` the shim's fork server keeps one clone restored ahead of demand;
the next pod is handed that VM (its own identity: pod IP and MAC, hostname, fresh RNG, the
host's clock), the pool refills, and nothing leaks — including when the fork server goes."""
from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "hack" / "containerd"), str(ROOT / "e2e")]

from cri_client import Client  # noqa: E402
from leaks import PodLeaks  # noqa: E402
from testing import containerd, skip_or_fail, vm_missing  # noqa: E402,F401

from shim.config import load_config  # noqa: E402
from shim.factory.build import destroy_template, init_template  # noqa: E402
from shim.sandbox.state import SandboxRef, read_boot_path, run_dir  # noqa: E402
from shim.sandbox.warm import pool_dir, waiting_vms  # noqa: E402
from shim.shim_manager.handoff import server_path  # noqa: E402
from shim.timeline import read_timeline  # noqa: E402

pytestmark = pytest.mark.containerd


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _fork_server() -> psutil.Process | None:
    for proc in psutil.process_iter(["cmdline"]):
        title = " ".join(filter(None, proc.info["cmdline"] or []))  # setproctitle pads
        if title.endswith(f"fork-server {server_path()}"):
            return proc
    return None


@pytest.fixture(scope="module")
def warm(containerd):
    skip_or_fail(vm_missing())
    layout = containerd.layout
    state = Path(f"/run/gwp-{os.getpid()}")
    # $GRAFT_GUEST_DIR goes into the file: the fork server making the pool's clones runs
    # with an environment of its own.
    guest_dir = os.environ.get("GRAFT_GUEST_DIR")
    layout.graft_config.write_text(
        f'[runtime]\nlog_level = "debug"\nstate_dir = "{state}"\n'
        f'[factory]\nenable_template = true\ntemplate_path = "{state}/tpl"\ncache_size = 1\n'
        + (f'[guest]\nimage_dir = "{guest_dir}"\n' if guest_dir else ""))
    config = load_config(layout.graft_config)
    import asyncio
    asyncio.run(init_template(config))
    client = Client(containerd.address, layout.base / "cri-client")
    try:
        yield containerd, client, config
    finally:
        client.close()
        destroy_template(config)
        shutil.rmtree(state, ignore_errors=True)


def _pod(client: Client, name: str) -> tuple[str, str]:
    pod = client.run_pod(name, "graft")
    cid = client.create_start(pod, "app", ["sh", "-c", "echo up; exec sleep 1000"])
    assert "up" in client.logs(cid, "up", 60)
    return pod, cid


def _exec(client: Client, cid: str, *cmd: str) -> str:
    r = client.exec_sync(cid, list(cmd), 60)
    assert r.exit_code == 0, r.stderr
    return r.stdout.decode()


def test_a_pod_is_handed_a_warm_vm_with_its_own_identity(warm):
    containerd, client, config = warm
    address = containerd.address
    pods = []
    try:
        # Until a fork server has seen a pod of this config, there is no pool: pods are
        # restored the usual way while it fills.
        for name in ("wp-a", "wp-b"):
            pods.append(_pod(client, name))
            if waiting_vms(config):
                break
        _wait(lambda: waiting_vms(config) == 1, 120, "a warm VM")
        pod, cid = _pod(client, "wp-warm")
        pods.append((pod, cid))
        ref = SandboxRef(pod, "k8s.io", address)
        boot = read_boot_path(config, ref)
        assert boot["restored"] and boot["reason"].endswith("(warm pool)"), boot
        steps = [step for step, _ in read_timeline(run_dir(config, ref))]
        assert "warm vm adopted" in steps and "vm restored" not in steps, steps
        # The pod's identity, not the template's: pod IP + MAC on eth0, hostname, RNG, clock.
        status = client.pod_status(pod)
        links = _exec(client, cid, "ip", "addr", "show", "eth0")
        assert status.network.ip in links and "02:67:72:61:66:74" not in links
        assert _exec(client, cid, "hostname").strip() == "wp-warm"
        other_cid = pods[0][1]
        rand = "head -c 32 /dev/urandom | od -An -tx1"
        assert _exec(client, cid, "sh", "-c", rand) != _exec(client, other_cid, "sh", "-c", rand)
        assert abs(int(_exec(client, cid, "date", "+%s")) - time.time()) < 5
        # The pool refills, and runs at low priority until a pod takes its VM.
        _wait(lambda: waiting_vms(config) == 1, 120, "the pool to refill")
        members = [p for p in psutil.process_iter(["cmdline", "nice"])
                   if "pool-member" in " ".join(p.info["cmdline"] or [])]
        assert members and all(p.info["nice"] > 0 for p in members)
    finally:
        for pod, _ in pods:
            client.stop_remove(pod)
    for pod, cid in pods:
        PodLeaks(containerd, pod, "k8s.io", [pod, cid], state_dir=config.state_dir) \
            .assert_no_leaks()


def test_the_pool_goes_with_its_fork_server(warm):
    containerd, client, config = warm
    _wait(lambda: waiting_vms(config) == 1, 120, "a warm VM")
    server = _fork_server()
    assert server is not None
    members = [p for p in psutil.process_iter(["cmdline"])
               if "pool-member" in " ".join(p.info["cmdline"] or [])]
    assert members
    vmms = [child for m in members for child in m.children()]
    server.send_signal(signal.SIGKILL)
    _wait(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                          for p in members + vmms), 30, "members and their VMs to exit")
    _wait(lambda: not any(pool_dir(config).iterdir()), 10, "the pool dir to empty")
    # The next pod still works: start forks its daemon and brings a new fork server up.
    pod, cid = _pod(client, "wp-after")
    client.stop_remove(pod)
    PodLeaks(containerd, pod, "k8s.io", [pod, cid], state_dir=config.state_dir) \
        .assert_no_leaks()

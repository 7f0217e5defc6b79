"""CRI pods through containerd 2.x's Sandbox API (`sandboxer = "shim"`): no pause container.

A private containerd 2.1 (Debian sid, hack/containerd/compat.py) with its CRI plugin drives the
graft handler through CreateSandbox/StartSandbox/…/ShutdownSandbox; app containers still come
through the task API. Each pod: two containers (logs, ExecSync, one VM), the pod IP inside the
VM, the VM outliving its containers, SandboxStatus/Metrics/Ping asked of the shim directly,
then StopPodSandbox + RemovePodSandbox leaving nothing. Once cold, once restored from a template
built by `graft factory init`.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "hack" / "containerd"))
sys.path.insert(0, str(ROOT / "e2e"))

import compat  # noqa: E402
import private_containerd  # noqa: E402
from leaks import PodLeaks, mount_points, netns_links, shim_pids, vmm_pids  # noqa: E402
from testing import Containerd, containerd_missing, skip_or_fail, vm_missing  # noqa: E402

pytestmark = [pytest.mark.containerd, pytest.mark.vm]

pytest.importorskip("cri_api.v1.api_pb2",
                    reason="pip install --no-deps container-runtime-interface-api==2.0.1")

NAMESPACE = "k8s.io"
SUITE = "sid"  # containerd 2.1


@pytest.fixture(scope="module")
def containerd2():
    skip_or_fail(containerd_missing())
    skip_or_fail(vm_missing())
    try:
        bin_dir = compat.fetch(SUITE)
    except compat.FetchError as exc:  # no network and nothing cached: not graft's failure
        pytest.skip(f"containerd from Debian {SUITE} unavailable: {exc}")
    base = Path(tempfile.mkdtemp(prefix="gsbx-", dir="/tmp"))
    state = Path(tempfile.mkdtemp(prefix="g-sbx-", dir="/run"))  # short: socket paths
    layout = private_containerd.Layout(base)
    try:
        private_containerd.start(layout, containerd_bin=bin_dir, sandboxer="shim")
        yield Containerd(layout), state
    finally:
        try:
            private_containerd.purge(layout)
        finally:
            for point in sorted((p for p in mount_points() if p.startswith(f"{state}/")),
                                key=len, reverse=True):
                subprocess.run(["umount", "-l", point], capture_output=True)
            shutil.rmtree(state, ignore_errors=True)


def _write_graft_config(containerd: Containerd, state: Path, template: Path | None) -> None:
    """The shim (through $GRAFT_CONFIG in containerd's environment) and `graft` read this."""
    guest = os.environ.get("GRAFT_GUEST_DIR", "/var/lib/graft/guest")
    text = (f'[runtime]\nlog_level = "debug"\nstate_dir = "{state}"\n\n'
            f'[guest]\nimage_dir = "{guest}"\n')
    if template is not None:
        text += f'\n[factory]\nenable_template = true\ntemplate_path = "{template}"\n'
    containerd.layout.graft_config.write_text(text)


def _graft(containerd: Containerd, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRAFT_CONFIG=str(containerd.layout.graft_config))
    return subprocess.run([sys.executable, "-m", "shim.cli.graft_main", *args], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def cold(containerd2):
    containerd, state = containerd2
    _write_graft_config(containerd, state, None)
    return containerd, state


@pytest.fixture
def templated(containerd2):
    containerd, state = containerd2
    template = state / "template"
    _write_graft_config(containerd, state, template)
    built = _graft(containerd, "factory", "init")
    assert built.returncode == 0, built.stdout + built.stderr
    try:
        yield containerd, state
    finally:
        destroyed = _graft(containerd, "factory", "destroy")
        assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr


@pytest.fixture
def cri(containerd2):
    from template_cri import SizedPodClient

    containerd, _ = containerd2
    client = SizedPodClient(containerd.address, containerd.layout.base / "cri-client")
    yield client
    client.close()


# -- the Sandbox API, asked of the pod's shim directly ------------------------------------------

async def _ask_shim(containerd: Containerd, pod: str) -> dict:
    from shim.api.containerd import SANDBOX_SERVICE, cgroups_v2_pb2, sandbox_pb2 as pb
    from shim.shim_manager.socket_address import socket_path
    from shim.ttrpc import Client, TtrpcError

    client = await Client.connect_unix(str(socket_path(containerd.address, NAMESPACE, pod)))
    try:
        async def call(method, request, response):
            return await client.call(SANDBOX_SERVICE.full_name, method, request, response,
                                     timeout=30)
        status = await call("SandboxStatus", pb.SandboxStatusRequest(sandbox_id=pod, verbose=True),
                            pb.SandboxStatusResponse)
        await call("PingSandbox", pb.PingRequest(sandbox_id=pod), pb.PingResponse)
        metrics = (await call("SandboxMetrics", pb.SandboxMetricsRequest(sandbox_id=pod),
                              pb.SandboxMetricsResponse)).metrics
        try:
            await call("PingSandbox", pb.PingRequest(sandbox_id="not-" + pod), pb.PingResponse)
            other = None
        except TtrpcError as exc:
            other = exc.code.name
        return {"status": status, "metrics_id": metrics.id, "metrics_type": metrics.data.type_url,
                "vm": cgroups_v2_pb2.Metrics.FromString(metrics.data.value), "other_pod": other}
    finally:
        await client.close()


# -- one pod, start to end ------------------------------------------------------------------------

def _run_pod(cri, containerd: Containerd, name: str, cpus: int) -> dict:
    """The whole pod flow; returns what the boot-specific checks need."""
    from cri_api.v1 import api_pb2 as api
    from shim.config import load_config
    from shim.sandbox.state import SandboxRef, read_boot_path

    pod = cri.run_sized_pod(name, "graft", cpus, 0)
    leaks = PodLeaks(containerd, pod, NAMESPACE, [])
    facts: dict = {}
    cids: dict[str, str] = {}
    try:
        status = cri.pod_status(pod)
        assert status.state == api.SANDBOX_READY
        pod_ip = status.network.ip
        network = containerd.layout.network
        assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(network.subnet), pod_ip
        network_record = json.loads((leaks.run_dir / "network.json").read_text())
        leaks.netns = Path(network_record["netns"])
        assert network_record["tap"] in netns_links(leaks.netns)  # the VM's side of the pod NIC

        for cname in ("app", "side"):
            cids[cname] = cri.create_start(pod, cname, [
                "sh", "-c", f"echo hello from {cname} cpus=$(nproc); echo err-{cname} >&2; "
                "exec sleep 1000"])
        leaks.container_ids = list(cids.values())

        # No pause container anywhere: containerd knows the pod as a sandbox, not a container.
        listed = containerd.ctr("containers", "ls", "-q", namespace=NAMESPACE).stdout.split()
        assert sorted(c.decode() for c in listed) == sorted(cids.values())
        tasks = containerd.ctr("tasks", "ls", namespace=NAMESPACE).stdout.decode()
        assert pod not in tasks
        sandboxes = containerd.ctr("sandboxes", "ls", namespace=NAMESPACE).stdout.decode()
        assert pod in sandboxes and "io.containerd.graft.v2" in sandboxes, sandboxes
        assert len(vmm_pids(leaks.run_dir)) == 1
        assert len(shim_pids(containerd.address)) == 1  # one daemon for the pod and both tasks

        boot_ids = set()
        for cname, cid in cids.items():
            log = cri.logs(cid, f"err-{cname}", timeout=60)
            assert f" stdout F hello from {cname} cpus={cpus}\n" in log, log
            assert f" stderr F err-{cname}\n" in log, log
            sync = cri.exec_sync(cid, ["cat", "/proc/sys/kernel/random/boot_id"], 60)
            assert sync.exit_code == 0, sync.stderr
            boot_ids.add(sync.stdout)
        assert len(boot_ids) == 1  # both containers in one kernel
        assert Path("/proc/sys/kernel/random/boot_id").read_bytes() not in boot_ids  # the VM's

        sync = cri.exec_sync(cids["side"], ["sh", "-c", "ip -4 addr show eth0; hostname"], 60)
        assert sync.exit_code == 0 and f"inet {pod_ip}/24 " in sync.stdout.decode(), sync.stdout
        assert sync.stdout.decode().splitlines()[-1] == name  # the CRI hostname, via options
        sync = cri.exec_sync(cids["app"], ["ping", "-c", "1", "-W", "5", network.gateway], 60)
        assert sync.exit_code == 0, sync.stdout + sync.stderr  # through the tap to the bridge

        facts["shim"] = asyncio.run(_ask_shim(containerd, pod))
        facts["boot"] = read_boot_path(load_config(containerd.layout.graft_config),
                                       SandboxRef(pod, NAMESPACE, containerd.address))

        # The VM belongs to the sandbox, not to its containers: remove both, start another.
        for cid in cids.values():
            cri.rt.StopContainer(api.StopContainerRequest(container_id=cid, timeout=2),
                                 timeout=120)
            cri.rt.RemoveContainer(api.RemoveContainerRequest(container_id=cid), timeout=120)
        assert cri.pod_status(pod).state == api.SANDBOX_READY
        assert len(vmm_pids(leaks.run_dir)) == 1
        cids["again"] = cri.create_start(pod, "again", ["sh", "-c", "echo back; exec sleep 1000"])
        leaks.container_ids = list(cids.values())
        assert " stdout F back\n" in cri.logs(cids["again"], "back", timeout=60)
    finally:
        cri.stop_remove(pod)
    leaks.assert_no_leaks()  # also: no run dir left
    return facts


def _check_shim_answers(facts: dict, pod_boot: str) -> None:
    shim = facts["shim"]
    status = shim["status"]
    assert status.state == "SANDBOX_READY" and status.pid > 0
    assert status.created_at.seconds > 0 and not status.HasField("exited_at")
    assert status.info["boot"].startswith(pod_boot), dict(status.info)
    assert shim["metrics_type"] == "io.containerd.cgroups.v2.Metrics"
    vm = shim["vm"]  # the VMM process as the host sees it: real CPU time and resident memory
    assert vm.cpu.usage_usec > 0 and vm.memory.usage > 64 << 20 and vm.pids.current > 0
    assert shim["other_pod"] == "NOT_FOUND"


def test_cold_pod_without_a_pause_container(cold, cri):
    containerd, _ = cold
    facts = _run_pod(cri, containerd, "sbx-cold", cpus=1)
    _check_shim_answers(facts, "cold boot")
    assert facts["boot"]["restored"] is False


def test_pod_restored_from_a_template_without_a_pause_container(templated, cri):
    containerd, state = templated
    facts = _run_pod(cri, containerd, "sbx-tpl", cpus=2)  # hot-adds a vCPU to the clone
    _check_shim_answers(facts, "restored")
    assert facts["boot"]["restored"] is True
    assert facts["boot"]["reason"].startswith(f"template {state / 'template'}/tpl-")

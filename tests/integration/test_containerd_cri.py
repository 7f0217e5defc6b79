"""The CRI flow (what kubelet does) against a private containerd, graft vs runc.

Client: PyPI container-runtime-interface-api 2.0.1 (generated cri_api.v1), installed --no-deps.
"""
from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack" / "containerd"))

from testing import containerd, shim_sockets, skip_or_fail, vm_missing  # noqa: E402,F401

pytestmark = pytest.mark.containerd

grpc = pytest.importorskip("grpc")
cri = pytest.importorskip("cri_api.v1.api_pb2",
                          reason="pip install --no-deps container-runtime-interface-api==2.0.1")
from cri_api.v1 import api_pb2_grpc  # noqa: E402

IMAGE = "graft.local/busybox:latest"


@pytest.fixture(scope="module")
def runtime(containerd):
    channel = grpc.insecure_channel(f"unix://{containerd.address}")
    stub = api_pb2_grpc.RuntimeServiceStub(channel)
    stub.log_root = containerd.layout.base / "pod-logs"  # removed with the private containerd
    yield stub
    channel.close()


def _pod_config(name: str, log_root: Path) -> "cri.PodSandboxConfig":
    uid = uuid.uuid4().hex[:8]
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, namespace="default", uid=uid, attempt=0),
        hostname=name, log_directory=str(log_root / uid),
        linux=cri.LinuxPodSandboxConfig())


def _run_pod_flow(rt, handler: str) -> dict:
    """RunPodSandbox → Create/Start container → status/exec/stats → stop/remove. Returns facts."""
    facts: dict = {}
    pod_config = _pod_config(f"pod-{handler}", rt.log_root)
    t0 = time.monotonic()
    pod = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config, runtime_handler=handler),
                           timeout=300).pod_sandbox_id
    facts["run_pod_s"] = time.monotonic() - t0
    try:
        container_config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name="app", attempt=0),
            image=cri.ImageSpec(image=IMAGE),
            command=["sh", "-c", "echo started; exec sleep 1000"],
            log_path="app.log", linux=cri.LinuxContainerConfig())
        cid = rt.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=pod, config=container_config, sandbox_config=pod_config),
            timeout=300).container_id
        rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=300)
        status = rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid)).status
        facts["state"] = status.state
        sync = rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "echo hi; exit 4"],
                                               timeout=120), timeout=300)
        facts["exec"] = (sync.stdout, sync.exit_code)
        stats = rt.ContainerStats(cri.ContainerStatsRequest(container_id=cid)).stats
        facts["has_stats"] = stats.HasField("memory") or stats.HasField("cpu")
        rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=2), timeout=120)
        status = rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid)).status
        facts["stopped"] = (status.state, status.exit_code)
        rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid), timeout=120)
    finally:
        rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=120)
        rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=120)
    return facts


def _check(facts: dict) -> None:
    assert facts["state"] == cri.CONTAINER_RUNNING
    assert facts["exec"] == (b"hi\n", 4)
    assert facts["has_stats"]
    state, exit_code = facts["stopped"]
    assert state == cri.CONTAINER_EXITED and exit_code in (137, 143)


def test_cri_pod_flow_with_runc_for_comparison(runtime):
    _check(_run_pod_flow(runtime, "runc"))


def _shims_of(address: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", "containerd-shim-graft-v2 "], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if f"-address {address} " in line]


def test_cri_pod_flow_with_graft(runtime, containerd):
    skip_or_fail(vm_missing())
    before = shim_sockets()
    facts = _run_pod_flow(runtime, "graft")
    _check(facts)
    deadline = time.monotonic() + 15
    while (shim_sockets() - before or _shims_of(containerd.address)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not shim_sockets() - before, "the pod's shim socket is left"
    assert not _shims_of(containerd.address), "the pod's shim process is left"


def _vmm_pids_of(sandbox_id: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"qemu-system.* -name graft-{sandbox_id}( |$)"],
                         capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


def _wait_for_log(rt, cid: str, text: str, timeout: float = 30) -> str:
    path = Path(rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid)).status.log_path)
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text() if path.exists() else ""
        if text in content or time.monotonic() > deadline:
            return content
        time.sleep(0.2)


def test_cri_pod_with_two_containers_shares_one_vm(runtime, containerd):
    """Two app containers in one graft pod: one VM, one shim; logs, ExecSync, stats and the
    pod IP from CNI inside the VM; StopPodSandbox with both running, then RemovePodSandbox."""
    skip_or_fail(vm_missing())
    rt = runtime
    before = shim_sockets()
    pod_config = _pod_config("pod-two", rt.log_root)
    pod = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config, runtime_handler="graft"),
                           timeout=300).pod_sandbox_id
    try:
        pod_ip = rt.PodSandboxStatus(cri.PodSandboxStatusRequest(
            pod_sandbox_id=pod)).status.network.ip
        network = containerd.layout.network  # this private containerd's bridge CNI network
        assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(network.subnet), pod_ip
        cids = {}
        for name in ("app", "side"):
            cids[name] = rt.CreateContainer(cri.CreateContainerRequest(
                pod_sandbox_id=pod, sandbox_config=pod_config, config=cri.ContainerConfig(
                    metadata=cri.ContainerMetadata(name=name), image=cri.ImageSpec(image=IMAGE),
                    command=["sh", "-c", f"echo hello from {name}; echo err-{name} >&2; "
                             "exec sleep 1000"],
                    log_path=f"{name}.log", linux=cri.LinuxContainerConfig())),
                timeout=300).container_id
            rt.StartContainer(cri.StartContainerRequest(container_id=cids[name]), timeout=300)
        assert len(_vmm_pids_of(pod)) == 1 and len(_shims_of(containerd.address)) == 1

        listed = rt.ListContainers(cri.ListContainersRequest(
            filter=cri.ContainerFilter(pod_sandbox_id=pod))).containers
        assert sorted(c.metadata.name for c in listed) == ["app", "side"]
        assert all(c.state == cri.CONTAINER_RUNNING for c in listed)

        boot_ids = set()
        for name, cid in cids.items():
            log = _wait_for_log(rt, cid, f"err-{name}")  # CRI log format: time stream tag line
            assert f" stdout F hello from {name}\n" in log, log
            assert f" stderr F err-{name}\n" in log, log
            sync = rt.ExecSync(cri.ExecSyncRequest(
                container_id=cid, cmd=["cat", "/proc/sys/kernel/random/boot_id"], timeout=60),
                timeout=300)
            assert sync.exit_code == 0, sync.stderr
            boot_ids.add(sync.stdout)
            stats = rt.ContainerStats(cri.ContainerStatsRequest(container_id=cid)).stats
            assert stats.attributes.id == cid
            assert stats.memory.working_set_bytes.value > 0
            assert stats.cpu.usage_core_nano_seconds.value > 0
        host_boot_id = Path("/proc/sys/kernel/random/boot_id").read_bytes()
        assert len(boot_ids) == 1 and host_boot_id not in boot_ids  # one kernel: the pod VM

        # The VM owns the pod IP CNI assigned (tap + tc redirect, hot-plugged NIC).
        sync = rt.ExecSync(cri.ExecSyncRequest(container_id=cids["side"], cmd=["ip", "addr"],
                                               timeout=60), timeout=300)
        assert sync.exit_code == 0 and f"inet {pod_ip}/24 " in sync.stdout.decode(), sync.stdout
        sync = rt.ExecSync(cri.ExecSyncRequest(container_id=cids["app"], cmd=[
            "ping", "-c", "1", "-W", "5", network.gateway], timeout=60), timeout=300)
        assert sync.exit_code == 0, sync.stdout + sync.stderr  # the bridge, through the tap
    finally:
        rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=120)
    for cid in cids.values():
        status = rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid)).status
        assert status.state == cri.CONTAINER_EXITED
    rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=120)
    assert not rt.ListContainers(cri.ListContainersRequest(
        filter=cri.ContainerFilter(pod_sandbox_id=pod))).containers
    deadline = time.monotonic() + 15
    while (shim_sockets() - before or _shims_of(containerd.address) or _vmm_pids_of(pod)) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not shim_sockets() - before, "the pod's shim socket is left"
    assert not _shims_of(containerd.address), "the pod's shim process is left"
    assert not _vmm_pids_of(pod), "the pod's VM is left"


def _guest_console(pod: str) -> str:
    """The pod VM's console (the guest agent logs there), found by the sandbox's owner record."""
    from shim.sandbox.state import SANDBOXES_DIR, read_owner

    for directory in (Path("/run/graft") / SANDBOXES_DIR).iterdir():
        owner = read_owner(directory)
        if owner is not None and owner.id == pod:
            return (directory / "console.log").read_text(errors="replace")
    raise AssertionError(f"no state directory for pod {pod}")


# kubelet's defaults for a non-privileged container (securitycontext package)
KUBELET_MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                  "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                  "/sys/firmware"]
KUBELET_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def test_cri_pod_runs_on_the_native_guest_runtime(runtime):
    """A pod as kubelet would ask for it (RuntimeDefault seccomp, masked and read-only paths,
    a non-root user, limits) runs on the agent's native runtime, the default."""
    skip_or_fail(vm_missing())
    rt = runtime
    pod_config = _pod_config("pod-native", rt.log_root)
    pod = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config, runtime_handler="graft"),
                           timeout=300).pod_sandbox_id
    try:
        security = cri.LinuxContainerSecurityContext(
            seccomp=cri.SecurityProfile(profile_type=cri.SecurityProfile.RuntimeDefault),
            namespace_options=cri.NamespaceOption(pid=cri.CONTAINER),
            run_as_user=cri.Int64Value(value=1000), masked_paths=KUBELET_MASKED,
            readonly_paths=KUBELET_READONLY, no_new_privs=True)
        cid = rt.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=pod, sandbox_config=pod_config, config=cri.ContainerConfig(
                metadata=cri.ContainerMetadata(name="app"), image=cri.ImageSpec(image=IMAGE),
                command=["sleep", "1000"], log_path="app.log",
                linux=cri.LinuxContainerConfig(security_context=security, resources=cri.LinuxContainerResources(
                    memory_limit_in_bytes=64 << 20, cpu_quota=50000, cpu_period=100000)))),
            timeout=300).container_id
        rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=300)
        sync = rt.ExecSync(cri.ExecSyncRequest(container_id=cid, timeout=60, cmd=[
            "sh", "-c", "grep -E '^(Uid|Seccomp|NoNewPrivs|CapEff):' /proc/self/status; "
                        "cat /sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)/memory.max; "
                        "head -c 1 /proc/kcore | wc -c; "
                        "awk '$5 == \"/proc/sys\" {print \"proc/sys:\", $6}' /proc/self/mountinfo"]),
            timeout=300)
        out = sync.stdout.decode()
        assert sync.exit_code == 0, sync.stderr
        for line in ("Uid:\t1000\t1000\t1000\t1000", "Seccomp:\t2", "NoNewPrivs:\t1",
                     "CapEff:\t0000000000000000", "67108864", "\n0\n", "proc/sys: ro,"):
            assert line in out, out
        assert f"created container {cid} (native, pid" in _guest_console(pod)
    finally:
        rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=120)
        rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=120)


def _exec(rt, cid: str, script: str) -> str:
    sync = rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", script], timeout=60),
                       timeout=300)
    assert sync.exit_code == 0, sync.stdout + sync.stderr
    return sync.stdout.decode()


def test_cri_containers_of_a_pod_share_ipc_uts_shm_and_pid_when_asked(runtime):
    """Two containers of one pod (shareProcessNamespace): one /dev/shm, one IPC namespace
    (a POSIX message queue made in one is seen by the other), the pod's hostname, one PID
    namespace in which neither sees the guest agent."""
    skip_or_fail(vm_missing())
    rt = runtime
    pod_config = _pod_config("pod-shared", rt.log_root)
    shared_pid = cri.NamespaceOption(pid=cri.POD)
    pod_config.linux.security_context.namespace_options.CopyFrom(shared_pid)
    pod = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config, runtime_handler="graft"),
                           timeout=300).pod_sandbox_id
    try:
        cids = {}
        for name in ("writer", "reader"):
            cids[name] = rt.CreateContainer(cri.CreateContainerRequest(
                pod_sandbox_id=pod, sandbox_config=pod_config, config=cri.ContainerConfig(
                    metadata=cri.ContainerMetadata(name=name), image=cri.ImageSpec(image=IMAGE),
                    command=["sleep", "1006"], log_path=f"{name}.log",
                    linux=cri.LinuxContainerConfig(security_context=cri.LinuxContainerSecurityContext(
                        namespace_options=shared_pid)))), timeout=300).container_id
            rt.StartContainer(cri.StartContainerRequest(container_id=cids[name]), timeout=300)
        namespaces = "for n in ipc uts pid; do readlink /proc/self/ns/$n; done"
        writer = _exec(rt, cids["writer"], f"echo hi >/dev/shm/x; touch /dev/mqueue/q; {namespaces}")
        reader = _exec(rt, cids["reader"], f"cat /dev/shm/x; ls /dev/mqueue; hostname; {namespaces}; "
                                           "ps -o pid,args")
        lines = reader.splitlines()
        assert lines[:3] == ["hi", "q", "pod-shared"], reader
        assert lines[3:6] == writer.splitlines(), (writer, reader)
        processes = "\n".join(lines[7:])
        assert processes.count("sleep 1006") == 2, reader   # the other container's too
        assert "python" not in processes and "graft_agent" not in processes, reader
    finally:
        rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=120)
        rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=120)


@pytest.mark.parametrize("option, name", [("pid", "hostPID"), ("ipc", "hostIPC"),
                                          ("network", "hostNetwork")])
def test_cri_pod_asking_for_node_namespaces_is_refused(runtime, containerd, option, name):
    skip_or_fail(vm_missing())
    before = shim_sockets()
    pod_config = _pod_config(f"pod-{option}", runtime.log_root)
    setattr(pod_config.linux.security_context.namespace_options, option, cri.NODE)
    with pytest.raises(grpc.RpcError) as err:
        runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config, runtime_handler="graft"),
                              timeout=300)
    assert name in err.value.details() and "own VM" in err.value.details(), err.value.details()
    deadline = time.monotonic() + 15
    while (shim_sockets() - before or _shims_of(containerd.address)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not shim_sockets() - before and not _shims_of(containerd.address)
    listed = runtime.ListPodSandbox(cri.ListPodSandboxRequest()).items
    assert not [p for p in listed if p.metadata.name == f"pod-{option}" and p.state == cri.SANDBOX_READY]

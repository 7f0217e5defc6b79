"""The Sandbox API (containerd 2.x, sandboxer = "shim") over a real ttrpc connection, the pod
backend faked: proto translation, the sandbox rules and errors → status codes; and the daemon
keeping a Sandbox API pod alive across its containers' Shutdown calls."""
from __future__ import annotations

import asyncio
import platform
import time
from pathlib import Path

import pytest
from google.protobuf import any_pb2, empty_pb2

from shim.api import cri_pod_config
from shim.api.containerd import (SANDBOX_SERVICE, TASK_SERVICE, cgroups_v2_pb2, mount_pb2,
                                 sandbox_pb2 as pb, shim_pb2)
from shim.vmconfig.pod_resources import PodResources
from shim.sandbox_service import SandboxService
from shim.shim_manager.args import Action, ShimArgs
from shim.shim_manager.daemon import Daemon
from shim.task.process import ExitInfo
from shim.task.sandbox_controller import SandboxController
from shim.ttrpc import Client, Code, Server, TtrpcError

from test_shim_daemon import _listener, end_daemon  # same directory (pytest puts it on sys.path)
from test_task_manager import FakeBackend

SERVICE = SANDBOX_SERVICE.full_name
SANDBOX_ID = "sb1"
VMM_PID = 777


class FakePodBackend(FakeBackend):
    """FakeBackend plus the pod-level entry points, recording what the VM was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.pods: list = []
        self.launch_error: Exception | None = None
        self.vm_exit: asyncio.Future[ExitInfo] | None = None

    async def launch_pod(self, pod) -> int:
        self.calls.append(("launch_pod", pod.sandbox_id))
        if self.launch_error is not None:
            raise self.launch_error
        self.pods.append(pod)
        self.vm_exit = asyncio.get_running_loop().create_future()
        return VMM_PID

    def vm_exits(self, status: int) -> None:
        assert self.vm_exit is not None
        if not self.vm_exit.done():
            self.vm_exit.set_result(ExitInfo(status, time.time_ns()))

    async def stop_pod(self) -> None:
        self.calls.append(("stop_pod",))
        if self.vm_exit is not None:
            self.vm_exits(137)

    async def wait_pod(self) -> ExitInfo:
        assert self.vm_exit is not None
        return await asyncio.shield(self.vm_exit)

    async def pod_metrics(self):
        metrics = cgroups_v2_pb2.Metrics()
        metrics.cpu.usage_usec = 1234
        metrics.memory.usage = 5 << 20
        return metrics

    def pod_details(self) -> dict[str, str]:
        return {"boot": "cold boot (no template)"}


def _options(**fields) -> any_pb2.Any:
    config = cri_pod_config.PodSandboxConfig(**fields)
    return any_pb2.Any(type_url=cri_pod_config.TYPE_NAME, value=config.SerializeToString())


@pytest.fixture
async def sandbox_api(tmp_path):
    backend = FakePodBackend()
    controller = SandboxController(backend, SANDBOX_ID)
    shut_down = asyncio.Event()
    server = Server()
    server.register_service(SANDBOX_SERVICE, SandboxService(controller, shut_down.set))
    path = tmp_path / "shim.sock"
    await server.serve_unix(str(path))
    client = await Client.connect_unix(str(path))

    def call(method: str, request, response_type):
        return client.call(SERVICE, method, request, response_type, timeout=5)
    yield call, backend, shut_down, tmp_path
    await client.close()
    await server.close()
    await controller.close()


def _create(tmp_path: Path, **extra) -> pb.CreateSandboxRequest:
    netns = tmp_path / "netns"
    netns.touch()
    return pb.CreateSandboxRequest(sandbox_id=SANDBOX_ID, bundle_path=str(tmp_path / "bundle"),
                                   netns_path=str(netns), **extra)


async def _code(call) -> Code:
    with pytest.raises(TtrpcError) as err:
        await call
    return err.value.code


async def test_cri_like_flow(sandbox_api):
    call, backend, shut_down, tmp_path = sandbox_api
    options = _options(hostname="web-0", annotations={"io.graft.x": "1"},
                       linux={"resources": {"cpu_quota": 150000, "cpu_period": 100000,
                                            "memory_limit_in_bytes": 300 << 20}})
    before = time.time_ns()
    await call("CreateSandbox", _create(tmp_path, options=options), pb.CreateSandboxResponse)
    status = await call("SandboxStatus", pb.SandboxStatusRequest(sandbox_id=SANDBOX_ID),
                        pb.SandboxStatusResponse)
    assert (status.state, status.pid) == ("SANDBOX_UNKNOWN", 0)  # created, no VM yet
    assert not backend.pods

    started = await call("StartSandbox", pb.StartSandboxRequest(sandbox_id=SANDBOX_ID),
                         pb.StartSandboxResponse)
    assert started.pid == VMM_PID and started.created_at.ToNanoseconds() >= before
    pod = backend.pods[0]
    assert (pod.sandbox_id, pod.hostname, pod.netns) == (SANDBOX_ID, "web-0", tmp_path / "netns")
    assert pod.resources == PodResources(vcpus=2, memory_mib=300)  # as the pause path sizes it
    wait = asyncio.ensure_future(call("WaitSandbox", pb.WaitSandboxRequest(sandbox_id=SANDBOX_ID),
                                      pb.WaitSandboxResponse))

    plat = await call("Platform", pb.PlatformRequest(sandbox_id=SANDBOX_ID), pb.PlatformResponse)
    assert plat.platform.os == "linux"
    if platform.machine() == "x86_64":
        assert plat.platform.architecture == "amd64"
    status = await call("SandboxStatus", pb.SandboxStatusRequest(sandbox_id=SANDBOX_ID,
                                                                 verbose=True),
                        pb.SandboxStatusResponse)
    assert (status.sandbox_id, status.pid, status.state) == (SANDBOX_ID, VMM_PID, "SANDBOX_READY")
    assert status.created_at == started.created_at and not status.HasField("exited_at")
    assert dict(status.info) == {"boot": "cold boot (no template)"}
    await call("PingSandbox", pb.PingRequest(sandbox_id=SANDBOX_ID), pb.PingResponse)
    metrics = await call("SandboxMetrics", pb.SandboxMetricsRequest(sandbox_id=SANDBOX_ID),
                         pb.SandboxMetricsResponse)
    assert metrics.metrics.id == SANDBOX_ID and metrics.metrics.timestamp.seconds > 0
    assert metrics.metrics.data.type_url == "io.containerd.cgroups.v2.Metrics"
    data = cgroups_v2_pb2.Metrics.FromString(metrics.metrics.data.value)
    assert (data.cpu.usage_usec, data.memory.usage) == (1234, 5 << 20)
    assert not wait.done()

    await call("StopSandbox", pb.StopSandboxRequest(sandbox_id=SANDBOX_ID, timeout_secs=3),
               pb.StopSandboxResponse)
    assert ("stop_pod",) in backend.calls
    waited = await asyncio.wait_for(wait, 5)
    assert waited.exit_status == 137 and waited.exited_at.seconds > 0
    status = await call("SandboxStatus", pb.SandboxStatusRequest(sandbox_id=SANDBOX_ID),
                        pb.SandboxStatusResponse)
    assert (status.state, status.pid) == ("SANDBOX_NOTREADY", 0)
    assert status.exited_at == waited.exited_at
    await call("StopSandbox", pb.StopSandboxRequest(sandbox_id=SANDBOX_ID),
               pb.StopSandboxResponse)  # idempotent
    assert await _code(call("PingSandbox", pb.PingRequest(sandbox_id=SANDBOX_ID),
                            pb.PingResponse)) == Code.FAILED_PRECONDITION
    assert await _code(call("SandboxMetrics", pb.SandboxMetricsRequest(sandbox_id=SANDBOX_ID),
                            pb.SandboxMetricsResponse)) == Code.FAILED_PRECONDITION
    assert not shut_down.is_set()
    await call("ShutdownSandbox", pb.ShutdownSandboxRequest(sandbox_id=SANDBOX_ID),
               pb.ShutdownSandboxResponse)
    assert shut_down.is_set()


@pytest.mark.parametrize("method,request_type,response_type", [
    ("StartSandbox", pb.StartSandboxRequest, pb.StartSandboxResponse),
    ("Platform", pb.PlatformRequest, pb.PlatformResponse),
    ("StopSandbox", pb.StopSandboxRequest, pb.StopSandboxResponse),
    ("WaitSandbox", pb.WaitSandboxRequest, pb.WaitSandboxResponse),
    ("SandboxStatus", pb.SandboxStatusRequest, pb.SandboxStatusResponse),
    ("PingSandbox", pb.PingRequest, pb.PingResponse),
    ("ShutdownSandbox", pb.ShutdownSandboxRequest, pb.ShutdownSandboxResponse),
    ("SandboxMetrics", pb.SandboxMetricsRequest, pb.SandboxMetricsResponse),
])
async def test_every_method_answers_not_found_for_an_unknown_sandbox(sandbox_api, method,
                                                                     request_type, response_type):
    call, _, shut_down, tmp_path = sandbox_api
    assert await _code(call(method, request_type(sandbox_id=SANDBOX_ID), response_type)) \
        == Code.NOT_FOUND  # nothing created yet
    await call("CreateSandbox", _create(tmp_path), pb.CreateSandboxResponse)
    assert await _code(call(method, request_type(sandbox_id="other"), response_type)) \
        == Code.NOT_FOUND
    assert not shut_down.is_set()


async def test_bad_create_requests_get_clear_codes(sandbox_api):
    call, backend, _, tmp_path = sandbox_api
    create = lambda req: call("CreateSandbox", req, pb.CreateSandboxResponse)  # noqa: E731
    cases = [
        (pb.CreateSandboxRequest(sandbox_id="not-this-shim", bundle_path=str(tmp_path)),
         Code.INVALID_ARGUMENT),
        (pb.CreateSandboxRequest(sandbox_id="../x", bundle_path=str(tmp_path)),
         Code.INVALID_ARGUMENT),
        (pb.CreateSandboxRequest(sandbox_id=SANDBOX_ID, bundle_path=str(tmp_path),
                                 netns_path=str(tmp_path / "no-such-netns")),
         Code.INVALID_ARGUMENT),
        (_create(tmp_path, options=any_pb2.Any(type_url="runtime.v1.ContainerConfig")),
         Code.INVALID_ARGUMENT),
        (_create(tmp_path, options=any_pb2.Any(type_url=cri_pod_config.TYPE_NAME,
                                               value=b"\xff\xff")),
         Code.INVALID_ARGUMENT),
        (_create(tmp_path, rootfs=[mount_pb2.Mount(type="bind", source="/x")]),
         Code.UNIMPLEMENTED),
        (_create(tmp_path, options=_options(linux={"security_context": {
            "namespace_options": {"pid": cri_pod_config.NODE}}})),   # hostPID
         Code.INVALID_ARGUMENT),
    ]
    for request, code in cases:
        assert await _code(create(request)) == code, request
    await create(_create(tmp_path))  # no options (not from CRI): defaults
    assert await _code(create(_create(tmp_path))) == Code.ALREADY_EXISTS
    await call("StartSandbox", pb.StartSandboxRequest(sandbox_id=SANDBOX_ID),
               pb.StartSandboxResponse)
    assert backend.pods[0].hostname == "" and backend.pods[0].resources == PodResources()
    assert await _code(call("StartSandbox", pb.StartSandboxRequest(sandbox_id=SANDBOX_ID),
                            pb.StartSandboxResponse)) == Code.FAILED_PRECONDITION


async def test_failed_start_ends_the_sandbox_and_shutdown_still_works(sandbox_api):
    """containerd answers a failed StartSandbox with ShutdownSandbox + the shim's delete."""
    call, backend, shut_down, tmp_path = sandbox_api
    backend.launch_error = FileExistsError("sandbox sb1 already exists at /run/x")
    await call("CreateSandbox", _create(tmp_path), pb.CreateSandboxResponse)
    assert await _code(call("StartSandbox", pb.StartSandboxRequest(sandbox_id=SANDBOX_ID),
                            pb.StartSandboxResponse)) == Code.ALREADY_EXISTS
    waited = await call("WaitSandbox", pb.WaitSandboxRequest(sandbox_id=SANDBOX_ID),
                        pb.WaitSandboxResponse)
    assert waited.exit_status == 0 and waited.exited_at.seconds > 0
    status = await call("SandboxStatus", pb.SandboxStatusRequest(sandbox_id=SANDBOX_ID),
                        pb.SandboxStatusResponse)
    assert status.state == "SANDBOX_NOTREADY"
    await call("ShutdownSandbox", pb.ShutdownSandboxRequest(sandbox_id=SANDBOX_ID),
               pb.ShutdownSandboxResponse)
    assert shut_down.is_set() and ("stop_pod",) not in backend.calls  # no VM to stop


async def test_a_vm_that_dies_ends_the_wait_with_its_status(sandbox_api):
    call, backend, _, tmp_path = sandbox_api
    await call("CreateSandbox", _create(tmp_path), pb.CreateSandboxResponse)
    await call("StartSandbox", pb.StartSandboxRequest(sandbox_id=SANDBOX_ID),
               pb.StartSandboxResponse)
    wait = asyncio.ensure_future(call("WaitSandbox", pb.WaitSandboxRequest(sandbox_id=SANDBOX_ID),
                                      pb.WaitSandboxResponse))
    await asyncio.sleep(0.05)
    assert not wait.done()
    backend.vm_exits(255)
    assert (await asyncio.wait_for(wait, 5)).exit_status == 255
    status = await call("SandboxStatus", pb.SandboxStatusRequest(sandbox_id=SANDBOX_ID),
                        pb.SandboxStatusResponse)
    assert status.state == "SANDBOX_NOTREADY"


async def test_stop_before_start_ends_the_wait(sandbox_api):
    call, backend, _, tmp_path = sandbox_api
    await call("CreateSandbox", _create(tmp_path), pb.CreateSandboxResponse)
    wait = asyncio.ensure_future(call("WaitSandbox", pb.WaitSandboxRequest(sandbox_id=SANDBOX_ID),
                                      pb.WaitSandboxResponse))
    await call("StopSandbox", pb.StopSandboxRequest(sandbox_id=SANDBOX_ID),
               pb.StopSandboxResponse)
    assert (await asyncio.wait_for(wait, 5)).exit_status == 0
    assert await _code(call("StartSandbox", pb.StartSandboxRequest(sandbox_id=SANDBOX_ID),
                            pb.StartSandboxResponse)) == Code.FAILED_PRECONDITION
    assert not backend.pods


def test_pod_config_fields_match_the_cri_api():
    """Our PodSandboxConfig subset decodes what the real CRI bindings encode."""
    cri = pytest.importorskip("cri_api.v1.api_pb2",
                              reason="pip install --no-deps container-runtime-interface-api==2.0.1")
    sent = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name="web", uid="u1", namespace="ns", attempt=3),
        hostname="web-0", log_directory="/var/log/pods/x", labels={"app": "web"},
        annotations={"io.graft.a": "b"}, dns_config=cri.DNSConfig(servers=["10.0.0.10"]),
        linux=cri.LinuxPodSandboxConfig(
            cgroup_parent="/kubepods", security_context=cri.LinuxSandboxSecurityContext(
                namespace_options=cri.NamespaceOption(network=cri.POD, pid=cri.NODE, ipc=cri.CONTAINER)),
            resources=cri.LinuxContainerResources(
                cpu_period=100000, cpu_quota=250000, cpu_shares=512,
                memory_limit_in_bytes=1 << 30)))
    got = cri_pod_config.unpack(any_pb2.Any(
        type_url=f"type.googleapis.com/{cri_pod_config.TYPE_NAME}", value=sent.SerializeToString()))
    assert (got.metadata.name, got.metadata.uid, got.metadata.namespace, got.metadata.attempt) == \
        ("web", "u1", "ns", 3)
    assert (got.hostname, got.log_directory) == ("web-0", "/var/log/pods/x")
    assert dict(got.labels) == {"app": "web"} and dict(got.annotations) == {"io.graft.a": "b"}
    r = got.linux.resources
    assert got.linux.cgroup_parent == "/kubepods"
    assert (r.cpu_period, r.cpu_quota, r.cpu_shares, r.memory_limit_in_bytes) == \
        (100000, 250000, 512, 1 << 30)
    options = got.linux.security_context.namespace_options
    assert (options.network, options.pid, options.ipc) == (cri.POD, cri.NODE, cri.CONTAINER)
    assert cri_pod_config.node_namespaces(got) == ["pid"]
    assert cri_pod_config.PodSandboxConfig.DESCRIPTOR.full_name == \
        cri.PodSandboxConfig.DESCRIPTOR.full_name


# -- the daemon: a Sandbox API pod outlives its containers -------------------------------------

async def test_daemon_serves_both_apis_and_exits_on_shutdown_sandbox(tmp_path, monkeypatch):
    containerd = tmp_path / "containerd.sock"
    monkeypatch.setenv("TTRPC_ADDRESS", f"{containerd}.ttrpc")  # nobody there: events retry
    args = ShimArgs(action=Action.SERVE, namespace="unit", address=str(containerd),
                    publish_binary="", id=SANDBOX_ID, bundle=tmp_path, debug=False)
    backend = FakePodBackend()
    shim_sock = tmp_path / "shim.sock"
    daemon = Daemon(args, _listener(shim_sock), lambda: backend, idle_seconds=0.4)
    run = asyncio.ensure_future(daemon.run())
    client = await Client.connect_unix(str(shim_sock))
    call = lambda s, m, req, resp: client.call(s.full_name, m, req, resp, timeout=5)  # noqa: E731
    try:
        await call(SANDBOX_SERVICE, "CreateSandbox", _create(tmp_path), pb.CreateSandboxResponse)
        await call(SANDBOX_SERVICE, "StartSandbox", pb.StartSandboxRequest(sandbox_id=SANDBOX_ID),
                   pb.StartSandboxResponse)
        # What containerd sends after each app container's delete: no task left, but the pod
        # lives on (containers may be created in it again).
        await call(TASK_SERVICE, "Shutdown", shim_pb2.ShutdownRequest(id="app"), empty_pb2.Empty)
        await client.close()
        await asyncio.sleep(0.8)  # twice idle_seconds, no client: the sandbox keeps it alive
        assert not run.done() and shim_sock.exists()
        client = await Client.connect_unix(str(shim_sock))
        await call(SANDBOX_SERVICE, "ShutdownSandbox",
                   pb.ShutdownSandboxRequest(sandbox_id=SANDBOX_ID), pb.ShutdownSandboxResponse)
        await asyncio.wait_for(run, 10)
    finally:
        await end_daemon(daemon, run, client)
    assert ("stop_pod",) in backend.calls and backend.closed
    assert not shim_sock.exists()

"""The task API over a real ttrpc connection: proto translation and errors → status codes."""
from __future__ import annotations

import asyncio
import json

import pytest
from google.protobuf import empty_pb2

from shim.api.containerd import TASK_SERVICE, shim_pb2 as pb, task_types_pb2
from shim.events import RecordingSink
from shim.task.manager import TaskManager
from shim.task_service import TaskService
from shim.ttrpc import Client, Code, Server, TtrpcError

from test_task_manager import FakeBackend  # same directory (pytest puts it on sys.path)

SERVICE = TASK_SERVICE.full_name


@pytest.fixture
async def client(tmp_path):
    backend = FakeBackend()
    manager = TaskManager(backend, RecordingSink(), "test")
    stopped = asyncio.Event()
    server = Server()
    server.register_service(TASK_SERVICE, TaskService(manager, stopped.set))
    path = tmp_path / "shim.sock"
    await server.serve_unix(str(path))
    c = await Client.connect_unix(str(path))
    yield c, backend, stopped
    await c.close()
    await server.close()
    await manager.close()


async def test_ctr_like_flow_and_codes(client, tmp_path):
    c, backend, stopped = client
    bundle = tmp_path / "b"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps({"process": {"args": ["true"]}}))
    call = lambda m, req, resp: c.call(SERVICE, m, req, resp, timeout=5)  # noqa: E731

    created = await call("Create", pb.CreateTaskRequest(id="c1", bundle=str(bundle)),
                         pb.CreateTaskResponse)
    assert created.pid == 4242
    connect = await call("Connect", pb.ConnectRequest(id="c1"), pb.ConnectResponse)
    assert connect.task_pid == 4242 and connect.shim_pid > 0
    wait = asyncio.ensure_future(call("Wait", pb.WaitRequest(id="c1"), pb.WaitResponse))
    await call("Start", pb.StartRequest(id="c1"), pb.StartResponse)
    state = await call("State", pb.StateRequest(id="c1"), pb.StateResponse)
    assert state.status == task_types_pb2.RUNNING and state.bundle == str(bundle)
    with pytest.raises(TtrpcError) as err:
        await call("Checkpoint", pb.CheckpointTaskRequest(id="c1"), empty_pb2.Empty)
    assert err.value.code == Code.UNIMPLEMENTED
    with pytest.raises(TtrpcError) as err:
        await call("Start", pb.StartRequest(id="c1"), pb.StartResponse)
    assert err.value.code == Code.FAILED_PRECONDITION
    with pytest.raises(TtrpcError) as err:
        await call("State", pb.StateRequest(id="zz"), pb.StateResponse)
    assert err.value.code == Code.NOT_FOUND
    stats = await call("Stats", pb.StatsRequest(id="c1"), pb.StatsResponse)
    assert stats.stats.type_url == "io.containerd.cgroups.v2.Metrics"

    await call("Kill", pb.KillRequest(id="c1", signal=15), empty_pb2.Empty)
    assert (await wait).exit_status == 143
    with pytest.raises(TtrpcError) as err:
        await call("Kill", pb.KillRequest(id="c1", signal=9), empty_pb2.Empty)
    assert err.value.code == Code.NOT_FOUND
    await call("Shutdown", pb.ShutdownRequest(id="c1"), empty_pb2.Empty)
    assert not stopped.is_set()  # a task is still there
    deleted = await call("Delete", pb.DeleteRequest(id="c1"), pb.DeleteResponse)
    assert deleted.exit_status == 143 and deleted.exited_at.seconds > 0
    await call("Shutdown", pb.ShutdownRequest(id="c1"), empty_pb2.Empty)
    assert stopped.is_set()


PROCESS_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
RESOURCES_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"


def _any(url: str, document) -> "any_pb2.Any":
    from google.protobuf import any_pb2

    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    return any_pb2.Any(type_url=url, value=raw)


async def _code(awaitable) -> Code:
    with pytest.raises(TtrpcError) as err:
        await awaitable
    return err.value.code


async def test_every_rpc_and_its_error_codes(client, tmp_path):
    """All 17 methods of containerd.task.v2.Task answer, with containerd's codes."""
    from shim.api.containerd import cgroups_v2_pb2

    c, backend, stopped = client
    bundle = tmp_path / "b"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps({"process": {"args": ["sh"]}}))
    call = lambda m, req, resp: c.call(SERVICE, m, req, resp, timeout=5)  # noqa: E731
    assert len(TASK_SERVICE.methods) == 17

    assert await _code(call("Create", pb.CreateTaskRequest(id="../x", bundle=str(bundle)),
                            pb.CreateTaskResponse)) == Code.INVALID_ARGUMENT
    assert await _code(call("Create", pb.CreateTaskRequest(id="c1", bundle="relative"),
                            pb.CreateTaskResponse)) == Code.INVALID_ARGUMENT
    assert await _code(call("Create", pb.CreateTaskRequest(id="c1", bundle=str(bundle),
                                                           checkpoint="/cp"),
                            pb.CreateTaskResponse)) == Code.UNIMPLEMENTED
    assert await _code(call("Create", pb.CreateTaskRequest(
        id="c1", bundle=str(bundle), stdout="tcp://h:1"), pb.CreateTaskResponse)) \
        == Code.INVALID_ARGUMENT
    for method, request, response in (
            ("Start", pb.StartRequest(id="c1"), pb.StartResponse),
            ("Delete", pb.DeleteRequest(id="c1"), pb.DeleteResponse),
            ("Kill", pb.KillRequest(id="c1", signal=9), empty_pb2.Empty),
            ("Wait", pb.WaitRequest(id="c1"), pb.WaitResponse),
            ("Pids", pb.PidsRequest(id="c1"), pb.PidsResponse),
            ("Stats", pb.StatsRequest(id="c1"), pb.StatsResponse),
            ("Pause", pb.PauseRequest(id="c1"), empty_pb2.Empty),
            ("CloseIO", pb.CloseIORequest(id="c1", stdin=True), empty_pb2.Empty),
            ("ResizePty", pb.ResizePtyRequest(id="c1", width=80, height=24), empty_pb2.Empty),
            ("Update", pb.UpdateTaskRequest(id="c1"), empty_pb2.Empty)):
        assert await _code(call(method, request, response)) == Code.NOT_FOUND, method
    assert (await call("Connect", pb.ConnectRequest(id="c1"), pb.ConnectResponse)).task_pid == 0

    await call("Create", pb.CreateTaskRequest(id="c1", bundle=str(bundle)), pb.CreateTaskResponse)
    await call("Start", pb.StartRequest(id="c1"), pb.StartResponse)
    pids = await call("Pids", pb.PidsRequest(id="c1"), pb.PidsResponse)
    assert [p.pid for p in pids.processes] == [1, 7]
    stats = await call("Stats", pb.StatsRequest(id="c1"), pb.StatsResponse)
    cgroups_v2_pb2.Metrics.FromString(stats.stats.value)  # what CRI decodes

    # Update: LinuxResources JSON in an Any; annotations-only updates carry none.
    await call("Update", pb.UpdateTaskRequest(id="c1", resources=_any(RESOURCES_URL, {
        "cpu": {"shares": 512}})), empty_pb2.Empty)
    assert ("update", "c1") in backend.calls
    await call("Update", pb.UpdateTaskRequest(id="c1", annotations={"a": "b"}), empty_pb2.Empty)
    for bad in (_any(PROCESS_URL, {"cpu": {}}), _any(RESOURCES_URL, b"{oops"),
                _any(RESOURCES_URL, [1])):
        assert await _code(call("Update", pb.UpdateTaskRequest(id="c1", resources=bad),
                                empty_pb2.Empty)) == Code.INVALID_ARGUMENT

    # Exec: Process JSON in an Any.
    exec_req = lambda eid, spec: pb.ExecProcessRequest(id="c1", exec_id=eid, spec=spec)  # noqa
    for bad in (_any(RESOURCES_URL, {"args": ["true"]}), _any(PROCESS_URL, b"\xff"),
                _any(PROCESS_URL, {"args": []})):
        assert await _code(call("Exec", exec_req("e1", bad), empty_pb2.Empty)) \
            == Code.INVALID_ARGUMENT
    good = _any(PROCESS_URL, {"args": ["sleep", "9"], "cwd": "/"})
    await call("Exec", exec_req("e1", good), empty_pb2.Empty)
    assert await _code(call("Exec", exec_req("e1", good), empty_pb2.Empty)) == Code.ALREADY_EXISTS
    assert await _code(call("Kill", pb.KillRequest(id="c1", exec_id="e1", signal=9),
                            empty_pb2.Empty)) == Code.FAILED_PRECONDITION
    exec_wait = asyncio.ensure_future(call("Wait", pb.WaitRequest(id="c1", exec_id="e1"),
                                           pb.WaitResponse))
    await call("Start", pb.StartRequest(id="c1", exec_id="e1"), pb.StartResponse)
    state = await call("State", pb.StateRequest(id="c1", exec_id="e1"), pb.StateResponse)
    assert (state.id, state.exec_id, state.status) == ("e1", "e1", task_types_pb2.RUNNING)
    await call("ResizePty", pb.ResizePtyRequest(id="c1", exec_id="e1", width=80, height=24),
               empty_pb2.Empty)  # no terminal: accepted, nothing to do
    await call("CloseIO", pb.CloseIORequest(id="c1", exec_id="e1", stdin=True), empty_pb2.Empty)
    assert await _code(call("Delete", pb.DeleteRequest(id="c1", exec_id="e1"),
                            pb.DeleteResponse)) == Code.FAILED_PRECONDITION  # running
    await call("Kill", pb.KillRequest(id="c1", exec_id="e1", signal=9), empty_pb2.Empty)
    assert (await exec_wait).exit_status == 137
    assert await _code(call("Kill", pb.KillRequest(id="c1", exec_id="e1", signal=9),
                            empty_pb2.Empty)) == Code.NOT_FOUND
    assert (await call("Delete", pb.DeleteRequest(id="c1", exec_id="e1"),
                       pb.DeleteResponse)).exit_status == 137

    await call("Pause", pb.PauseRequest(id="c1"), empty_pb2.Empty)
    assert (await call("State", pb.StateRequest(id="c1"), pb.StateResponse)).status \
        == task_types_pb2.PAUSED
    assert await _code(call("Pause", pb.PauseRequest(id="c1"), empty_pb2.Empty)) \
        == Code.FAILED_PRECONDITION
    await call("Resume", pb.ResumeRequest(id="c1"), empty_pb2.Empty)
    assert await _code(call("Checkpoint", pb.CheckpointTaskRequest(id="c1"), empty_pb2.Empty)) \
        == Code.UNIMPLEMENTED
    assert await _code(c.call(SERVICE, "NoSuchMethod", pb.StateRequest(id="c1"),
                              pb.StateResponse, timeout=5)) == Code.UNIMPLEMENTED

    await call("Kill", pb.KillRequest(id="c1", signal=9), empty_pb2.Empty)
    await call("Wait", pb.WaitRequest(id="c1"), pb.WaitResponse)
    await call("Delete", pb.DeleteRequest(id="c1"), pb.DeleteResponse)
    await call("Shutdown", pb.ShutdownRequest(id="c1"), empty_pb2.Empty)
    assert stopped.is_set()


async def test_malformed_request_payload_is_invalid_argument(client):
    from google.protobuf import wrappers_pb2

    c, _, _ = client
    # Field 1 of CreateTaskRequest (id, a string) sent as invalid UTF-8 bytes.
    garbage = wrappers_pb2.BytesValue(value=b"\xff\xfe")
    assert await _code(c.call(SERVICE, "Create", garbage, pb.CreateTaskResponse, timeout=5)) \
        == Code.INVALID_ARGUMENT


async def test_shutdown_while_a_task_is_being_created_keeps_the_shim(client, tmp_path):
    c, backend, stopped = client
    bundle = tmp_path / "b"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps({"process": {"args": ["sh"]}}))
    backend.create_gate = asyncio.Event()  # the VM is still booting
    create = asyncio.ensure_future(c.call(SERVICE, "Create", pb.CreateTaskRequest(
        id="c1", bundle=str(bundle)), pb.CreateTaskResponse, timeout=5))
    for _ in range(200):
        if backend.calls or create.done():
            break
        await asyncio.sleep(0.01)
    assert backend.calls == [("create", "c1", "single")]
    await c.call(SERVICE, "Shutdown", pb.ShutdownRequest(id="other"), empty_pb2.Empty, timeout=5)
    assert not stopped.is_set()
    backend.create_gate.set()
    assert (await create).pid == 4242


async def test_bad_config_fails_create_naming_the_key(tmp_path):
    """The real VM backend reads the config when the pod's VM is launched: a bad key is an
    InvalidArgument that names it (containerd shows that message), and nothing is left."""
    from shim.task.vm_backend import VmBackend

    config = tmp_path / "graft.toml"
    config.write_text('[hypervisor]\nmemory_mib = "lots"\n')
    manager = TaskManager(VmBackend(str(config)), RecordingSink(), "test")
    server = Server()
    server.register_service(TASK_SERVICE, TaskService(manager, lambda: None))
    await server.serve_unix(str(tmp_path / "s.sock"))
    c = await Client.connect_unix(str(tmp_path / "s.sock"))
    bundle = tmp_path / "b"
    (bundle / "rootfs").mkdir(parents=True)
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")]
    (bundle / "config.json").write_text(json.dumps({"process": {"args": ["true"]},
                                                    "linux": {"namespaces": namespaces}}))
    try:
        with pytest.raises(TtrpcError) as err:
            await c.call(SERVICE, "Create", pb.CreateTaskRequest(id="c1", bundle=str(bundle)),
                         pb.CreateTaskResponse, timeout=5)
        assert err.value.code == Code.INVALID_ARGUMENT
        assert "[hypervisor] memory_mib" in err.value.message
        assert manager.empty.is_set() and not manager.container_ids
    finally:
        await c.close()
        await server.close()
        await manager.close()

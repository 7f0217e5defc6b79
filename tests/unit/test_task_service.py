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

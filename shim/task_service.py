"""containerd.task.v2.Task over ttrpc: protobuf ↔ domain translation, errors → codes.

Nothing here decides anything: the rules live in shim/task/manager.py.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from google.protobuf import any_pb2, empty_pb2

from shim.api.containerd import shim_pb2 as pb, task_types_pb2
from shim.rpc_edge import rpc_edge, timestamp
from shim.task.errors import InvalidArgument, Unimplemented
from shim.task.manager import CreateRequest, ProcessStatus, TaskManager
from shim.task.process import State
from shim.task.rootfs import Mount
from shim.task.stdio import StdioSpec

VERSION = 2  # task API version reported by Connect

_STATUS = {
    State.CREATED: task_types_pb2.CREATED,
    State.RUNNING: task_types_pb2.RUNNING,
    State.PAUSED: task_types_pb2.PAUSED,
    State.STOPPED: task_types_pb2.STOPPED,
    State.DELETED: task_types_pb2.STOPPED,
}


def _json_any(value: any_pb2.Any, type_name: str) -> bytes:
    """An OCI document (*type_name*: Process, LinuxResources) as JSON inside an Any, the way
    containerd's typeurl registry packs Go structs; must hold a JSON object."""
    if value.type_url.rsplit("/", 1)[-1] != type_name:
        raise InvalidArgument(f"expected an Any of {type_name}, got {value.type_url!r}")
    try:
        document = json.loads(value.value)
    except ValueError as exc:
        raise InvalidArgument(f"{type_name} ({value.type_url}) is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidArgument(f"{type_name} ({value.type_url}) is not a JSON object")
    return value.value


class TaskService:
    """Bound to a ttrpc Server with ``server.register_service(TASK_SERVICE, service)``."""

    def __init__(self, manager: TaskManager, on_shutdown: Callable[[], None]) -> None:
        self._manager = manager
        self._on_shutdown = on_shutdown

    @rpc_edge
    async def Create(self, req: pb.CreateTaskRequest) -> pb.CreateTaskResponse:
        if req.checkpoint or req.parent_checkpoint:
            raise Unimplemented("checkpoint/restore is not supported")
        mounts = [Mount(m.type, m.source, m.target, tuple(m.options)) for m in req.rootfs]
        pid = await self._manager.create(CreateRequest(
            container_id=req.id, bundle=Path(req.bundle), mounts=mounts,
            stdio=StdioSpec(req.stdin, req.stdout, req.stderr, req.terminal)))
        return pb.CreateTaskResponse(pid=pid)

    @rpc_edge
    async def Start(self, req: pb.StartRequest) -> pb.StartResponse:
        return pb.StartResponse(pid=await self._manager.start(req.id, req.exec_id))

    @rpc_edge
    async def Delete(self, req: pb.DeleteRequest) -> pb.DeleteResponse:
        status = await self._manager.delete(req.id, req.exec_id)
        response = pb.DeleteResponse(pid=status.pid)
        if status.exit is not None:
            response.exit_status = status.exit.status
            response.exited_at.CopyFrom(timestamp(status.exit.exited_at_ns))
        return response

    @rpc_edge
    async def Pids(self, req: pb.PidsRequest) -> pb.PidsResponse:
        pids = await self._manager.pids(req.id)
        return pb.PidsResponse(processes=[task_types_pb2.ProcessInfo(pid=p) for p in pids])

    @rpc_edge
    async def Pause(self, req: pb.PauseRequest) -> empty_pb2.Empty:
        await self._manager.pause(req.id)
        return empty_pb2.Empty()

    @rpc_edge
    async def Resume(self, req: pb.ResumeRequest) -> empty_pb2.Empty:
        await self._manager.resume(req.id)
        return empty_pb2.Empty()

    @rpc_edge
    async def Checkpoint(self, req: pb.CheckpointTaskRequest) -> empty_pb2.Empty:
        raise Unimplemented("checkpoint is not supported by graft")

    @rpc_edge
    async def Kill(self, req: pb.KillRequest) -> empty_pb2.Empty:
        await self._manager.kill(req.id, req.exec_id, req.signal, req.all)
        return empty_pb2.Empty()

    @rpc_edge
    async def Exec(self, req: pb.ExecProcessRequest) -> empty_pb2.Empty:
        await self._manager.exec(req.id, req.exec_id, _json_any(req.spec, "Process"),
                                 StdioSpec(req.stdin, req.stdout, req.stderr, req.terminal))
        return empty_pb2.Empty()

    @rpc_edge
    async def ResizePty(self, req: pb.ResizePtyRequest) -> empty_pb2.Empty:
        await self._manager.resize_pty(req.id, req.exec_id, req.width, req.height)
        return empty_pb2.Empty()

    @rpc_edge
    async def CloseIO(self, req: pb.CloseIORequest) -> empty_pb2.Empty:
        if req.stdin:
            await self._manager.close_io(req.id, req.exec_id)
        return empty_pb2.Empty()

    @rpc_edge
    async def Update(self, req: pb.UpdateTaskRequest) -> empty_pb2.Empty:
        if not req.HasField("resources"):  # annotations only: nothing graft acts on
            self._manager.state(req.id, "")  # but the task must exist
            return empty_pb2.Empty()
        await self._manager.update(req.id, _json_any(req.resources, "LinuxResources"))
        return empty_pb2.Empty()

    @rpc_edge
    async def Wait(self, req: pb.WaitRequest) -> pb.WaitResponse:
        info = await self._manager.wait(req.id, req.exec_id)
        return pb.WaitResponse(exit_status=info.status, exited_at=timestamp(info.exited_at_ns))

    @rpc_edge
    async def Stats(self, req: pb.StatsRequest) -> pb.StatsResponse:
        metrics = await self._manager.stats(req.id)
        # Bare type name, as containerd's typeurl registry writes it.
        return pb.StatsResponse(stats=any_pb2.Any(
            type_url=metrics.DESCRIPTOR.full_name, value=metrics.SerializeToString()))

    @rpc_edge
    async def Connect(self, req: pb.ConnectRequest) -> pb.ConnectResponse:
        return pb.ConnectResponse(shim_pid=os.getpid(), task_pid=self._manager.task_pid(req.id),
                                  version=str(VERSION))

    @rpc_edge
    async def Shutdown(self, req: pb.ShutdownRequest) -> empty_pb2.Empty:
        if self._manager.empty.is_set():  # no task, none being created
            self._on_shutdown()
        return empty_pb2.Empty()

    @rpc_edge
    async def State(self, req: pb.StateRequest) -> pb.StateResponse:
        return _state_response(self._manager.state(req.id, req.exec_id))


def _state_response(s: ProcessStatus) -> pb.StateResponse:
    response = pb.StateResponse(
        id=s.exec_id or s.container_id, bundle=str(s.bundle), pid=s.pid, status=_STATUS[s.state],
        stdin=s.stdio.stdin, stdout=s.stdio.stdout, stderr=s.stdio.stderr,
        terminal=s.stdio.terminal, exec_id=s.exec_id)
    if s.exit is not None:
        response.exit_status = s.exit.status
        response.exited_at.CopyFrom(timestamp(s.exit.exited_at_ns))
    return response

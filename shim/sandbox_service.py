"""containerd.runtime.sandbox.v1.Sandbox over ttrpc: protobuf ↔ domain, errors → codes.

Served beside the task API on the shim's socket for containerd 2.x's `sandboxer = "shim"`.
Nothing here decides anything: the rules live in shim/task/sandbox_controller.py.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from google.protobuf import any_pb2
from google.protobuf.message import Message

from shim.api import cri_pod_config
from shim.api.containerd import metrics_pb2, platform_pb2, sandbox_pb2 as pb
from shim.rpc_edge import rpc_edge, timestamp
from shim.task.backend import PodVm
from shim.task.errors import InvalidArgument, Unimplemented
from shim.task.guest_spec import refuse_node_namespaces
from shim.task.sandbox_controller import SandboxController, SandboxState
from shim.vmconfig.pod_resources import (CRI_CPU_PERIOD, CRI_CPU_QUOTA, CRI_MEMORY,
                                         requested_resources)


# The strings containerd's CRI puts into PodSandboxStatus.state (as its own controller does).
_CRI_STATE = {
    SandboxState.CREATED: "SANDBOX_UNKNOWN",
    SandboxState.STARTING: "SANDBOX_UNKNOWN",
    SandboxState.READY: "SANDBOX_READY",
    SandboxState.STOPPED: "SANDBOX_NOTREADY",
}


def _sizing_annotations(config: Message | None) -> dict[str, str]:
    """The pod's limits as the annotations containerd's pause-container path puts on the
    sandbox spec (from the same CRI field), so both paths size the VM alike."""
    if config is None or not config.linux.HasField("resources"):
        return {}
    r = config.linux.resources
    return {CRI_CPU_PERIOD: str(r.cpu_period), CRI_CPU_QUOTA: str(r.cpu_quota),
            CRI_MEMORY: str(r.memory_limit_in_bytes)}


def pod_vm(req: pb.CreateSandboxRequest) -> PodVm:
    """CreateSandboxRequest → the pod VM it asks for (the bundle holds nothing graft needs:
    containerd writes no config.json for a shim sandbox)."""
    if req.rootfs:
        raise Unimplemented("a sandbox rootfs is not supported: the pod VM boots graft's guest")
    try:
        config = cri_pod_config.unpack(req.options)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc
    if config is not None:
        refuse_node_namespaces(cri_pod_config.node_namespaces(config))
    return PodVm(sandbox_id=req.sandbox_id,
                 netns=Path(req.netns_path) if req.netns_path else None,
                 hostname=config.hostname if config is not None else "",
                 resources=requested_resources({"annotations": _sizing_annotations(config)}))


def _any(message: Message) -> any_pb2.Any:
    # Bare type name, as containerd's typeurl registry writes it.
    return any_pb2.Any(type_url=message.DESCRIPTOR.full_name, value=message.SerializeToString())


class SandboxService:
    """Bound to a ttrpc Server with ``server.register_service(SANDBOX_SERVICE, service)``."""

    def __init__(self, controller: SandboxController, on_shutdown: Callable[[], None]) -> None:
        self._controller = controller
        self._on_shutdown = on_shutdown

    @rpc_edge
    async def CreateSandbox(self, req: pb.CreateSandboxRequest) -> pb.CreateSandboxResponse:
        await self._controller.create(pod_vm(req))
        return pb.CreateSandboxResponse()

    @rpc_edge
    async def StartSandbox(self, req: pb.StartSandboxRequest) -> pb.StartSandboxResponse:
        pid, created_at_ns = await self._controller.start(req.sandbox_id)
        return pb.StartSandboxResponse(pid=pid, created_at=timestamp(created_at_ns))

    @rpc_edge
    async def Platform(self, req: pb.PlatformRequest) -> pb.PlatformResponse:
        platform = self._controller.platform(req.sandbox_id)
        return pb.PlatformResponse(platform=platform_pb2.Platform(
            os=platform.os, architecture=platform.architecture))

    @rpc_edge
    async def StopSandbox(self, req: pb.StopSandboxRequest) -> pb.StopSandboxResponse:
        await self._controller.stop(req.sandbox_id)
        return pb.StopSandboxResponse()

    @rpc_edge
    async def WaitSandbox(self, req: pb.WaitSandboxRequest) -> pb.WaitSandboxResponse:
        info = await self._controller.wait(req.sandbox_id)
        return pb.WaitSandboxResponse(exit_status=info.status,
                                      exited_at=timestamp(info.exited_at_ns))

    @rpc_edge
    async def SandboxStatus(self, req: pb.SandboxStatusRequest) -> pb.SandboxStatusResponse:
        status = self._controller.status(req.sandbox_id, req.verbose)
        response = pb.SandboxStatusResponse(
            sandbox_id=status.sandbox_id, pid=status.pid, state=_CRI_STATE[status.state],
            info=status.info, created_at=timestamp(status.created_at_ns))
        if status.exit is not None:
            response.exited_at.CopyFrom(timestamp(status.exit.exited_at_ns))
        return response

    @rpc_edge
    async def PingSandbox(self, req: pb.PingRequest) -> pb.PingResponse:
        self._controller.ping(req.sandbox_id)
        return pb.PingResponse()

    @rpc_edge
    async def ShutdownSandbox(self, req: pb.ShutdownSandboxRequest) -> pb.ShutdownSandboxResponse:
        await self._controller.shutdown(req.sandbox_id)
        self._on_shutdown()
        return pb.ShutdownSandboxResponse()

    @rpc_edge
    async def SandboxMetrics(self, req: pb.SandboxMetricsRequest) -> pb.SandboxMetricsResponse:
        metrics = await self._controller.metrics(req.sandbox_id)
        return pb.SandboxMetricsResponse(metrics=metrics_pb2.Metric(
            timestamp=timestamp(time.time_ns()), id=req.sandbox_id, data=_any(metrics)))

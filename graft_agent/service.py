"""The ttrpc edge: protobuf requests in, agent calls, protobuf responses out.

Every method maps agent errors to ttrpc status codes; nothing below this module sees a
protobuf type.
"""

from __future__ import annotations

import functools
import logging
import time

from google.protobuf import empty_pb2

from shim.ttrpc import Code, TtrpcError

from .api import agent_pb2 as pb
from .errors import AgentError, InvalidArgument
from .guest import guest_details, online_cpu_mem, reseed_random, set_wall_clock
from .network import Address, Link, Route

log = logging.getLogger(__name__)

DEFAULT_READ_LEN = 64 * 1024
MAX_READ_LEN = 1024 * 1024
_EMPTY = empty_pb2.Empty


def _edge(method):
    @functools.wraps(method)
    async def wrapper(self, request):
        try:
            return await method(self, request)
        except AgentError as exc:
            raise TtrpcError(Code[exc.code], str(exc)) from None
        except OSError as exc:
            log.warning("%s: %s", method.__name__, exc)
            raise TtrpcError(Code.INTERNAL, f"{method.__name__}: {exc}") from None
    return wrapper


class AgentService:
    def __init__(self, agent) -> None:
        self._agent = agent
        self._containers = agent.containers

    # -- sandbox ----------------------------------------------------------------------------

    @_edge
    async def CreateSandbox(self, req: pb.CreateSandboxRequest) -> _EMPTY:
        self._agent.create_sandbox(req.sandbox_id, req.hostname, req.share_mount_tag,
                                   req.share_mount_point, list(req.dns))
        return _EMPTY()

    @_edge
    async def DestroySandbox(self, req: pb.DestroySandboxRequest) -> _EMPTY:
        await self._agent.destroy_sandbox()
        return _EMPTY()

    # -- containers -------------------------------------------------------------------------

    @_edge
    async def CreateContainer(self, req: pb.CreateContainerRequest) -> pb.CreateContainerResponse:
        pid = await self._containers.create(req.container_id, req.oci_spec_json, req.rootfs_path,
                                            req.stdin, req.runtime)
        return pb.CreateContainerResponse(pid=pid)

    @_edge
    async def StartContainer(self, req: pb.ContainerRequest) -> _EMPTY:
        await self._containers.start(req.container_id)
        return _EMPTY()

    @_edge
    async def RemoveContainer(self, req: pb.RemoveContainerRequest) -> _EMPTY:
        await self._containers.remove(req.container_id, req.force)
        return _EMPTY()

    @_edge
    async def ExecProcess(self, req: pb.ExecProcessRequest) -> pb.ExecProcessResponse:
        pid = await self._containers.exec(req.container_id, req.exec_id, req.process_json, req.stdin)
        return pb.ExecProcessResponse(pid=pid)

    @_edge
    async def DeleteProcess(self, req: pb.ProcessRequest) -> _EMPTY:
        self._containers.delete_exec(req.container_id, req.exec_id)
        return _EMPTY()

    @_edge
    async def WaitProcess(self, req: pb.ProcessRequest) -> pb.WaitProcessResponse:
        info = await self._containers.wait(req.container_id, req.exec_id)
        return pb.WaitProcessResponse(exit_status=info.status, exited_at_ns=info.exited_at_ns)

    @_edge
    async def SignalProcess(self, req: pb.SignalProcessRequest) -> _EMPTY:
        self._containers.signal(req.container_id, req.exec_id, req.signal, req.all)
        return _EMPTY()

    @_edge
    async def ListProcesses(self, req: pb.ContainerRequest) -> pb.ListProcessesResponse:
        return pb.ListProcessesResponse(pids=self._containers.list_pids(req.container_id))

    @_edge
    async def PauseContainer(self, req: pb.ContainerRequest) -> _EMPTY:
        await self._containers.pause(req.container_id)
        return _EMPTY()

    @_edge
    async def ResumeContainer(self, req: pb.ContainerRequest) -> _EMPTY:
        await self._containers.resume(req.container_id)
        return _EMPTY()

    @_edge
    async def UpdateContainer(self, req: pb.UpdateContainerRequest) -> _EMPTY:
        await self._containers.update(req.container_id, req.resources_json)
        return _EMPTY()

    @_edge
    async def StatsContainer(self, req: pb.ContainerRequest) -> pb.StatsContainerResponse:
        stats = self._containers.stats(req.container_id)
        cpu = stats.cpu
        return pb.StatsContainerResponse(
            cpu=pb.CpuStats(usage_usec=cpu.get("usage_usec", 0), user_usec=cpu.get("user_usec", 0),
                            system_usec=cpu.get("system_usec", 0),
                            nr_periods=cpu.get("nr_periods", 0),
                            nr_throttled=cpu.get("nr_throttled", 0),
                            throttled_usec=cpu.get("throttled_usec", 0)),
            memory=pb.MemoryStats(usage=stats.memory_current, usage_limit=stats.memory_max,
                                  swap_usage=stats.swap_current, swap_limit=stats.swap_max,
                                  stat=stats.memory_stat,
                                  oom_events=stats.memory_events.get("oom_kill", 0)),
            pids=pb.PidsStats(current=stats.pids_current, limit=stats.pids_max),
            io=[pb.IoEntry(major=d.major, minor=d.minor, rbytes=d.counters.get("rbytes", 0),
                           wbytes=d.counters.get("wbytes", 0), rios=d.counters.get("rios", 0),
                           wios=d.counters.get("wios", 0)) for d in stats.io],
            timestamp_ns=time.time_ns())

    @_edge
    async def GetOOMEvent(self, req: _EMPTY) -> pb.OOMEvent:
        return pb.OOMEvent(container_id=await self._agent.oom.next_event())

    # -- streams ----------------------------------------------------------------------------

    @_edge
    async def ReadStdout(self, req: pb.ReadStreamRequest) -> pb.ReadStreamResponse:
        process = self._containers.process(req.container_id, req.exec_id)
        data, eof = await process.stdout.read(_read_len(req.max_len))
        return pb.ReadStreamResponse(data=data, eof=eof)

    @_edge
    async def ReadStderr(self, req: pb.ReadStreamRequest) -> pb.ReadStreamResponse:
        process = self._containers.process(req.container_id, req.exec_id)
        data, eof = await process.stderr.read(_read_len(req.max_len))
        return pb.ReadStreamResponse(data=data, eof=eof)

    @_edge
    async def WriteStdin(self, req: pb.WriteStreamRequest) -> pb.WriteStreamResponse:
        process = self._containers.process(req.container_id, req.exec_id)
        return pb.WriteStreamResponse(len=await process.write_stdin(req.data))

    @_edge
    async def CloseStdin(self, req: pb.ProcessRequest) -> _EMPTY:
        await self._containers.process(req.container_id, req.exec_id).close_stdin()
        return _EMPTY()

    @_edge
    async def TtyWinResize(self, req: pb.TtyWinResizeRequest) -> _EMPTY:
        if not (0 < req.rows < 65536 and 0 < req.cols < 65536):
            raise InvalidArgument(f"invalid window size {req.rows}x{req.cols}")
        self._containers.process(req.container_id, req.exec_id).resize(req.rows, req.cols)
        return _EMPTY()

    # -- network ----------------------------------------------------------------------------

    @_edge
    async def UpdateInterface(self, req: pb.UpdateInterfaceRequest) -> pb.Interface:
        i = req.interface
        link = await self._agent.network.update_link(
            Link(i.name, i.hw_addr, i.mtu, [Address(a.address, a.prefix_len) for a in i.addresses]),
            match_hw_addr=req.match_hw_addr)
        return _interface(link)

    @_edge
    async def UpdateRoutes(self, req: pb.UpdateRoutesRequest) -> pb.Routes:
        routes = await self._agent.network.update_routes(
            [Route(r.dest, r.gateway, r.device, r.source, r.scope) for r in req.routes.routes])
        return _routes(routes)

    @_edge
    async def ListInterfaces(self, req: _EMPTY) -> pb.Interfaces:
        return pb.Interfaces(interfaces=[_interface(link)
                                         for link in await self._agent.network.list_links()])

    @_edge
    async def ListRoutes(self, req: _EMPTY) -> pb.Routes:
        return _routes(await self._agent.network.list_routes())

    # -- housekeeping -----------------------------------------------------------------------

    @_edge
    async def ReseedRandomDev(self, req: pb.ReseedRandomDevRequest) -> _EMPTY:
        reseed_random(req.data)
        return _EMPTY()

    @_edge
    async def SetGuestDateTime(self, req: pb.SetGuestDateTimeRequest) -> _EMPTY:
        set_wall_clock(req.sec, req.usec)
        return _EMPTY()

    @_edge
    async def OnlineCPUMem(self, req: pb.OnlineCPUMemRequest) -> _EMPTY:
        await online_cpu_mem(req.nb_cpus, req.cpu_only, req.memory_bytes)
        return _EMPTY()

    @_edge
    async def GetGuestDetails(self, req: _EMPTY) -> pb.GuestDetailsResponse:
        return pb.GuestDetailsResponse(**guest_details(self._containers.default_runtime,
                                                       self._agent.started_at))

    @_edge
    async def WarmUp(self, req: pb.WarmUpRequest) -> _EMPTY:
        await self._agent.warm_up_clone(req.share_mount_tag)
        return _EMPTY()

    @_edge
    async def Check(self, req: pb.CheckRequest) -> pb.HealthCheckResponse:
        await self._agent.ready()
        return pb.HealthCheckResponse(status=pb.HealthCheckResponse.SERVING)


def _read_len(max_len: int) -> int:
    return min(max_len or DEFAULT_READ_LEN, MAX_READ_LEN)


def _interface(link: Link) -> pb.Interface:
    return pb.Interface(name=link.name, hw_addr=link.hw_addr, mtu=link.mtu,
                        addresses=[pb.IPAddress(address=a.address, prefix_len=a.prefix_len)
                                   for a in link.addresses])


def _routes(routes: list[Route]) -> pb.Routes:
    return pb.Routes(routes=[pb.Route(dest=r.dest, gateway=r.gateway, device=r.device,
                                      source=r.source, scope=r.scope) for r in routes])

"""Host-side client of the guest agent: one method per agent RPC.

Keyword arguments in, protobuf responses out; transport errors surface as
:class:`shim.ttrpc.TtrpcError` (UNAVAILABLE when the connection is lost).
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, TypeVar

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from graft_agent.api import SERVICE_NAME, agent_pb2 as pb
from shim.ttrpc import Client, Code, TtrpcError

M = TypeVar("M", bound=Message)

_EMPTY = empty_pb2.Empty


class AgentClient:
    """A connected agent client. Create with :func:`connect_serial_socket`."""

    def __init__(self, ttrpc: Client, default_timeout: float = 60.0) -> None:
        self._ttrpc = ttrpc
        self._timeout = default_timeout

    async def close(self) -> None:
        await self._ttrpc.close()

    @property
    def closed(self) -> bool:
        return self._ttrpc.closed

    async def _call(self, method: str, request: Message, response_type: type[M],
                    timeout: float | None = None) -> M:
        return await self._ttrpc.call(SERVICE_NAME, method, request, response_type,
                                      timeout=self._timeout if timeout is None else timeout)

    # -- sandbox -------------------------------------------------------------
    async def create_sandbox(self, sandbox_id: str, hostname: str, share_mount_tag: str,
                             share_mount_point: str, dns: list[str] | None = None) -> None:
        await self._call("CreateSandbox", pb.CreateSandboxRequest(
            sandbox_id=sandbox_id, hostname=hostname, share_mount_tag=share_mount_tag,
            share_mount_point=share_mount_point, dns=dns or []), _EMPTY)

    async def destroy_sandbox(self) -> None:
        await self._call("DestroySandbox", pb.DestroySandboxRequest(), _EMPTY)

    # -- containers and processes -------------------------------------------
    async def create_container(self, container_id: str, oci_spec_json: bytes, rootfs_path: str,
                               stdin: bool, runtime: str = "") -> int:
        resp = await self._call("CreateContainer", pb.CreateContainerRequest(
            container_id=container_id, oci_spec_json=oci_spec_json, rootfs_path=rootfs_path,
            stdin=stdin, runtime=runtime), pb.CreateContainerResponse)
        return resp.pid

    async def start_container(self, container_id: str) -> None:
        await self._call("StartContainer", pb.ContainerRequest(container_id=container_id), _EMPTY)

    async def remove_container(self, container_id: str, force: bool = False) -> None:
        await self._call("RemoveContainer", pb.RemoveContainerRequest(
            container_id=container_id, force=force), _EMPTY)

    async def exec_process(self, container_id: str, exec_id: str, process_json: bytes,
                           stdin: bool) -> int:
        resp = await self._call("ExecProcess", pb.ExecProcessRequest(
            container_id=container_id, exec_id=exec_id, process_json=process_json, stdin=stdin),
            pb.ExecProcessResponse)
        return resp.pid

    async def delete_process(self, container_id: str, exec_id: str) -> None:
        await self._call("DeleteProcess", pb.ProcessRequest(
            container_id=container_id, exec_id=exec_id), _EMPTY)

    async def wait_process(self, container_id: str, exec_id: str = "") -> pb.WaitProcessResponse:
        # No deadline: a process may run for as long as it likes.
        return await self._ttrpc.call(SERVICE_NAME, "WaitProcess", pb.ProcessRequest(
            container_id=container_id, exec_id=exec_id), pb.WaitProcessResponse, timeout=None)

    async def signal_process(self, container_id: str, exec_id: str, signal: int,
                             all: bool = False) -> None:
        await self._call("SignalProcess", pb.SignalProcessRequest(
            container_id=container_id, exec_id=exec_id, signal=signal, all=all), _EMPTY)

    async def list_processes(self, container_id: str) -> list[int]:
        resp = await self._call("ListProcesses", pb.ContainerRequest(container_id=container_id),
                                pb.ListProcessesResponse)
        return list(resp.pids)

    async def pause_container(self, container_id: str) -> None:
        await self._call("PauseContainer", pb.ContainerRequest(container_id=container_id), _EMPTY)

    async def resume_container(self, container_id: str) -> None:
        await self._call("ResumeContainer", pb.ContainerRequest(container_id=container_id), _EMPTY)

    async def update_container(self, container_id: str, resources_json: bytes) -> None:
        await self._call("UpdateContainer", pb.UpdateContainerRequest(
            container_id=container_id, resources_json=resources_json), _EMPTY)

    async def stats_container(self, container_id: str) -> pb.StatsContainerResponse:
        return await self._call("StatsContainer", pb.ContainerRequest(container_id=container_id),
                                pb.StatsContainerResponse)

    async def get_oom_event(self) -> str:
        resp = await self._ttrpc.call(SERVICE_NAME, "GetOOMEvent", _EMPTY(), pb.OOMEvent,
                                      timeout=None)
        return resp.container_id

    # -- streams ---------------------------------------------------------------
    async def read_stdout(self, container_id: str, exec_id: str = "",
                          max_len: int = 0) -> pb.ReadStreamResponse:
        return await self._ttrpc.call(SERVICE_NAME, "ReadStdout", pb.ReadStreamRequest(
            container_id=container_id, exec_id=exec_id, max_len=max_len),
            pb.ReadStreamResponse, timeout=None)

    async def read_stderr(self, container_id: str, exec_id: str = "",
                          max_len: int = 0) -> pb.ReadStreamResponse:
        return await self._ttrpc.call(SERVICE_NAME, "ReadStderr", pb.ReadStreamRequest(
            container_id=container_id, exec_id=exec_id, max_len=max_len),
            pb.ReadStreamResponse, timeout=None)

    async def write_stdin(self, container_id: str, exec_id: str, data: bytes) -> int:
        """Bytes of *data* the process took (a prefix; send the rest next). No deadline: the
        agent answers once the reader took some, however slow it is."""
        resp = await self._ttrpc.call(SERVICE_NAME, "WriteStdin", pb.WriteStreamRequest(
            container_id=container_id, exec_id=exec_id, data=data), pb.WriteStreamResponse,
            timeout=None)
        return resp.len

    async def close_stdin(self, container_id: str, exec_id: str = "") -> None:
        await self._call("CloseStdin", pb.ProcessRequest(
            container_id=container_id, exec_id=exec_id), _EMPTY)

    async def tty_win_resize(self, container_id: str, exec_id: str, rows: int, cols: int) -> None:
        await self._call("TtyWinResize", pb.TtyWinResizeRequest(
            container_id=container_id, exec_id=exec_id, rows=rows, cols=cols), _EMPTY)

    # -- networking --------------------------------------------------------------
    async def update_interface(self, interface: pb.Interface,
                               match_hw_addr: str = "") -> pb.Interface:
        return await self._call("UpdateInterface", pb.UpdateInterfaceRequest(
            interface=interface, match_hw_addr=match_hw_addr), pb.Interface)

    async def update_routes(self, routes: list[pb.Route]) -> pb.Routes:
        return await self._call("UpdateRoutes", pb.UpdateRoutesRequest(
            routes=pb.Routes(routes=routes)), pb.Routes)

    async def list_interfaces(self) -> list[pb.Interface]:
        return list((await self._call("ListInterfaces", _EMPTY(), pb.Interfaces)).interfaces)

    async def list_routes(self) -> list[pb.Route]:
        return list((await self._call("ListRoutes", _EMPTY(), pb.Routes)).routes)

    # -- housekeeping --------------------------------------------------------------
    async def reseed_random_dev(self, data: bytes) -> None:
        await self._call("ReseedRandomDev", pb.ReseedRandomDevRequest(data=data), _EMPTY)

    async def set_guest_date_time(self, sec: int, usec: int) -> None:
        await self._call("SetGuestDateTime", pb.SetGuestDateTimeRequest(sec=sec, usec=usec), _EMPTY)

    async def online_cpu_mem(self, nb_cpus: int, cpu_only: bool = False,
                             memory_bytes: int = 0) -> None:
        """Online hot-added CPUs/memory; waits for nb_cpus CPUs and memory_bytes
        of online memory (0 = no wait)."""
        await self._call("OnlineCPUMem", pb.OnlineCPUMemRequest(
            nb_cpus=nb_cpus, cpu_only=cpu_only, memory_bytes=memory_bytes), _EMPTY)

    async def get_guest_details(self) -> pb.GuestDetailsResponse:
        return await self._call("GetGuestDetails", _EMPTY(), pb.GuestDetailsResponse)

    async def warm_up(self, share_mount_tag: str = "") -> None:
        await self._call("WarmUp", pb.WarmUpRequest(share_mount_tag=share_mount_tag), _EMPTY)

    async def check(self, timeout: float | None = None) -> bool:
        resp = await self._call("Check", pb.CheckRequest(), pb.HealthCheckResponse, timeout=timeout)
        return resp.status == pb.HealthCheckResponse.SERVING


StreamOpener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def connect_agent(open_stream: StreamOpener, deadline: float,
                        poll_interval: float = 0.01,
                        attempt_timeout: float | None = None) -> AgentClient:
    """Connect to the guest agent and wait until it answers a health check,
    or raise TimeoutError at *deadline* (an event-loop time).

    A VMM's chardev accepts before the guest agent runs, so readiness is
    proven by the health check, never by a sleep.

    *attempt_timeout*: reconnect when one connection's health check is not
    answered within it (doubling each time). A safety net for VMs restored
    from a template, whose agent is ending the template's session when the
    host connects (the agent keeps such early requests; older agents
    dropped them).
    """
    loop = asyncio.get_running_loop()
    attempt = attempt_timeout
    last_error: OSError | None = None
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError("the guest agent did not answer in time"
                               + (f" (last connect error: {last_error})" if last_error else ""))
        try:
            reader, writer = await open_stream()
        except OSError as exc:
            # Not there yet: socket not bound, refused, or (hybrid vsock) the
            # VMM closing a CONNECT to a guest port nobody listens on yet.
            last_error = exc
            await asyncio.sleep(poll_interval)
            continue
        client = AgentClient(Client(reader, writer))
        try:
            # Bytes written before the agent opened its port wait in the VMM
            # and are answered once it runs: one health check per connection.
            if await client.check(timeout=remaining if attempt is None
                                  else min(remaining, attempt)):
                return client
        except TtrpcError as exc:
            if exc.code not in (Code.DEADLINE_EXCEEDED, Code.UNAVAILABLE):
                await client.close()
                raise
        await client.close()
        if attempt is not None:
            attempt *= 2
        await asyncio.sleep(poll_interval)

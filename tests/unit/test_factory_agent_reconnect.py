"""A restored clone's agent can lose the first health check (it reaches the
template's ending session): the restore path reconnects instead of waiting
for the whole boot timeout. Real ttrpc server over a unix socket; the
"lost request" is a first connection that is read and never answered."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from graft_agent.api import SERVICE_NAME, agent_pb2 as pb
from shim.agent.client import connect_agent
from shim.ttrpc import Server


@pytest.fixture
async def agent_losing_first_request(tmp_path: Path):
    server = Server()

    async def check(_: pb.CheckRequest) -> pb.HealthCheckResponse:
        return pb.HealthCheckResponse(status=pb.HealthCheckResponse.SERVING)
    server.register(SERVICE_NAME, {"Check": (pb.CheckRequest, check)})
    connections = 0
    blackholes: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:  # swallow the request, answer nothing
            blackholes.append(writer)
            await reader.read(4096)
            return
        await server.serve_connection(reader, writer)

    path = tmp_path / "agent.sock"
    listener = await asyncio.start_unix_server(accept, str(path))

    async def open_stream():
        return await asyncio.open_unix_connection(str(path))
    yield open_stream, lambda: connections
    for w in blackholes:
        w.close()
    listener.close()
    await listener.wait_closed()
    await server.close()


async def test_reconnects_after_an_unanswered_check(agent_losing_first_request) -> None:
    open_stream, connections = agent_losing_first_request
    loop = asyncio.get_running_loop()
    started = loop.time()
    client = await connect_agent(open_stream, started + 30, attempt_timeout=0.2)
    try:
        assert loop.time() - started < 2
        assert connections() == 2
        assert await client.check(timeout=5)
    finally:
        await client.close()


async def test_without_attempt_timeout_one_check_waits_for_the_deadline(
        agent_losing_first_request) -> None:
    open_stream, connections = agent_losing_first_request
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        await connect_agent(open_stream, loop.time() + 0.5)
    assert connections() == 1


async def test_connect_errors_before_the_agent_listens_are_retried(tmp_path: Path) -> None:
    """Under CLH the VMM closes a hybrid-vsock CONNECT while no guest process
    listens on the port (HybridVsockError): that is "not yet", like a refused
    unix socket, until the deadline, whose error then names the last failure."""
    from shim.hypervisor.hybrid_vsock import HybridVsockError

    server = Server()

    async def check(_: pb.CheckRequest) -> pb.HealthCheckResponse:
        return pb.HealthCheckResponse(status=pb.HealthCheckResponse.SERVING)
    server.register(SERVICE_NAME, {"Check": (pb.CheckRequest, check)})
    path = tmp_path / "agent.sock"
    listener = await asyncio.start_unix_server(server.serve_connection, str(path))
    failures = 0

    async def open_stream():
        nonlocal failures
        if failures < 3:
            failures += 1
            raise HybridVsockError(f"{path}: closed before answering CONNECT 1024")
        return await asyncio.open_unix_connection(str(path))

    loop = asyncio.get_running_loop()
    try:
        client = await connect_agent(open_stream, loop.time() + 10)
        assert failures == 3
        await client.close()

        async def never(): raise HybridVsockError("closed before answering CONNECT 1024")
        with pytest.raises(TimeoutError, match="last connect error: closed before answering"):
            await connect_agent(never, loop.time() + 0.2)
    finally:
        listener.close()
        await listener.wait_closed()
        await server.close()

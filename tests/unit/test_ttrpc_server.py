"""Server tests: real client/server round trips over a unix socket and a socketpair."""

import asyncio
import contextlib
import logging
import socket

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2, wrappers_pb2
from google.protobuf.duration_pb2 import Duration

from shim.ttrpc import Client, Code, Server, TtrpcError

from ttrpc_echo import SERVICE, StringValue, echo, make_server


@contextlib.asynccontextmanager
async def over_unix(server: Server, path: str):
    await server.serve_unix(path=path)
    client = await Client.connect_unix(path)
    try:
        yield client
    finally:
        await client.close()
        await server.close()


@contextlib.asynccontextmanager
async def over_socketpair(server: Server, path: str):
    server_sock, client_sock = socket.socketpair(socket.AF_UNIX)
    reader, writer = await asyncio.open_unix_connection(sock=server_sock)
    serving = asyncio.create_task(server.serve_connection(reader, writer))
    client = Client(*await asyncio.open_unix_connection(sock=client_sock))
    try:
        yield client
    finally:
        await client.close()
        await asyncio.wait_for(serving, 5)  # returns once the peer has closed


@pytest.fixture(params=[over_unix, over_socketpair], ids=["unix", "socketpair"])
def connect(request, sock_path):
    return lambda server: request.param(server, sock_path)


# -- round trips through the real client ----------------------------------------------------------

async def test_round_trip(connect):
    server, _ = make_server()
    async with connect(server) as client:
        assert await echo(client, "hello") == "hello"
        assert await echo(client, "") == ""
        assert await echo(client, "x" * 100_000, metadata={"k": "v"}, timeout=5) == "x" * 100_000


async def test_slow_handler_does_not_block_a_fast_one(connect):
    server, service = make_server()
    async with connect(server) as client:
        blocked = asyncio.create_task(
            client.call(SERVICE, "Block", StringValue(value="a"), StringValue))
        await asyncio.wait_for(service.started.wait(), 5)
        assert await asyncio.wait_for(echo(client, "fast"), 5) == "fast"
        assert not blocked.done()
        service.release.set()
        assert (await asyncio.wait_for(blocked, 5)).value == "released a"


async def test_many_concurrent_calls_get_their_own_answers(connect):
    server, _ = make_server()
    async with connect(server) as client:
        texts = [f"call-{i}" for i in range(200)]
        assert await asyncio.gather(*(echo(client, text) for text in texts)) == texts


async def test_deadline_exceeded(connect):
    server, service = make_server()
    async with connect(server) as client:
        with pytest.raises(TtrpcError) as caught:
            await client.call(SERVICE, "Block", StringValue(), StringValue, timeout=0.2)
        assert caught.value.code is Code.DEADLINE_EXCEEDED
        await asyncio.wait_for(service.cancelled.wait(), 5)  # the server gave up on it too
        assert await echo(client, "after") == "after"


async def test_call_within_deadline_succeeds(connect):
    server, _ = make_server()
    async with connect(server) as client:
        request = Duration()
        request.FromMilliseconds(50)
        await client.call(SERVICE, "Sleep", request, empty_pb2.Empty, timeout=5)


@pytest.mark.parametrize("service_name, method", [(SERVICE, "Nope"), ("no.such.Service", "Echo")])
async def test_unknown_method_is_unimplemented(connect, service_name, method):
    server, _ = make_server()
    async with connect(server) as client:
        with pytest.raises(TtrpcError) as caught:
            await client.call(service_name, method, StringValue(), StringValue)
        assert caught.value.code is Code.UNIMPLEMENTED
        assert method in caught.value.message


async def test_undecodable_payload_is_invalid_argument(connect):
    server, _ = make_server()
    async with connect(server) as client:
        # Not valid UTF-8, so it cannot be the string field of a StringValue.
        with pytest.raises(TtrpcError) as caught:
            await client.call(SERVICE, "Echo", wrappers_pb2.BytesValue(value=b"\xff\xfe"),
                              StringValue)
        assert caught.value.code is Code.INVALID_ARGUMENT


async def test_handler_ttrpc_error_becomes_the_status(connect):
    server, _ = make_server()
    async with connect(server) as client:
        with pytest.raises(TtrpcError) as caught:
            await client.call(SERVICE, "NotFound", empty_pb2.Empty(), empty_pb2.Empty)
        assert (caught.value.code, caught.value.message) == (Code.NOT_FOUND, "no such thing")


@pytest.mark.parametrize("method, text", [
    ("Crash", "RuntimeError: boom"),
    ("WrongReturn", "not a protobuf message"),
    ("OwnTimeout", "TimeoutError"),  # a handler's own timeout is not the request deadline
])
async def test_handler_failure_is_unknown_and_logged(connect, caplog, method, text):
    server, _ = make_server()
    async with connect(server) as client:
        with caplog.at_level(logging.ERROR, logger="shim.ttrpc.server"):
            with pytest.raises(TtrpcError) as caught:
                await client.call(SERVICE, method, empty_pb2.Empty(), empty_pb2.Empty)
        assert caught.value.code is Code.UNKNOWN
        assert text in caught.value.message
        assert any(method in record.getMessage() for record in caplog.records)
        assert await echo(client, "still serving") == "still serving"


async def test_closing_the_connection_cancels_in_flight_handlers(connect):
    server, service = make_server()
    async with connect(server) as client:
        pending = asyncio.create_task(client.call(SERVICE, "Block", StringValue(), StringValue))
        await asyncio.wait_for(service.started.wait(), 5)
        await client.close()
        await asyncio.wait_for(service.cancelled.wait(), 5)
        with pytest.raises(TtrpcError) as caught:
            await pending
        assert caught.value.code is Code.UNAVAILABLE


async def test_server_close_ends_connections_and_fails_pending_calls(sock_path):
    server, service = make_server()
    await server.serve_unix(path=sock_path)
    client = await Client.connect_unix(sock_path)
    pending = asyncio.create_task(client.call(SERVICE, "Block", StringValue(), StringValue))
    await asyncio.wait_for(service.started.wait(), 5)
    await asyncio.wait_for(server.close(), 5)
    assert service.cancelled.is_set()
    with pytest.raises(TtrpcError) as caught:
        await asyncio.wait_for(pending, 5)
    assert caught.value.code is Code.UNAVAILABLE
    assert client.closed
    await client.close()


async def test_serve_unix_on_a_pre_bound_socket(sock_path):
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(sock_path)
    listening.listen()
    server, _ = make_server()
    await server.serve_unix(sock=listening)
    client = await Client.connect_unix(sock_path)
    try:
        assert await echo(client, "pre-bound") == "pre-bound"
    finally:
        await client.close()
        await server.close()


async def test_serve_unix_needs_exactly_one_address():
    with pytest.raises(ValueError):
        await Server().serve_unix()


def _echo_service_descriptor():
    """A service descriptor in the default pool whose messages are well-known types."""
    pool = descriptor_pool.Default()
    name = "graft_test/ttrpc_echo.proto"
    try:
        return pool.FindFileByName(name).services_by_name["Echo"]
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto(
        name=name, package="graft.test", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto", "google/protobuf/empty.proto"])
    service = file.service.add(name="Echo")
    service.method.add(name="Echo", input_type=".google.protobuf.StringValue",
                       output_type=".google.protobuf.StringValue")
    service.method.add(name="Missing", input_type=".google.protobuf.Empty",
                       output_type=".google.protobuf.Empty")
    service.method.add(name="Streamed", input_type=".google.protobuf.Empty",
                       output_type=".google.protobuf.Empty", server_streaming=True)
    pool.AddSerializedFile(file.SerializeToString())
    return pool.FindFileByName(name).services_by_name["Echo"]


async def test_register_service_binds_methods_by_name(connect):
    received = []

    class Impl:
        async def Echo(self, request):
            received.append(request)
            return StringValue(value=request.value.upper())

        async def Streamed(self, request):  # streaming is not served even if implemented
            return empty_pb2.Empty()

    descriptor = _echo_service_descriptor()
    assert descriptor.full_name == SERVICE
    server = Server()
    server.register_service(descriptor, Impl())
    async with connect(server) as client:
        assert await echo(client, "abc") == "ABC"
        assert type(received[0]) is StringValue
        for method in ("Missing", "Streamed"):
            with pytest.raises(TtrpcError) as caught:
                await client.call(SERVICE, method, empty_pb2.Empty(), empty_pb2.Empty)
            assert caught.value.code is Code.UNIMPLEMENTED

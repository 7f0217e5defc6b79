"""Server tests: real client/server round trips (unix socket and socketpair) and raw-wire abuse."""

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import tempfile

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2, wrappers_pb2
from google.protobuf.duration_pb2 import Duration

from shim.ttrpc import Client, Code, Server, TtrpcError
from shim.ttrpc import messages
from shim.ttrpc.framing import HEADER_SIZE, MAX_PAYLOAD, FrameType, decode_header, encode_frame

SERVICE = "graft.test.Echo"
StringValue = wrappers_pb2.StringValue


class EchoService:
    """Handlers for the tests; `Block` waits until released and records cancellation."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def echo(self, request: StringValue) -> StringValue:
        return StringValue(value=request.value)

    async def block(self, request: StringValue) -> StringValue:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return StringValue(value="released " + request.value)

    async def sleep(self, request: Duration) -> empty_pb2.Empty:
        await asyncio.sleep(request.ToTimedelta().total_seconds())
        return empty_pb2.Empty()

    async def not_found(self, request: empty_pb2.Empty) -> empty_pb2.Empty:
        raise TtrpcError(Code.NOT_FOUND, "no such thing")

    async def crash(self, request: empty_pb2.Empty) -> empty_pb2.Empty:
        raise RuntimeError("boom")

    async def wrong_return(self, request: empty_pb2.Empty) -> empty_pb2.Empty:
        return "not a message"  # type: ignore[return-value]

    async def own_timeout(self, request: empty_pb2.Empty) -> empty_pb2.Empty:
        await asyncio.wait_for(asyncio.Event().wait(), 0.01)
        return empty_pb2.Empty()


def make_server() -> tuple[Server, EchoService]:
    service = EchoService()
    server = Server()
    server.register(SERVICE, {
        "Echo": (StringValue, service.echo),
        "Block": (StringValue, service.block),
        "Sleep": (Duration, service.sleep),
        "NotFound": (empty_pb2.Empty, service.not_found),
        "Crash": (empty_pb2.Empty, service.crash),
        "WrongReturn": (empty_pb2.Empty, service.wrong_return),
        "OwnTimeout": (empty_pb2.Empty, service.own_timeout),
    })
    return server, service


@pytest.fixture
def sock_path():
    # pytest's tmp_path can exceed the 108-byte unix socket path limit.
    directory = tempfile.mkdtemp(prefix="ttrpc-", dir="/tmp")
    yield os.path.join(directory, "s")
    shutil.rmtree(directory, ignore_errors=True)


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


async def echo(client: Client, text: str, **kwargs) -> str:
    return (await client.call(SERVICE, "Echo", StringValue(value=text), StringValue, **kwargs)).value


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


# -- raw wire: what a buggy or hostile peer may send ---------------------------------------------

class RawPeer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, path: str) -> "RawPeer":
        return cls(*await asyncio.open_unix_connection(path))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def request(self, stream_id: int, method: str, message, timeout_nano: int = 0,
                      frame_type: int = FrameType.REQUEST) -> None:
        envelope = messages.Request(service=SERVICE, method=method,
                                    payload=message.SerializeToString(), timeout_nano=timeout_nano)
        await self.send(encode_frame(stream_id, frame_type, envelope.SerializeToString()))

    async def response(self) -> tuple[int, "messages.Response"]:
        header = decode_header(await asyncio.wait_for(self.reader.readexactly(HEADER_SIZE), 5))
        assert header.type == FrameType.RESPONSE
        payload = await asyncio.wait_for(self.reader.readexactly(header.length), 5)
        return header.stream_id, messages.Response.FromString(payload)

    async def expect_close(self) -> None:
        """The server must close its side: we read EOF, not hang."""
        assert await asyncio.wait_for(self.reader.read(), 5) == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def raw_server(path: str, caplog):
    """A serving Server; on exit it must still answer a fresh connection, and asyncio must not
    have logged any unhandled task error."""
    server, service = make_server()
    await server.serve_unix(path=path)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        try:
            yield service
            client = await Client.connect_unix(path)
            assert await asyncio.wait_for(echo(client, "alive"), 5) == "alive"
            await client.close()
        finally:
            await server.close()
    assert not [r for r in caplog.records if r.name == "asyncio"]


def status_of(response) -> tuple[Code, str]:
    return Code(response.status.code), response.status.message


async def test_raw_success_carries_an_ok_status(sock_path, caplog):
    async with raw_server(sock_path, caplog):
        peer = await RawPeer.connect(sock_path)
        await peer.request(1, "Echo", StringValue(value="hi"))
        stream_id, response = await peer.response()
        assert stream_id == 1
        assert response.HasField("status") and response.status.code == Code.OK
        assert StringValue.FromString(response.payload).value == "hi"
        await peer.close()


async def test_raw_answers_out_of_order(sock_path, caplog):
    async with raw_server(sock_path, caplog) as service:
        peer = await RawPeer.connect(sock_path)
        await peer.request(1, "Block", StringValue(value="slow"))
        await asyncio.wait_for(service.started.wait(), 5)
        await peer.request(3, "Echo", StringValue(value="fast"))
        assert (await peer.response())[0] == 3
        service.release.set()
        assert (await peer.response())[0] == 1
        await peer.close()


async def test_raw_timeout_nano_is_honoured(sock_path, caplog):
    async with raw_server(sock_path, caplog) as service:
        peer = await RawPeer.connect(sock_path)
        await peer.request(1, "Block", StringValue(), timeout_nano=100_000_000)
        stream_id, response = await peer.response()
        assert stream_id == 1 and status_of(response)[0] is Code.DEADLINE_EXCEEDED
        assert service.cancelled.is_set()
        await peer.close()


async def test_raw_undecodable_envelope_is_invalid_argument(sock_path, caplog):
    async with raw_server(sock_path, caplog):
        peer = await RawPeer.connect(sock_path)
        await peer.send(encode_frame(1, FrameType.REQUEST, b"\xff\xff\xff\xff\xff"))
        stream_id, response = await peer.response()
        assert stream_id == 1 and status_of(response)[0] is Code.INVALID_ARGUMENT
        await peer.request(3, "Echo", StringValue(value="ok"))  # same connection still works
        assert (await peer.response())[0] == 3
        await peer.close()


@pytest.mark.parametrize("stream_id", [0, 2, 0xFFFFFFFE])
async def test_raw_even_stream_id_is_invalid_argument(sock_path, caplog, stream_id):
    async with raw_server(sock_path, caplog):
        peer = await RawPeer.connect(sock_path)
        await peer.request(stream_id, "Echo", StringValue(value="x"))
        answered, response = await peer.response()
        assert answered == stream_id
        code, message = status_of(response)
        assert code is Code.INVALID_ARGUMENT and "odd" in message
        await peer.close()


async def test_raw_stream_id_reused_while_in_flight_is_invalid_argument(sock_path, caplog):
    async with raw_server(sock_path, caplog) as service:
        peer = await RawPeer.connect(sock_path)
        await peer.request(1, "Block", StringValue(value="first"))
        await asyncio.wait_for(service.started.wait(), 5)
        await peer.request(1, "Echo", StringValue(value="second"))
        stream_id, response = await peer.response()
        assert stream_id == 1 and status_of(response)[0] is Code.INVALID_ARGUMENT
        service.release.set()
        stream_id, response = await peer.response()
        assert StringValue.FromString(response.payload).value == "released first"
        # Once answered, the id may be used again.
        await peer.request(1, "Echo", StringValue(value="third"))
        assert StringValue.FromString((await peer.response())[1].payload).value == "third"
        await peer.close()


@pytest.mark.parametrize("frame_type", [FrameType.RESPONSE, FrameType.DATA, 0, 7, 255])
async def test_raw_unsupported_frame_type_is_answered(sock_path, caplog, frame_type):
    async with raw_server(sock_path, caplog):
        peer = await RawPeer.connect(sock_path)
        await peer.request(5, "Echo", StringValue(value="x"), frame_type=frame_type)
        stream_id, response = await peer.response()
        assert stream_id == 5 and status_of(response)[0] is Code.INVALID_ARGUMENT
        await peer.close()


async def test_raw_oversized_frame_is_discarded_and_answered(sock_path, caplog):
    async with raw_server(sock_path, caplog):
        peer = await RawPeer.connect(sock_path)
        # Header claims MAX+1 bytes; the body even looks like the start of a valid request.
        body = messages.Request(service=SERVICE, method="Echo").SerializeToString()
        body += b"\x00" * (MAX_PAYLOAD + 1 - len(body))
        header = (MAX_PAYLOAD + 1).to_bytes(4, "big") + (7).to_bytes(4, "big") + b"\x01\x00"
        await peer.send(header + body)
        stream_id, response = await peer.response()
        assert stream_id == 7 and status_of(response)[0] is Code.RESOURCE_EXHAUSTED
        await peer.request(9, "Echo", StringValue(value="after"))  # framing still in sync
        stream_id, response = await peer.response()
        assert stream_id == 9 and StringValue.FromString(response.payload).value == "after"
        await peer.close()


async def test_raw_huge_claimed_length_does_not_stall_other_connections(sock_path, caplog):
    async with raw_server(sock_path, caplog):
        hostile = await RawPeer.connect(sock_path)
        await hostile.send(b"\xff\xff\xff\xff\x00\x00\x00\x01\x01\x00" + b"junk" * 1000)
        client = await Client.connect_unix(sock_path)
        assert await asyncio.wait_for(echo(client, "meanwhile"), 5) == "meanwhile"
        await client.close()
        hostile.writer.write_eof()
        await hostile.expect_close()
        await hostile.close()


@pytest.mark.parametrize("data", [
    b"\x00\x00\x00",                                        # truncated header
    b"\x00\x00\x00\x64\x00\x00\x00\x01\x01\x00" + b"x" * 10,  # truncated payload
    bytes(range(256)) * 4,                                  # garbage
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                   # wrong protocol
])
async def test_raw_garbage_then_eof_closes_cleanly(sock_path, caplog, data):
    async with raw_server(sock_path, caplog):
        peer = await RawPeer.connect(sock_path)
        await peer.send(data)
        peer.writer.write_eof()
        # Any answers the server could make sense of are well-formed responses; then EOF.
        rest = await asyncio.wait_for(peer.reader.read(), 5)
        while rest:
            header = decode_header(rest[:HEADER_SIZE])
            assert header.type == FrameType.RESPONSE
            assert Code(messages.Response.FromString(
                rest[HEADER_SIZE:HEADER_SIZE + header.length]).status.code) != Code.OK
            rest = rest[HEADER_SIZE + header.length:]
        await peer.close()


async def test_raw_abrupt_disconnect_mid_request(sock_path, caplog):
    async with raw_server(sock_path, caplog) as service:
        peer = await RawPeer.connect(sock_path)
        await peer.request(1, "Block", StringValue())
        await asyncio.wait_for(service.started.wait(), 5)
        peer.writer.transport.abort()
        await asyncio.wait_for(service.cancelled.wait(), 5)


async def test_peer_that_never_reads_cannot_pin_the_connection(caplog):
    server, _ = make_server()
    server_sock, peer_sock = socket.socketpair(socket.AF_UNIX)
    serving = asyncio.create_task(
        server.serve_connection(*await asyncio.open_unix_connection(sock=server_sock)))
    peer = RawPeer(*await asyncio.open_unix_connection(sock=peer_sock))
    for stream_id in range(1, 40, 2):  # ~20 MiB of answers, far beyond the socket buffers
        await peer.request(stream_id, "Echo", StringValue(value="x" * (1 << 20)))
    peer.writer.write_eof()
    await asyncio.wait_for(serving, 10)  # ends although its answers were never read
    await peer.close()

"""Server tests on the raw wire: what a buggy or hostile peer may send."""

import asyncio
import contextlib
import logging
import socket

import pytest

from shim.ttrpc import Client, Code
from shim.ttrpc import messages
from shim.ttrpc.framing import HEADER_SIZE, MAX_PAYLOAD, FrameType, decode_header, encode_frame

from ttrpc_echo import SERVICE, StringValue, echo, make_server


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

"""Client tests against a hand-driven peer on a socketpair, so every byte on the wire is ours."""

import asyncio
import contextlib
import logging
import socket

import pytest
from google.protobuf import empty_pb2, wrappers_pb2

from shim.ttrpc import Client, Code, TtrpcError
from shim.ttrpc import messages
from shim.ttrpc.framing import HEADER_SIZE, MAX_PAYLOAD, FrameType, decode_header, encode_frame

StringValue = wrappers_pb2.StringValue


class FakeServer:
    """The server end of a socketpair, read and written frame by frame by the test."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self) -> tuple[int, "messages.Request"]:
        header = decode_header(await asyncio.wait_for(self.reader.readexactly(HEADER_SIZE), 5))
        assert (header.type, header.flags) == (FrameType.REQUEST, 0)
        payload = await asyncio.wait_for(self.reader.readexactly(header.length), 5)
        return header.stream_id, messages.Request.FromString(payload)

    async def reply(self, stream_id: int, payload: bytes = b"", code: int | None = None,
                    message: str = "", frame_type: int = FrameType.RESPONSE) -> None:
        response = messages.Response(payload=payload)
        if code is not None:
            response.status.code = code
            response.status.message = message
        self.writer.write(encode_frame(stream_id, frame_type, response.SerializeToString()))
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def client_and_fake_server(caplog):
    client_sock, server_sock = socket.socketpair(socket.AF_UNIX)
    client = Client(*await asyncio.open_unix_connection(sock=client_sock))
    server = FakeServer(*await asyncio.open_unix_connection(sock=server_sock))
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        try:
            yield client, server
        finally:
            await client.close()
            server.close()
    assert not [r for r in caplog.records if r.name == "asyncio"]


def call_echo(client: Client, text: str, **kwargs):
    return asyncio.create_task(
        client.call("svc.Echo", "Echo", StringValue(value=text), StringValue, **kwargs))


async def test_request_envelope_and_odd_stream_ids(caplog):
    async with client_and_fake_server(caplog) as (client, server):
        for expected_id in (1, 3, 5):
            call = call_echo(client, "hi", timeout=2.5, metadata={"ns": "k8s.io", "a": "b"})
            stream_id, request = await server.request()
            assert stream_id == expected_id
            assert (request.service, request.method) == ("svc.Echo", "Echo")
            assert StringValue.FromString(request.payload).value == "hi"
            assert request.timeout_nano == 2_500_000_000
            assert {kv.key: kv.value for kv in request.metadata} == {"ns": "k8s.io", "a": "b"}
            await server.reply(stream_id, StringValue(value="yo").SerializeToString(), code=0)
            assert (await asyncio.wait_for(call, 5)).value == "yo"


async def test_no_timeout_sends_no_deadline(caplog):
    async with client_and_fake_server(caplog) as (client, server):
        call = call_echo(client, "x")
        stream_id, request = await server.request()
        assert request.timeout_nano == 0 and not request.metadata
        await server.reply(stream_id, b"")
        assert (await asyncio.wait_for(call, 5)).value == ""


async def test_response_without_status_is_ok(caplog):
    # containerd 1.6 answers successful calls with no status field at all.
    async with client_and_fake_server(caplog) as (client, server):
        call = call_echo(client, "x")
        stream_id, _ = await server.request()
        await server.reply(stream_id, StringValue(value="ok").SerializeToString(), code=None)
        assert (await asyncio.wait_for(call, 5)).value == "ok"


async def test_out_of_order_responses_reach_their_callers(caplog):
    async with client_and_fake_server(caplog) as (client, server):
        calls = [call_echo(client, str(i)) for i in range(5)]
        requests = [await server.request() for _ in calls]
        for stream_id, request in reversed(requests):
            await server.reply(stream_id, request.payload)
        assert [(await asyncio.wait_for(c, 5)).value for c in calls] == [str(i) for i in range(5)]


async def test_error_status_raises_ttrpc_error(caplog):
    async with client_and_fake_server(caplog) as (client, server):
        for code, expected in ((Code.NOT_FOUND, Code.NOT_FOUND), (99, Code.UNKNOWN)):
            call = call_echo(client, "x")
            stream_id, _ = await server.request()
            await server.reply(stream_id, code=code, message="nope")
            with pytest.raises(TtrpcError) as caught:
                await asyncio.wait_for(call, 5)
            assert (caught.value.code, caught.value.message) == (expected, "nope")


async def test_undecodable_response_is_internal(caplog):
    async with client_and_fake_server(caplog) as (client, server):
        call = call_echo(client, "x")
        stream_id, _ = await server.request()
        server.writer.write(encode_frame(stream_id, FrameType.RESPONSE, b"\xff\xff\xff"))
        with pytest.raises(TtrpcError) as caught:
            await asyncio.wait_for(call, 5)
        assert caught.value.code is Code.INTERNAL
        call = call_echo(client, "x")  # payload that is not a StringValue
        stream_id, _ = await server.request()
        await server.reply(stream_id, wrappers_pb2.BytesValue(value=b"\xff").SerializeToString())
        with pytest.raises(TtrpcError) as caught:
            await asyncio.wait_for(call, 5)
        assert caught.value.code is Code.INTERNAL


async def test_timeout_is_deadline_exceeded_and_late_answer_is_dropped(caplog):
    async with client_and_fake_server(caplog) as (client, server):
        call = call_echo(client, "slow", timeout=0.1)
        late_id, _ = await server.request()
        with pytest.raises(TtrpcError) as caught:
            await asyncio.wait_for(call, 5)
        assert caught.value.code is Code.DEADLINE_EXCEEDED
        await server.reply(late_id, StringValue(value="late").SerializeToString())
        call = call_echo(client, "next")
        stream_id, _ = await server.request()
        assert stream_id != late_id
        await server.reply(stream_id, StringValue(value="next").SerializeToString())
        assert (await asyncio.wait_for(call, 5)).value == "next"


async def test_frames_for_unknown_streams_or_of_other_types_are_ignored(caplog):
    async with client_and_fake_server(caplog) as (client, server):
        call = call_echo(client, "x")
        stream_id, _ = await server.request()
        await server.reply(stream_id + 2, StringValue(value="stray").SerializeToString())
        await server.reply(stream_id, StringValue(value="data").SerializeToString(),
                           frame_type=FrameType.DATA)
        await server.reply(stream_id, StringValue(value="real").SerializeToString())
        assert (await asyncio.wait_for(call, 5)).value == "real"


async def test_oversized_response_fails_only_its_call(caplog):
    async with client_and_fake_server(caplog) as (client, server):
        call = call_echo(client, "x")
        stream_id, _ = await server.request()
        header = (MAX_PAYLOAD + 1).to_bytes(4, "big") + stream_id.to_bytes(4, "big") + b"\x02\x00"
        server.writer.write(header + b"\x00" * (MAX_PAYLOAD + 1))
        with pytest.raises(TtrpcError) as caught:
            await asyncio.wait_for(call, 5)
        assert caught.value.code is Code.RESOURCE_EXHAUSTED
        call = call_echo(client, "again")
        stream_id, request = await server.request()
        await server.reply(stream_id, request.payload)
        assert (await asyncio.wait_for(call, 5)).value == "again"


async def test_oversized_request_is_refused_before_sending(caplog):
    async with client_and_fake_server(caplog) as (client, server):
        big = wrappers_pb2.BytesValue(value=b"\x00" * MAX_PAYLOAD)
        with pytest.raises(TtrpcError) as caught:
            await client.call("svc.Echo", "Echo", big, empty_pb2.Empty)
        assert caught.value.code is Code.RESOURCE_EXHAUSTED
        assert "limit" in caught.value.message
        call = call_echo(client, "small")
        stream_id, _ = await server.request()  # nothing else was written before this
        assert stream_id == 1
        await server.reply(stream_id, b"")
        await asyncio.wait_for(call, 5)


async def test_connection_loss_fails_every_pending_call(caplog):
    async with client_and_fake_server(caplog) as (client, server):
        calls = [call_echo(client, str(i)) for i in range(3)]
        for _ in calls:
            await server.request()
        server.close()
        for call in calls:
            with pytest.raises(TtrpcError) as caught:
                await asyncio.wait_for(call, 5)
            assert caught.value.code is Code.UNAVAILABLE
        assert client.closed
        with pytest.raises(TtrpcError) as caught:
            await call_echo(client, "after")
        assert caught.value.code is Code.UNAVAILABLE


async def test_truncated_response_counts_as_connection_loss(caplog):
    async with client_and_fake_server(caplog) as (client, server):
        call = call_echo(client, "x")
        stream_id, _ = await server.request()
        server.writer.write(encode_frame(stream_id, FrameType.RESPONSE, b"\x12\x05ab")[:-1])
        server.writer.write_eof()
        with pytest.raises(TtrpcError) as caught:
            await asyncio.wait_for(call, 5)
        assert caught.value.code is Code.UNAVAILABLE


async def test_close_fails_pending_and_later_calls(caplog):
    async with client_and_fake_server(caplog) as (client, server):
        pending = call_echo(client, "x")
        await server.request()
        assert not client.closed
        await client.close()
        assert client.closed
        for call in (pending, call_echo(client, "y")):
            with pytest.raises(TtrpcError) as caught:
                await asyncio.wait_for(call, 5)
            assert caught.value.code is Code.UNAVAILABLE
        assert await asyncio.wait_for(server.reader.read(), 5) == b""  # the socket was closed
        await client.close()  # idempotent


async def test_connect_unix_to_a_missing_socket_is_unavailable(tmp_path):
    with pytest.raises(TtrpcError) as caught:
        await Client.connect_unix(str(tmp_path / "missing.sock"))
    assert caught.value.code is Code.UNAVAILABLE

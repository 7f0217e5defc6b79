"""Per-connection limits of the ttrpc server, over a real unix socket with a raw client: a
client that sends and never reads its answers must not grow the server's memory."""
from __future__ import annotations

import asyncio
import socket

from google.protobuf import wrappers_pb2

from shim.ttrpc import Code, Server, messages
from shim.ttrpc.framing import HEADER_SIZE, FrameType, decode_header, encode_frame

SERVICE = "graft.test.Limits"
StringValue = wrappers_pb2.StringValue


def _request(stream_id: int, method: str, value: str) -> bytes:
    payload = messages.Request(service=SERVICE, method=method,
                               payload=StringValue(value=value).SerializeToString())
    return encode_frame(stream_id, FrameType.REQUEST, payload.SerializeToString())


async def _serve(server: Server):
    server_sock, client_sock = socket.socketpair(socket.AF_UNIX)
    for sock in (server_sock, client_sock):  # small buffers: the limits show up quickly
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    reader, writer = await asyncio.open_unix_connection(sock=server_sock)
    serving = asyncio.ensure_future(server.serve_connection(reader, writer))
    client_sock.setblocking(False)
    return serving, client_sock


async def _read_responses(sock: socket.socket, count: int) -> list[messages.Response]:
    loop = asyncio.get_running_loop()
    buf = b""
    out = []
    while len(out) < count:
        buf += await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 10)
        while len(buf) >= HEADER_SIZE:
            header = decode_header(buf[:HEADER_SIZE])
            if len(buf) < HEADER_SIZE + header.length:
                break
            out.append(messages.Response.FromString(buf[HEADER_SIZE:HEADER_SIZE + header.length]))
            buf = buf[HEADER_SIZE + header.length:]
    return out


async def test_a_client_that_never_reads_is_pushed_back_not_buffered():
    handled = 0

    async def echo(request: StringValue) -> StringValue:
        nonlocal handled
        handled += 1
        return StringValue(value=request.value * 64)  # answers larger than the requests

    server = Server(max_unsent=8)
    server.register(SERVICE, {"Echo": (StringValue, echo)})
    serving, sock = await _serve(server)
    try:
        loop = asyncio.get_running_loop()
        sent, stalled = 0, False
        for stream_id in range(1, 40001, 2):
            try:  # a server that keeps reading never leaves the socket full for a second
                await asyncio.wait_for(loop.sock_sendall(sock, _request(stream_id, "Echo", "x" * 256)), 1.0)
            except TimeoutError:
                stalled = True
                break
            sent += 1
        assert stalled, f"the server read all {sent} requests of a client that reads nothing"
        await asyncio.sleep(0.2)
        assert handled < 400, f"{handled} requests handled for a client that reads nothing"
        answered = await _read_responses(sock, handled)  # reading again: everything flows
        assert all(r.status.code == Code.OK for r in answered)
    finally:
        sock.close()
        await asyncio.wait_for(serving, 5)


async def test_requests_beyond_the_in_flight_limit_are_refused():
    release = asyncio.Event()

    async def block(request: StringValue) -> StringValue:
        await release.wait()
        return request

    server = Server(max_in_flight=4)
    server.register(SERVICE, {"Block": (StringValue, block)})
    serving, sock = await _serve(server)
    try:
        loop = asyncio.get_running_loop()
        for stream_id in (1, 3, 5, 7, 9):
            await loop.sock_sendall(sock, _request(stream_id, "Block", str(stream_id)))
        refused = await _read_responses(sock, 1)
        assert refused[0].status.code == Code.RESOURCE_EXHAUSTED
        release.set()
        done = await _read_responses(sock, 4)
        assert sorted(StringValue.FromString(r.payload).value for r in done) == ["1", "3", "5", "7"]
    finally:
        sock.close()
        await asyncio.wait_for(serving, 5)

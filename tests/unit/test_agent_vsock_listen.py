"""The agent can serve on vsock (hosts with vsock / CLH hybrid vsock); the
listener path is the generic ttrpc serve_listener, exercised here over a
unix socket since this host has no vsock transport."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
from google.protobuf import wrappers_pb2

from graft_agent.config import UsageError, parse
from shim.ttrpc import Client, Server


def test_vsock_port_from_kernel_cmdline_and_option() -> None:
    assert parse([], "quiet graft.agent_vsock_port=1024").listen_vsock_port == 1024
    assert parse(["--listen", "vsock:77"]).listen_vsock_port == 77
    explicit_unix = parse(["--listen", "unix:/x"], "graft.agent_vsock_port=1024")
    assert explicit_unix.listen_vsock_port is None  # an explicit listener wins
    assert explicit_unix.listen_path == "/x"
    assert parse([]).listen_vsock_port is None


@pytest.mark.parametrize("argv", [["--listen", "vsock:abc"], ["--listen", "vsock:0"],
                                  ["--listen", "tcp:1"]])
def test_bad_listeners_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse(argv)


async def test_serve_listener_on_a_prebound_socket(tmp_path: Path) -> None:
    async def echo(req: wrappers_pb2.StringValue) -> wrappers_pb2.StringValue:
        return wrappers_pb2.StringValue(value=req.value.upper())

    server = Server()
    server.register("t.Echo", {"Echo": (wrappers_pb2.StringValue, echo)})
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmp_path / "s"))
    sock.listen()
    sock.setblocking(False)
    await server.serve_listener(sock)
    client = await Client.connect_unix(str(tmp_path / "s"))
    try:
        resp = await client.call("t.Echo", "Echo", wrappers_pb2.StringValue(value="hi"),
                                 wrappers_pb2.StringValue, timeout=5)
        assert resp.value == "HI"
    finally:
        await client.close()
        await server.close()

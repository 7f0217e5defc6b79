"""Pod network data → guest agent messages, name validation and error types
(no netlink needed)."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from graft_agent.api import agent_pb2
from shim.errors import InvalidArgument, to_ttrpc_error
from shim.network import (IpAddress, NetnsNotFound, PodEndpoint, RouteInfo, agent_interface,
                          agent_routes)
from shim.network.tuntap import validate_ifname
from shim.ttrpc import Code

V4, V6 = socket.AF_INET, socket.AF_INET6


def endpoint(routes: tuple[RouteInfo, ...] = ()) -> PodEndpoint:
    return PodEndpoint(
        netns=Path("/run/netns/pod"), veth_name="eth0", tap_name="tap0_graft",
        mac="0a:58:0a:f4:00:05", mtu=1450,
        addresses=(IpAddress("10.244.0.5", 24, V4), IpAddress("fd00::5", 64, V6)),
        routes=routes)


def route(dest: str, gateway: str = "", scope: int = 0, source: str = "",
          family: int = V4) -> RouteInfo:
    return RouteInfo(dest=dest, gateway=gateway, device="eth0", source=source, scope=scope,
                     family=family)


def test_interface_carries_mac_mtu_and_addresses_under_the_guest_name() -> None:
    msg = agent_interface(endpoint(), guest_name="net0")
    assert isinstance(msg, agent_pb2.Interface)
    assert (msg.name, msg.hw_addr, msg.mtu) == ("net0", "0a:58:0a:f4:00:05", 1450)
    assert [(a.address, a.prefix_len) for a in msg.addresses] == [("10.244.0.5", 24),
                                                                 ("fd00::5", 64)]


def test_routes_are_renamed_and_gateways_come_after_what_makes_them_reachable() -> None:
    ep = endpoint(routes=(
        route("0.0.0.0/0", gateway="10.244.0.1"),
        route("::/0", gateway="fd00::1", family=V6),
        route("10.96.0.0/12", gateway="10.244.0.1"),
        route("10.244.0.0/24", scope=253, source="10.244.0.5"),
        route("fd00::/64", family=V6),
    ))
    msgs = agent_routes(ep, guest_name="eth1")
    assert all(isinstance(m, agent_pb2.Route) for m in msgs)
    assert [m.dest for m in msgs] == ["10.244.0.0/24", "fd00::/64", "10.96.0.0/12",
                                      "0.0.0.0/0", "::/0"]
    assert {m.device for m in msgs} == {"eth1"}
    connected = msgs[0]
    assert (connected.gateway, connected.source, connected.scope) == ("", "10.244.0.5", 253)
    assert msgs[3].gateway == "10.244.0.1"


def test_routes_message_round_trips_through_the_wire_format() -> None:
    msgs = agent_routes(endpoint(routes=(route("0.0.0.0/0", gateway="10.244.0.1"),)))
    wire = agent_pb2.UpdateRoutesRequest(routes=agent_pb2.Routes(routes=msgs)).SerializeToString()
    back = agent_pb2.UpdateRoutesRequest.FromString(wire)
    assert back.routes.routes[0].gateway == "10.244.0.1"
    assert back.routes.routes[0].device == "eth0"


@pytest.mark.parametrize("name", ["", "a" * 16, "x/y", "has space", ".", "..", "eth0:1"])
def test_bad_interface_names_are_rejected(name: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_ifname(name)


@pytest.mark.parametrize("name", ["tap0_graft", "a" * 15, "eth0"])
def test_good_interface_names_pass(name: str) -> None:
    validate_ifname(name)


def test_missing_netns_error_is_a_file_not_found_with_the_path() -> None:
    err = NetnsNotFound(Path("/run/netns/nope"))
    assert isinstance(err, FileNotFoundError)
    assert err.filename == "/run/netns/nope"
    assert "/run/netns/nope" in str(err)
    assert to_ttrpc_error(err).code == Code.NOT_FOUND


def test_importing_the_package_does_not_load_pyroute2() -> None:
    # pyroute2 costs ~0.1 s to import; only netlink work should pay for it.
    code = "import sys, shim.network; print('pyroute2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"

"""The edge to the guest agent: an endpoint as UpdateInterface/UpdateRoutes
messages (graft_agent/protos/agent.proto)."""
from __future__ import annotations

from graft_agent.api import agent_pb2

from .model import PodEndpoint, RouteInfo


def agent_interface(endpoint: PodEndpoint, guest_name: str = "eth0") -> agent_pb2.Interface:
    """The guest NIC to configure: found by the veth's MAC (which the
    hot-plugged NIC carries), renamed to *guest_name*, given the pod's
    addresses and MTU."""
    return agent_pb2.Interface(
        name=guest_name, hw_addr=endpoint.mac, mtu=endpoint.mtu,
        addresses=[agent_pb2.IPAddress(address=a.address, prefix_len=a.prefix_len)
                   for a in endpoint.addresses])


def agent_routes(endpoint: PodEndpoint, guest_name: str = "eth0") -> list[agent_pb2.Route]:
    """The pod's routes with the device renamed to *guest_name*, ordered so
    that the routes making a gateway reachable come before those using it.
    Connected routes are included: the agent should add with replace
    semantics, as the guest kernel creates them with the addresses."""
    return [agent_pb2.Route(dest=r.dest, gateway=r.gateway, device=guest_name,
                            source=r.source, scope=r.scope)
            for r in sorted(endpoint.routes, key=_install_order)]


def _install_order(route: RouteInfo) -> tuple[int, int]:
    # Direct routes first, then via-gateway routes; the default route last.
    return (1 if route.gateway else 0, 1 if route.is_default else 0)

"""Host side of pod networking (tcfilter model): see tcfilter.py.

Typical use by a sandbox:
    endpoint = attach_endpoint(netns)          # before the VMM starts/restores
    ... VMM (in netns) hot-plugs a NIC on endpoint.tap_name with endpoint.mac
    agent.update_interface(agent_interface(endpoint)); agent.update_routes(agent_routes(endpoint))
    detach_endpoint(netns, endpoint.tap_name)  # teardown, idempotent
"""
from .agent_messages import agent_interface, agent_routes
from .model import (AmbiguousPodInterface, EndpointExists, IpAddress, NetlinkFailure, NetnsNotFound,
                    NoPodInterface, NotANetns, PodEndpoint, PodInterface, RouteInfo, TapNotFound)
from .netns import run_in_netns
from .tcfilter import (DEFAULT_TAP_NAME, adopt_tap, attach_endpoint, detach_endpoint,
                       discover_pod_interface, endpoint_of, open_tap_fds)

__all__ = [
    "AmbiguousPodInterface", "DEFAULT_TAP_NAME", "EndpointExists", "IpAddress", "NetlinkFailure",
    "NetnsNotFound", "NoPodInterface", "NotANetns", "PodEndpoint", "PodInterface", "RouteInfo",
    "TapNotFound", "adopt_tap", "agent_interface", "agent_routes", "attach_endpoint",
    "detach_endpoint", "discover_pod_interface", "endpoint_of", "open_tap_fds", "run_in_netns",
]

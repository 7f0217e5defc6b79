"""Plain data describing a pod's network and the errors of this package.

Everything here is free of netlink and protobuf types: the rest of graft
passes these around, and the edges (netlink.py, agent_messages.py) translate.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from shim.errors import AlreadyExists, FailedPrecondition, GraftError, InvalidArgument, NotFound
from shim.ttrpc import Code

# rtnetlink route scopes (RT_SCOPE_*).
SCOPE_UNIVERSE = 0
SCOPE_LINK = 253
SCOPE_HOST = 254


@dataclass(frozen=True)
class IpAddress:
    address: str
    prefix_len: int
    family: int  # socket.AF_INET or socket.AF_INET6

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefix_len}"


@dataclass(frozen=True)
class RouteInfo:
    dest: str      # CIDR; "0.0.0.0/0" or "::/0" for a default route
    gateway: str   # "" for a directly connected route
    device: str    # name of the interface in the pod netns
    source: str    # preferred source address, "" if none
    scope: int     # SCOPE_*
    family: int

    @property
    def is_default(self) -> bool:
        return self.dest in ("0.0.0.0/0", "::/0")


@dataclass(frozen=True)
class PodInterface:
    """The interface the CNI plugin configured in the pod netns."""

    name: str
    index: int
    mac: str
    mtu: int
    addresses: tuple[IpAddress, ...]
    routes: tuple[RouteInfo, ...]


@dataclass(frozen=True)
class PodEndpoint:
    """A pod interface wired to a tap device by tc mirred redirects.

    The guest NIC must use `mac` (the veth's) so the guest owns the pod IP.
    """

    netns: Path
    veth_name: str
    tap_name: str
    mac: str
    mtu: int
    addresses: tuple[IpAddress, ...]
    routes: tuple[RouteInfo, ...]
    queues: int = 1


class NetnsNotFound(NotFound, FileNotFoundError):
    """The network namespace path does not exist."""

    def __init__(self, path: Path) -> None:
        FileNotFoundError.__init__(self, errno.ENOENT, "network namespace not found", str(path))


class NotANetns(InvalidArgument):
    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} is not a network namespace")
        self.path = path


class NoPodInterface(FailedPrecondition):
    """The netns has no interface with an address (CNI did not run?)."""


class AmbiguousPodInterface(FailedPrecondition):
    """Several interfaces have addresses and none was named."""


class EndpointExists(AlreadyExists):
    """The tap device is already present in the netns."""


class TapNotFound(NotFound):
    pass


class NetlinkFailure(GraftError):
    """A netlink request failed; `errno` is the kernel's answer."""

    code = Code.INTERNAL

    def __init__(self, operation: str, err: int) -> None:
        super().__init__(f"{operation}: {errno.errorcode.get(err, err)}: {os.strerror(err)}")
        self.operation = operation
        self.errno = err


"""Typed wrapper over pyroute2: the only module of graft that imports it.

A Netlink handle talks rtnetlink in the network namespace of the thread that
opened it (see netns.run_in_netns); every result is a plain dataclass and
every kernel error a NetlinkFailure naming the operation.
"""
from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .model import IpAddress, NetlinkFailure, RouteInfo

if TYPE_CHECKING:
    from pyroute2 import IPRoute

ETH_P_ALL = 0x0003
INGRESS_PARENT = 0xFFFF0000  # "ffff:" — the ingress qdisc's handle
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
TCA_EGRESS_REDIR = 1
IN6_ADDR_GEN_MODE_NONE = 1
_U32_MATCH_ALL = ["0x0/0x0+0"]
_U32_CLASSID = 0x10001  # pyroute2 requires a target (flowid 1:1); unused by the redirect


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    mac: str
    mtu: int
    kind: str  # IFLA_INFO_KIND ("veth", "tun", ...), "" when the kernel reports none
    up: bool
    loopback: bool


@dataclass(frozen=True)
class IngressFilter:
    """One tc filter on a link's ingress; target_index is the device a mirred
    egress redirect sends to (0 once that device is gone), None if the filter
    has no such action."""

    prio: int
    target_index: int | None


class Netlink:
    """rtnetlink in the current thread's netns. Use as a context manager."""

    def __init__(self) -> None:
        # Imported here: pyroute2 takes ~0.1 s to import, and most graft
        # processes (and the types of this package) never need it.
        from pyroute2 import IPRoute
        self._ipr: IPRoute = IPRoute()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._ipr.close()

    @contextlib.contextmanager
    def _op(self, operation: str) -> Iterator[None]:
        from pyroute2.netlink.exceptions import NetlinkError
        try:
            yield
        except NetlinkError as exc:
            raise NetlinkFailure(operation, exc.code) from exc

    # -- links -------------------------------------------------------------------
    def links(self) -> list[Link]:
        with self._op("list links"):
            return [_link(msg) for msg in self._ipr.get_links()]

    def link(self, name: str) -> Link | None:
        return next((link for link in self.links() if link.name == name), None)

    def set_mtu(self, index: int, mtu: int) -> None:
        with self._op(f"set mtu {mtu} on link {index}"):
            self._ipr.link("set", index=index, mtu=mtu)

    def set_up(self, index: int) -> None:
        with self._op(f"set link {index} up"):
            self._ipr.link("set", index=index, state="up")

    def disable_ipv6_autoconf(self, index: int) -> None:
        """No link-local address, so the netns stack stays silent on the link."""
        with self._op(f"set addrgenmode none on link {index}"):
            self._ipr.link("set", index=index, IFLA_AF_SPEC={"attrs": [
                ["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", IN6_ADDR_GEN_MODE_NONE]]}]]})

    def rename(self, index: int, name: str) -> None:
        with self._op(f"rename link {index} to {name}"):
            self._ipr.link("set", index=index, ifname=name)

    def move_to_netns(self, index: int, netns_fd: int) -> None:
        """Move the link into the netns of *netns_fd* (a tap keeps its open queues)."""
        with self._op(f"move link {index} to another netns"):
            self._ipr.link("set", index=index, net_ns_fd=netns_fd)

    def delete_link(self, index: int) -> None:
        with self._op(f"delete link {index}"):
            self._ipr.link("del", index=index)

    # -- addresses and routes -------------------------------------------------------
    def addresses(self, index: int) -> list[IpAddress]:
        with self._op(f"list addresses of link {index}"):
            msgs = self._ipr.get_addr(index=index)
        # IFA_LOCAL is the own address on point-to-point links; IPv6 has only IFA_ADDRESS.
        return [IpAddress(address=msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS"),
                          prefix_len=msg["prefixlen"], family=msg["family"])
                for msg in msgs if msg["index"] == index]

    def routes(self, link: Link) -> list[RouteInfo]:
        """Unicast routes of the main table that leave through *link*
        (multipath routes are not represented and skipped)."""
        with self._op(f"list routes of {link.name}"):
            msgs = self._ipr.get_routes(table=RT_TABLE_MAIN)
        routes = []
        for msg in msgs:
            if (msg.get_attr("RTA_TABLE", msg["table"]) != RT_TABLE_MAIN
                    or msg["type"] != RTN_UNICAST or msg.get_attr("RTA_OIF") != link.index):
                continue
            family = msg["family"]
            dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
            routes.append(RouteInfo(
                dest=str(ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False)),
                gateway=msg.get_attr("RTA_GATEWAY") or "",
                device=link.name,
                source=msg.get_attr("RTA_PREFSRC") or "",
                scope=msg["scope"],
                family=family))
        return routes

    # -- tc ----------------------------------------------------------------------------
    def has_ingress(self, index: int) -> bool:
        with self._op(f"list qdiscs of link {index}"):
            return any(q.get_attr("TCA_KIND") == "ingress" for q in self._ipr.get_qdiscs(index))

    def add_ingress(self, index: int) -> None:
        with self._op(f"add ingress qdisc to link {index}"):
            self._ipr.tc("add", "ingress", index)

    def delete_ingress(self, index: int) -> None:
        with self._op(f"delete ingress qdisc of link {index}"):
            self._ipr.tc("del", "ingress", index)

    def add_redirect(self, src_index: int, dst_index: int, prio: int) -> None:
        """Every frame received on src goes out of dst instead (u32 match-all
        + mirred egress redirect); the src netns stack never sees it."""
        with self._op(f"add redirect filter {src_index} -> {dst_index}"):
            self._ipr.tc("add-filter", "u32", src_index, parent=INGRESS_PARENT,
                         protocol=ETH_P_ALL, prio=prio, keys=_U32_MATCH_ALL, target=_U32_CLASSID,
                         action={"kind": "mirred", "direction": "egress",
                                 "action": "redirect", "ifindex": dst_index})

    def ingress_filters(self, index: int) -> list[IngressFilter]:
        """Filters on the ingress qdisc (one entry per filter node that has
        actions, plus one per bare priority header)."""
        with self._op(f"list ingress filters of link {index}"):
            msgs = self._ipr.get_filters(index, parent=INGRESS_PARENT)
        return [IngressFilter(prio=msg["info"] >> 16, target_index=_redirect_target(msg))
                for msg in msgs]

    def delete_filters(self, index: int, prio: int) -> None:
        """Delete all ingress filters of *index* at priority *prio*."""
        with self._op(f"delete ingress filters prio {prio} of link {index}"):
            self._ipr.tc("del-filter", "u32", index, parent=INGRESS_PARENT, prio=prio,
                         protocol=ETH_P_ALL, target=_U32_CLASSID)


def _link(msg: Any) -> Link:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    return Link(index=msg["index"], name=msg.get_attr("IFLA_IFNAME"),
                mac=(msg.get_attr("IFLA_ADDRESS") or "").lower(), mtu=msg.get_attr("IFLA_MTU"),
                kind=kind or "", up=bool(msg["flags"] & IFF_UP),
                loopback=bool(msg["flags"] & IFF_LOOPBACK))


def _redirect_target(msg: Any) -> int | None:
    actions = msg.get_nested("TCA_OPTIONS", "TCA_U32_ACT")
    if actions is None:
        return None
    for _, action in actions["attrs"]:
        if action.get_attr("TCA_ACT_KIND") != "mirred":
            continue
        parms = action.get_nested("TCA_ACT_OPTIONS", "TCA_MIRRED_PARMS")
        if parms is not None and parms["eaction"] == TCA_EGRESS_REDIR:
            return int(parms["ifindex"])
    return None


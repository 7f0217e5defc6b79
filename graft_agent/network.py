"""Guest network configuration over rtnetlink (graft_agent/rtnetlink.py), in-process.

Under TCG a helper process per step (`ip link set …`, `ip addr add …`) cost tens of
milliseconds each, and a pod's NIC took a dozen of them; netlink requests cost microseconds.

Links are found by MAC: a hot-plugged NIC carries the pod's MAC already; a NIC a template VM
was built with carries the template's MAC, named by `match_hw_addr`, and is given the pod's.
Then it is renamed, given an MTU and addresses, and brought up. Routes are added with replace
semantics (the kernel makes connected routes along with the addresses).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from typing import NamedTuple

from .errors import FailedPrecondition, InvalidArgument, NotFound
from .rtnetlink import RT_TABLE_MAIN, RTN_UNICAST, NetlinkError, Rtnetlink

_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_MAC = re.compile(r"([0-9a-f]{2}:){5}[0-9a-f]{2}")
_SCOPES = {0, 200, 253, 254, 255}  # universe, site, link, host, nowhere
_POLL_S = 0.02


class Address(NamedTuple):
    address: str
    prefix_len: int


class Link(NamedTuple):
    name: str
    hw_addr: str
    mtu: int
    addresses: list[Address]


class Route(NamedTuple):
    dest: str = ""
    gateway: str = ""
    device: str = ""
    source: str = ""
    scope: int = 0


def _check_mac(value: str, field: str) -> str:
    mac = value.lower()
    if not _MAC.fullmatch(mac):
        raise InvalidArgument(f"invalid {field} {value!r}")
    return mac


def _check_address(address: Address) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    try:
        return ipaddress.ip_interface(f"{address.address}/{address.prefix_len}")
    except ValueError as exc:
        raise InvalidArgument(f"invalid address: {exc}") from None


def _check_route(route: Route) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network | None, int]:
    """(destination network or None for a default route, address family)."""
    dest = route.dest if route.dest not in ("", "default") else None
    try:
        net = ipaddress.ip_network(dest, strict=False) if dest else None
        probes = [ipaddress.ip_address(v) for v in (route.gateway, route.source) if v]
    except ValueError as exc:
        raise InvalidArgument(f"invalid route {route}: {exc}") from None
    if route.scope not in _SCOPES:
        raise InvalidArgument(f"invalid route scope {route.scope}")
    if route.device and not _IFNAME.fullmatch(route.device):
        raise InvalidArgument(f"invalid route device {route.device!r}")
    version = net.version if net is not None else (probes[0].version if probes else 4)
    if any(p.version != version for p in probes):
        raise InvalidArgument(f"invalid route {route}: mixed address families")
    return net, socket.AF_INET6 if version == 6 else socket.AF_INET


class Network:
    def __init__(self) -> None:
        self._nl: Rtnetlink | None = None  # opened on first use

    def netlink(self) -> Rtnetlink:
        if self._nl is None:
            self._nl = Rtnetlink()
        return self._nl

    def close(self) -> None:
        if self._nl is not None:
            self._nl.close()
            self._nl = None

    def _names(self) -> dict[int, str]:
        return {link.index: link.name for link in self.netlink().links()}

    # -- interfaces -------------------------------------------------------------------------

    async def list_links(self) -> list[Link]:
        nl = self.netlink()
        links = {link.index: Link(link.name, link.mac, link.mtu, []) for link in nl.links()}
        for addr in nl.addresses():
            if addr.index in links:
                links[addr.index].addresses.append(Address(addr.address, addr.prefix_len))
        return sorted(links.values(), key=lambda link: link.name)

    async def update_link(self, wanted: Link, match_hw_addr: str = "",
                          appear_timeout: float = 5.0) -> Link:
        mac = _check_mac(wanted.hw_addr, "hw_addr")
        match = _check_mac(match_hw_addr, "match_hw_addr") if match_hw_addr else mac
        if wanted.name and not _IFNAME.fullmatch(wanted.name):
            raise InvalidArgument(f"invalid interface name {wanted.name!r}")
        addresses = [_check_address(a) for a in wanted.addresses]
        index, current = await self._wait_for_mac(match, appear_timeout)
        name = wanted.name or current
        nl = self.netlink()
        try:
            nl.set_link(index, up=False)
            nl.set_link(index, name=name if name != current else None,
                        mac=mac if mac != match else None, mtu=wanted.mtu or None)
            for addr in [a for a in nl.addresses() if a.index == index]:
                nl.delete_address(addr)
            for iface in addresses:
                family = socket.AF_INET6 if iface.version == 6 else socket.AF_INET
                nl.add_address(index, family, str(iface.ip), iface.network.prefixlen)
            nl.set_link(index, up=True)
        except NetlinkError as exc:
            raise FailedPrecondition(f"configuring {name}: {exc.strerror}") from None
        for link in await self.list_links():
            if link.name == name:
                return link
        raise NotFound(f"interface {name} vanished while being configured")

    async def _wait_for_mac(self, mac: str, timeout: float) -> tuple[int, str]:
        """A hot-plugged NIC shows up shortly after the host's device_add: wait for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for link in self.netlink().links():
                if link.mac == mac:
                    return link.index, link.name
            if loop.time() > deadline:
                raise NotFound(f"no network interface with MAC {mac}")
            await asyncio.sleep(_POLL_S)

    # -- routes -----------------------------------------------------------------------------

    async def list_routes(self) -> list[Route]:
        nl = self.netlink()
        names = self._names()
        routes = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for r in nl.routes(family):
                if r.type != RTN_UNICAST or r.table != RT_TABLE_MAIN:
                    continue
                dest = f"{r.dst}/{r.dst_len}" if r.dst else "default"
                routes.append(Route(dest, r.gateway, names.get(r.oif, ""), r.prefsrc, r.scope))
        return routes

    async def update_routes(self, routes: list[Route]) -> list[Route]:
        checked = [(route, *_check_route(route)) for route in routes]
        indexes = {name: index for index, name in self._names().items()}
        nl = self.netlink()
        # Link-scope routes first: a gateway must be reachable before a route uses it.
        for route, net, family in sorted(checked, key=lambda c: bool(c[0].gateway)):
            if route.device and route.device not in indexes:
                raise NotFound(f"route {route}: no interface {route.device}")
            try:
                nl.replace_route(family, str(net.network_address) if net is not None else "",
                                 net.prefixlen if net is not None else 0,
                                 gateway=route.gateway, oif=indexes.get(route.device, 0),
                                 prefsrc=route.source, scope=route.scope)
            except NetlinkError as exc:
                raise FailedPrecondition(f"route {route}: {exc.strerror}") from None
        return await self.list_routes()

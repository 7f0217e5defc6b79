"""Guest network configuration through the `ip` applet (busybox in the guest).

Links are identified by MAC (the host hot-plugs a NIC with a known address), then renamed,
given an MTU and addresses, and brought up. Routes are added with `ip route replace`.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import NamedTuple

from .errors import InvalidArgument, NotFound, RuntimeFailure
from .fsutil import read_text, which
from .spawn import Spawner

_SYS_NET = "/sys/class/net"
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_MAC = re.compile(r"([0-9a-f]{2}:){5}[0-9a-f]{2}")
_SCOPE_NAMES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
_SCOPE_NUMBERS = {v: k for k, v in _SCOPE_NAMES.items()}
_ROUTE_FIELDS = {"via": "gateway", "dev": "device", "src": "source"}
_ROUTE_KEYS = {"via", "dev", "src", "scope", "metric", "proto", "table", "mtu", "advmss",
               "expires", "pref", "error", "weight", "realm", "realms", "hoplimit"}


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


def ip_command() -> list[str]:
    """Prefer busybox's applet (what the guest ships), else iproute2."""
    busybox = which("busybox")
    if busybox:
        return [busybox, "ip"]
    ip = which("ip")
    if ip:
        return [ip]
    raise RuntimeFailure("no `ip` command in the guest")


class Network:
    def __init__(self, spawner: Spawner, ip: list[str] | None = None) -> None:
        self._spawner = spawner
        self._ip = ip

    async def _run(self, *args: str) -> str:
        if self._ip is None:
            self._ip = ip_command()
        result = await self._spawner.run([*self._ip, *args])
        if result.status != 0:
            raise RuntimeFailure(f"ip {' '.join(args)}: {result.describe()}")
        return result.stdout.decode(errors="replace")

    # -- interfaces -------------------------------------------------------------------------

    async def list_links(self) -> list[Link]:
        links = {name: Link(name, read_text(f"{_SYS_NET}/{name}/address").strip(),
                            int(read_text(f"{_SYS_NET}/{name}/mtu", "0").strip() or 0), [])
                 for name in sorted(os.listdir(_SYS_NET))}
        for line in (await self._run("-o", "addr", "show")).splitlines():
            # "3: eth0    inet 10.0.0.2/24 brd ... scope global eth0\   valid_lft ..."
            parts = line.split()
            if len(parts) < 4 or parts[2] not in ("inet", "inet6"):
                continue
            name = parts[1].split("@")[0]
            address, _, prefix = parts[3].partition("/")
            if name in links:
                links[name].addresses.append(Address(address, int(prefix or 0)))
        return list(links.values())

    async def update_link(self, wanted: Link, appear_timeout: float = 5.0) -> Link:
        mac = wanted.hw_addr.lower()
        if not _MAC.fullmatch(mac):
            raise InvalidArgument(f"invalid hw_addr {wanted.hw_addr!r}")
        if wanted.name and not _IFNAME.fullmatch(wanted.name):
            raise InvalidArgument(f"invalid interface name {wanted.name!r}")
        addresses = [_check_address(a) for a in wanted.addresses]
        current = await self._wait_for_mac(mac, appear_timeout)
        name = wanted.name or current
        await self._run("link", "set", "dev", current, "down")
        if name != current:
            await self._run("link", "set", "dev", current, "name", name)
        if wanted.mtu:
            await self._run("link", "set", "dev", name, "mtu", str(wanted.mtu))
        await self._run("addr", "flush", "dev", name)
        for address in addresses:
            await self._run("addr", "add", address, "dev", name)
        await self._run("link", "set", "dev", name, "up")
        for link in await self.list_links():
            if link.name == name:
                return link
        raise NotFound(f"interface {name} vanished while being configured")

    async def _wait_for_mac(self, mac: str, timeout: float) -> str:
        """A hot-plugged NIC shows up shortly after the host's device_add: wait for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for name in os.listdir(_SYS_NET):
                if read_text(f"{_SYS_NET}/{name}/address").strip().lower() == mac:
                    return name
            if loop.time() > deadline:
                raise NotFound(f"no network interface with MAC {mac}")
            await asyncio.sleep(0.05)

    # -- routes -----------------------------------------------------------------------------

    async def list_routes(self) -> list[Route]:
        routes = parse_routes(await self._run("route", "show"))
        try:
            routes += parse_routes(await self._run("-6", "route", "show"))
        except RuntimeFailure:
            pass  # no IPv6 in this kernel/ip build
        return routes

    async def update_routes(self, routes: list[Route]) -> list[Route]:
        # Link-scope routes first: a gateway must be reachable before a route uses it.
        for route in sorted(routes, key=lambda r: bool(r.gateway)):
            await self._run(*route_args(route))
        return await self.list_routes()


def _check_address(address: Address) -> str:
    import ipaddress

    try:
        iface = ipaddress.ip_interface(f"{address.address}/{address.prefix_len}")
    except ValueError as exc:
        raise InvalidArgument(f"invalid address: {exc}") from None
    return iface.with_prefixlen


def route_args(route: Route) -> list[str]:
    import ipaddress

    dest = route.dest or "default"
    try:
        family_probe = dest if dest != "default" else (route.gateway or route.source)
        is_v6 = bool(family_probe) and ipaddress.ip_network(family_probe, strict=False).version == 6
        for value in (route.gateway, route.source):
            if value:
                ipaddress.ip_address(value)
    except ValueError as exc:
        raise InvalidArgument(f"invalid route {route}: {exc}") from None
    if route.scope and route.scope not in _SCOPE_NAMES:
        raise InvalidArgument(f"invalid route scope {route.scope}")
    if route.device and not _IFNAME.fullmatch(route.device):
        raise InvalidArgument(f"invalid route device {route.device!r}")
    args = (["-6"] if is_v6 else []) + ["route", "replace", dest]
    if route.gateway:
        args += ["via", route.gateway]
    if route.device:
        args += ["dev", route.device]
    if route.source:
        args += ["src", route.source]
    if route.scope:
        args += ["scope", _SCOPE_NAMES[route.scope]]
    return args


def parse_routes(text: str) -> list[Route]:
    """Parse `ip route show` lines (busybox and iproute2 print the same shape)."""
    routes = []
    for line in text.splitlines():
        tokens = line.split()
        if not tokens or tokens[0] in ("local", "broadcast", "unreachable", "prohibit",
                                       "blackhole", "multicast", "anycast", "throw"):
            continue
        fields = {"dest": tokens[0]}
        i = 1
        while i < len(tokens):
            key = tokens[i]
            value = tokens[i + 1] if i + 1 < len(tokens) else ""
            if key in _ROUTE_KEYS:
                if key in _ROUTE_FIELDS:
                    fields[_ROUTE_FIELDS[key]] = value
                elif key == "scope":
                    fields["scope"] = _SCOPE_NUMBERS.get(value, int(value) if value.isdigit() else 0)
                i += 2
            else:
                i += 1  # a flag such as onlink / linkdown
        route = Route(**fields)
        routes.append(route)
    return routes

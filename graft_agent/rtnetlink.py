"""The few rtnetlink requests the guest agent makes, on one NETLINK_ROUTE socket.

Why not pyroute2 (which the host side uses): importing it pulls in `ssl` and `unittest.mock`,
which the guest image leaves out on purpose (with `_ssl` present, asyncio maps libssl and
libcrypto at every boot). What the agent needs is small: list links, addresses and routes;
set a link's name, MAC, MTU and up/down state; add and delete addresses; replace routes.
Message layouts are the kernel's (include/uapi/linux/{netlink,rtnetlink,if_link,if_addr}.h).
Requests are answered before send() returns, so plain blocking calls cost microseconds.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from typing import NamedTuple

# netlink.h
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_DUMP = 0x300
# rtnetlink.h message types
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
# attributes
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU = 1, 3, 4
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 7, 15
IFF_UP = 0x1
RT_TABLE_MAIN = 254
RTPROT_BOOT, RTN_UNICAST = 3, 1

_NLMSGHDR = struct.Struct("=IHHII")      # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")    # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")     # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")     # family, dst_len, src_len, tos, table, protocol,
                                         # scope, type, flags
_RTATTR = struct.Struct("=HH")


class NetlinkError(OSError):
    pass


class LinkInfo(NamedTuple):
    index: int
    name: str
    mac: str
    mtu: int
    up: bool


class AddrInfo(NamedTuple):
    index: int
    family: int
    address: str
    prefix_len: int


class RouteInfo(NamedTuple):
    family: int
    dst: str          # "" for a default route
    dst_len: int
    gateway: str
    oif: int
    prefsrc: str
    scope: int
    table: int
    type: int


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    size = _RTATTR.size + len(payload)
    return _RTATTR.pack(size, kind) + payload + b"\0" * (_align(size) - size)


def _attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pos = 0
    while pos + _RTATTR.size <= len(data):
        size, kind = _RTATTR.unpack_from(data, pos)
        if size < _RTATTR.size:
            break
        out[kind & 0x3FFF] = data[pos + _RTATTR.size:pos + size]
        pos += _align(size)
    return out


def _ip(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw)


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


class Rtnetlink:
    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   socket.NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        self._seq += 1
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | flags,
                                self._seq, 0)
        self._sock.send(header + body)
        return self._seq

    def _replies(self, seq: int) -> Iterator[tuple[int, bytes]]:
        """(type, payload) of each answer to *seq* until done; raises the kernel's error."""
        while True:
            data = self._sock.recv(1 << 16)
            pos = 0
            while pos + _NLMSGHDR.size <= len(data):
                size, kind, flags, msg_seq, _ = _NLMSGHDR.unpack_from(data, pos)
                payload = data[pos + _NLMSGHDR.size:pos + size]
                pos += _align(size)
                if msg_seq != seq:
                    continue  # a late answer to an earlier request
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code:
                        raise NetlinkError(code, os.strerror(code))
                    return  # an ACK
                yield kind, payload
                if not flags & NLM_F_MULTI:
                    return

    def _dump(self, kind: int, body: bytes) -> Iterator[tuple[int, bytes]]:
        return self._replies(self._send(kind, NLM_F_DUMP, body))

    def _do(self, kind: int, flags: int, body: bytes) -> None:
        for _ in self._replies(self._send(kind, flags | NLM_F_ACK, body)):
            pass

    # -- queries ----------------------------------------------------------------------------

    def links(self) -> list[LinkInfo]:
        out = []
        for _, payload in self._dump(RTM_GETLINK, _IFINFOMSG.pack(0, 0, 0, 0, 0)):
            _, _, index, flags, _ = _IFINFOMSG.unpack_from(payload)
            attrs = _attrs(payload[_IFINFOMSG.size:])
            mtu = struct.unpack("=I", attrs[IFLA_MTU])[0] if IFLA_MTU in attrs else 0
            out.append(LinkInfo(index, attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(),
                                _mac(attrs.get(IFLA_ADDRESS, b"")), mtu, bool(flags & IFF_UP)))
        return out

    def addresses(self) -> list[AddrInfo]:
        out = []
        for _, payload in self._dump(RTM_GETADDR, _IFADDRMSG.pack(0, 0, 0, 0, 0)):
            family, prefix_len, _, _, index = _IFADDRMSG.unpack_from(payload)
            attrs = _attrs(payload[_IFADDRMSG.size:])
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if raw and family in (socket.AF_INET, socket.AF_INET6):
                out.append(AddrInfo(index, family, _ip(family, raw), prefix_len))
        return out

    def routes(self, family: int) -> list[RouteInfo]:
        out = []
        for _, payload in self._dump(RTM_GETROUTE, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
            fam, dst_len, _, _, table, _, scope, rtype, _ = _RTMSG.unpack_from(payload)
            attrs = _attrs(payload[_RTMSG.size:])
            if RTA_TABLE in attrs:
                table = struct.unpack("=I", attrs[RTA_TABLE])[0]
            ip = lambda key: _ip(fam, attrs[key]) if key in attrs else ""  # noqa: E731
            oif = struct.unpack("=i", attrs[RTA_OIF])[0] if RTA_OIF in attrs else 0
            out.append(RouteInfo(fam, ip(RTA_DST), dst_len, ip(RTA_GATEWAY), oif,
                                 ip(RTA_PREFSRC), scope, table, rtype))
        return out

    # -- changes ----------------------------------------------------------------------------

    def set_link(self, index: int, *, up: bool | None = None, name: str | None = None,
                 mac: str | None = None, mtu: int | None = None) -> None:
        attrs = b""
        if name is not None:
            attrs += _attr(IFLA_IFNAME, name.encode() + b"\0")
        if mac is not None:
            attrs += _attr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", "")))
        if mtu is not None:
            attrs += _attr(IFLA_MTU, struct.pack("=I", mtu))
        flags = change = 0
        if up is not None:
            flags, change = (IFF_UP if up else 0), IFF_UP
        self._do(RTM_NEWLINK, 0, _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)
                 + attrs)

    def add_address(self, index: int, family: int, address: str, prefix_len: int) -> None:
        raw = socket.inet_pton(family, address)
        self._do(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL,
                 _IFADDRMSG.pack(family, prefix_len, 0, 0, index)
                 + _attr(IFA_LOCAL, raw) + _attr(IFA_ADDRESS, raw))

    def delete_address(self, addr: AddrInfo) -> None:
        raw = socket.inet_pton(addr.family, addr.address)
        try:
            self._do(RTM_DELADDR, 0, _IFADDRMSG.pack(addr.family, addr.prefix_len, 0, 0,
                                                     addr.index) + _attr(IFA_LOCAL, raw))
        except NetlinkError as exc:
            if exc.errno != errno.EADDRNOTAVAIL:  # went with an earlier one (IPv6 temporaries)
                raise

    def replace_route(self, family: int, dst: str, dst_len: int, *, gateway: str = "",
                      oif: int = 0, prefsrc: str = "", scope: int = 0) -> None:
        attrs = b""
        if dst:
            attrs += _attr(RTA_DST, socket.inet_pton(family, dst))
        if gateway:
            attrs += _attr(RTA_GATEWAY, socket.inet_pton(family, gateway))
        if prefsrc:
            attrs += _attr(RTA_PREFSRC, socket.inet_pton(family, prefsrc))
        if oif:
            attrs += _attr(RTA_OIF, struct.pack("=i", oif))
        self._do(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE,
                 _RTMSG.pack(family, dst_len, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope,
                             RTN_UNICAST, 0) + attrs)

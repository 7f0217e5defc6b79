"""Pod networking, "tcfilter" model: the CNI veth in the pod netns is wired
to a tap device by two tc ingress redirects, and the guest NIC takes over the
veth's MAC and addresses.

    peer ──veth── [ingress: redirect → tap]  tap ── VMM fd ── guest eth0
                  [redirect → veth :ingress]

Functions here block for a few milliseconds (netlink in a short-lived thread
inside the netns); from async code call them through asyncio.to_thread.
"""
from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

from shim.errors import InvalidArgument

from .model import (AmbiguousPodInterface, NetnsNotFound, NoPodInterface, NotANetns, PodEndpoint,
                    PodInterface, TapNotFound)
from .netlink import Link, Netlink
from .netns import open_netns, run_in_netns
from .tuntap import create_persistent_tap, open_tap_queue, validate_ifname

DEFAULT_TAP_NAME = "tap0_graft"
# Marks graft's filters, so teardown removes exactly those and nothing that
# someone else may have put on the same ingress qdisc.
GRAFT_FILTER_PRIO = 0xC0DE


def discover_pod_interface(netns: Path, interface: str | None = None) -> PodInterface:
    """The interface CNI configured in *netns*: *interface* if named, else the
    one non-loopback link with a (non-link-local) address."""
    netns = Path(netns)
    return run_in_netns(netns, lambda: _discover(netns, interface))


def attach_endpoint(netns: Path, tap_name: str = DEFAULT_TAP_NAME, *,
                    interface: str | None = None, queues: int = 1) -> PodEndpoint:
    """Create *tap_name* in *netns* and redirect all traffic between it and the
    pod interface, both ways. On failure nothing is left behind."""
    validate_ifname(tap_name)
    if queues < 1:
        raise InvalidArgument(f"queues must be >= 1, not {queues}")
    netns = Path(netns)
    return run_in_netns(netns, lambda: _attach(netns, tap_name, interface, queues))


def adopt_tap(netns: Path, current_name: str, tap_name: str = DEFAULT_TAP_NAME, *,
              interface: str | None = None, pod: PodInterface | None = None) -> PodEndpoint:
    """Move tap *current_name* from the caller's netns into *netns* as *tap_name* and wire
    it to the pod interface like attach_endpoint (a VM restored ahead of its pod keeps its
    tap fd: only the device moves). *pod*: the interface, if already discovered. On failure
    nothing of graft's is left in *netns*."""
    validate_ifname(current_name)
    validate_ifname(tap_name)
    netns = Path(netns)
    ns_fd = open_netns(netns)
    try:
        with Netlink() as nl:
            link = nl.link(current_name)
            if link is None or link.kind != "tun":
                raise TapNotFound(f"no tap device {current_name} to move into {netns}")
            nl.move_to_netns(link.index, ns_fd)
    finally:
        os.close(ns_fd)
    return run_in_netns(netns, lambda: _adopt(netns, current_name, tap_name, interface, pod))


def detach_endpoint(netns: Path, tap_name: str = DEFAULT_TAP_NAME) -> None:
    """Remove the tap and graft's filters (and ingress qdiscs left empty).
    Idempotent; a netns that is gone holds nothing to clean."""
    validate_ifname(tap_name)
    try:
        run_in_netns(Path(netns), lambda: _detach(tap_name))
    except (NetnsNotFound, NotANetns):
        return


def open_tap_fds(netns: Path, tap_name: str = DEFAULT_TAP_NAME, queues: int = 1,
                 vnet_hdr: bool = True) -> list[int]:
    """Open *queues* fds of the existing tap (for CLH vm.add-net or QEMU
    getfd). The caller owns and closes them. vnet_hdr=True is what
    virtio-net VMMs expect (each frame carries a virtio_net_hdr)."""
    validate_ifname(tap_name)
    if queues < 1:
        raise InvalidArgument(f"queues must be >= 1, not {queues}")

    def open_all() -> list[int]:
        with Netlink() as nl:
            link = nl.link(tap_name)
        if link is None or link.kind != "tun":
            # Checked first: TUNSETIFF on an unknown name would create a tap.
            raise TapNotFound(f"no tap device {tap_name} in {netns}")
        fds: list[int] = []
        try:
            for _ in range(queues):
                fds.append(open_tap_queue(tap_name, multi_queue=queues > 1, vnet_hdr=vnet_hdr))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    return run_in_netns(Path(netns), open_all)


# -- inside the netns ------------------------------------------------------------------

def _discover(netns: Path, interface: str | None) -> PodInterface:
    with Netlink() as nl:
        links = [link for link in nl.links() if not link.loopback]
        if interface is not None:
            chosen = next((link for link in links if link.name == interface), None)
            if chosen is None:
                raise NoPodInterface(f"no interface {interface} in network namespace {netns}")
            return _read_interface(nl, chosen)
        candidates = [info for info in (_read_interface(nl, link) for link in links)
                      if info.addresses]
    if not candidates:
        seen = ", ".join(link.name for link in links) or "none besides lo"
        raise NoPodInterface(f"no interface with an IP address in network namespace {netns} "
                             f"(interfaces: {seen}); did the CNI plugin run?")
    if len(candidates) > 1:
        names = ", ".join(info.name for info in candidates)
        raise AmbiguousPodInterface(
            f"several interfaces with addresses in {netns} ({names}); name one")
    return candidates[0]


def _read_interface(nl: Netlink, link: Link) -> PodInterface:
    # IPv6 link-local addresses stay behind: the guest derives the same one
    # from the same MAC.
    addresses = tuple(a for a in nl.addresses(link.index)
                      if not (a.family == socket.AF_INET6
                              and ipaddress.ip_address(a.address).is_link_local))
    routes = tuple(r for r in nl.routes(link) if not _is_ipv6_link_local_route(r.dest))
    return PodInterface(name=link.name, index=link.index, mac=link.mac, mtu=link.mtu,
                        addresses=addresses, routes=routes)


def _is_ipv6_link_local_route(dest: str) -> bool:
    net = ipaddress.ip_network(dest)
    return net.version == 6 and (net.is_link_local or net.is_multicast)


def _attach(netns: Path, tap_name: str, interface: str | None, queues: int) -> PodEndpoint:
    pod = _discover(netns, interface)
    create_persistent_tap(tap_name, multi_queue=queues > 1, vnet_hdr=True)
    return _wire(netns, pod, tap_name, queues)


def _adopt(netns: Path, moved_name: str, tap_name: str, interface: str | None,
           pod: PodInterface | None) -> PodEndpoint:
    try:
        pod = pod or _discover(netns, interface)
        with Netlink() as nl:
            moved = nl.link(moved_name)
            if moved is None:
                raise TapNotFound(f"tap {moved_name} vanished while moving into {netns}")
            nl.rename(moved.index, tap_name)
    except BaseException:
        _detach(moved_name)
        raise
    return _wire(netns, pod, tap_name, 1)


def endpoint_of(netns: Path, pod: PodInterface, tap_name: str = DEFAULT_TAP_NAME,
                queues: int = 1) -> PodEndpoint:
    """The endpoint *pod* becomes once wired to *tap_name*."""
    return PodEndpoint(netns=netns, veth_name=pod.name, tap_name=tap_name, mac=pod.mac,
                       mtu=pod.mtu, addresses=pod.addresses, routes=pod.routes, queues=queues)


def _wire(netns: Path, pod: PodInterface, tap_name: str, queues: int) -> PodEndpoint:
    """Redirect all traffic between the pod interface and the tap, both ways."""
    try:
        with Netlink() as nl:
            tap = nl.link(tap_name)
            if tap is None:
                raise TapNotFound(f"tap {tap_name} vanished right after its creation")
            nl.set_mtu(tap.index, pod.mtu)
            nl.disable_ipv6_autoconf(tap.index)
            for src, dst in ((pod.index, tap.index), (tap.index, pod.index)):
                if not nl.has_ingress(src):
                    nl.add_ingress(src)
                nl.add_redirect(src, dst, GRAFT_FILTER_PRIO)
            nl.set_up(tap.index)
    except BaseException:
        _detach(tap_name)
        raise
    return endpoint_of(netns, pod, tap_name, queues)


def _detach(tap_name: str) -> None:
    with Netlink() as nl:
        links = nl.links()
        existing = {link.index for link in links}
        tap = next((link for link in links if link.name == tap_name), None)
        tap_index = tap.index if tap is not None else None
        for link in links:
            if link.index == tap_index or not nl.has_ingress(link.index):
                continue
            filters = nl.ingress_filters(link.index)
            ours = [f for f in filters if f.prio == GRAFT_FILTER_PRIO and f.target_index is not None
                    and (f.target_index == tap_index or f.target_index not in existing)]
            if not ours:
                continue
            nl.delete_filters(link.index, GRAFT_FILTER_PRIO)
            if not nl.ingress_filters(link.index):
                nl.delete_ingress(link.index)
        if tap is not None:
            nl.delete_link(tap.index)  # takes its own qdiscs and filters along

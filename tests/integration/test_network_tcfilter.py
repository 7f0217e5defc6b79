"""Pod networking against the real kernel: namespaces, veth pairs, taps and
tc filters made by this test (never the host's interfaces), traffic checked
through a tap fd that stands in for the VMM."""
from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shim.errors import InvalidArgument
from shim.network import (DEFAULT_TAP_NAME, AmbiguousPodInterface, EndpointExists, NetlinkFailure,
                          NetnsNotFound, NoPodInterface, NotANetns, TapNotFound, adopt_tap,
                          attach_endpoint, detach_endpoint, discover_pod_interface, open_tap_fds,
                          run_in_netns)
from shim.network.tuntap import open_transient_tap

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None
                                or shutil.which("tc") is None,
                                reason="needs root, iproute2 and tc")

POD_IP, PEER_IP = "192.0.2.2", "192.0.2.1"      # TEST-NET-1, only inside our namespaces
POD_IP6, PEER_IP6 = "2001:db8::2", "2001:db8::1"
ETH_P_TEST = 0x88B5                              # IEEE "local experimental" ethertype
VNET_HDR_LEN = 10                                # struct virtio_net_hdr (no mergeable buffers)


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def ip_json(ns: str, *args: str) -> list[dict]:
    return json.loads(run("ip", "-n", ns, "-j", "-d", *args).stdout or "[]")


def tc_json(ns: str, *args: str) -> list[dict]:
    return json.loads(run("ip", "netns", "exec", ns, "tc", "-j", *args).stdout or "[]")


@dataclass(frozen=True)
class PodNet:
    pod: str          # netns names
    peer: str
    peer_dev: str
    pod_mac: str
    peer_mac: str

    @property
    def path(self) -> Path:
        return Path("/run/netns") / self.pod

    @property
    def peer_path(self) -> Path:
        return Path("/run/netns") / self.peer


@pytest.fixture
def netns_factory() -> Iterator[Callable[[str], str]]:
    created: list[str] = []

    def make(role: str) -> str:
        name = f"graft-test-{role}-{uuid.uuid4().hex[:8]}"
        run("ip", "netns", "add", name)
        created.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    yield make
    for name in created:  # deleting a netns takes its veth end, taps and qdiscs along
        run("ip", "netns", "del", name, check=False)


@pytest.fixture
def pod_net(netns_factory: Callable[[str], str]) -> PodNet:
    """pod netns with eth0 192.0.2.2/24 + 2001:db8::2/64 and default routes,
    its veth peer in a second netns with 192.0.2.1 (what CNI would do)."""
    pod, peer = netns_factory("pod"), netns_factory("peer")
    tag = uuid.uuid4().hex[:6]
    run("ip", "link", "add", f"gv{tag}", "netns", pod, "type", "veth",
        "peer", "name", f"gp{tag}", "netns", peer)
    run("ip", "-n", pod, "link", "set", f"gv{tag}", "name", "eth0")
    run("ip", "-n", pod, "addr", "add", f"{POD_IP}/24", "dev", "eth0")
    run("ip", "-n", pod, "addr", "add", f"{POD_IP6}/64", "dev", "eth0", "nodad")
    run("ip", "-n", pod, "link", "set", "eth0", "up")
    run("ip", "-n", pod, "route", "add", "default", "via", PEER_IP)
    run("ip", "-n", pod, "-6", "route", "add", "default", "via", PEER_IP6)
    run("ip", "-n", peer, "addr", "add", f"{PEER_IP}/24", "dev", f"gp{tag}")
    run("ip", "-n", peer, "link", "set", f"gp{tag}", "up")
    return PodNet(pod=pod, peer=peer, peer_dev=f"gp{tag}",
                  pod_mac=ip_json(pod, "link", "show", "eth0")[0]["address"],
                  peer_mac=ip_json(peer, "link", "show", f"gp{tag}")[0]["address"])


@pytest.fixture
def endpoint_of(pod_net: PodNet) -> Iterator[PodNet]:
    """pod_net with the tap attached; detached again at teardown."""
    attach_endpoint(pod_net.path)
    yield pod_net
    detach_endpoint(pod_net.path)


def redirect_targets(ns: str, dev: str) -> list[str]:
    return [action["to_dev"] for f in tc_json(ns, "filter", "show", "dev", dev, "ingress")
            for action in f.get("options", {}).get("actions", [])
            if action.get("kind") == "mirred" and action.get("mirred_action") == "redirect"
            and action.get("direction") == "egress"]


def ingress_qdiscs(ns: str, dev: str) -> list[dict]:
    return [q for q in tc_json(ns, "qdisc", "show", "dev", dev) if q["kind"] == "ingress"]


def link_names(ns: str) -> set[str]:
    return {link["ifname"] for link in ip_json(ns, "link", "show")}


# -- discovery ------------------------------------------------------------------------------

def test_discovery_reads_what_cni_configured(pod_net: PodNet) -> None:
    info = discover_pod_interface(pod_net.path)
    assert (info.name, info.mac, info.mtu) == ("eth0", pod_net.pod_mac, 1500)
    assert {(a.address, a.prefix_len) for a in info.addresses} == {(POD_IP, 24), (POD_IP6, 64)}
    routes = {(r.dest, r.gateway) for r in info.routes}
    assert {("0.0.0.0/0", PEER_IP), ("192.0.2.0/24", ""), ("::/0", PEER_IP6),
            ("2001:db8::/64", "")} <= routes
    assert not any(r.dest.startswith("fe80") for r in info.routes)
    assert {r.device for r in info.routes} == {"eth0"}
    connected = next(r for r in info.routes if r.dest == "192.0.2.0/24")
    assert (connected.source, connected.scope) == (POD_IP, 253)


def test_discovery_needs_a_single_addressed_interface(pod_net: PodNet) -> None:
    run("ip", "-n", pod_net.pod, "link", "add", "extra0", "type", "veth", "peer", "name", "extra1")
    run("ip", "-n", pod_net.pod, "addr", "add", "198.51.100.7/24", "dev", "extra0")
    with pytest.raises(AmbiguousPodInterface, match="eth0.*extra0|extra0.*eth0"):
        discover_pod_interface(pod_net.path)
    assert discover_pod_interface(pod_net.path, interface="extra0").addresses[0].address == \
        "198.51.100.7"
    with pytest.raises(NoPodInterface, match="nope0"):
        discover_pod_interface(pod_net.path, interface="nope0")


def test_netns_without_interfaces_is_a_clear_error(netns_factory: Callable[[str], str]) -> None:
    empty = Path("/run/netns") / netns_factory("empty")
    with pytest.raises(NoPodInterface, match="did the CNI plugin run"):
        attach_endpoint(empty)
    assert link_names(empty.name) == {"lo"}


@pytest.mark.parametrize("call", [discover_pod_interface, attach_endpoint, open_tap_fds])
def test_missing_netns_is_file_not_found_with_the_path(call: Callable[[Path], object]) -> None:
    path = Path(f"/run/netns/graft-test-absent-{uuid.uuid4().hex[:8]}")
    with pytest.raises(NetnsNotFound) as info:
        call(path)
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.filename == str(path)
    assert not path.exists()  # not created on the way (pyroute2's default would)


def test_a_file_that_is_no_netns_is_rejected(tmp_path: Path) -> None:
    bogus = tmp_path / "netns"
    bogus.write_text("")
    with pytest.raises(NotANetns, match=str(bogus)):
        attach_endpoint(bogus)
    detach_endpoint(bogus)  # nothing to clean, no error


# -- attach / detach ----------------------------------------------------------------------

def test_attach_creates_tap_and_redirects_both_ways(pod_net: PodNet) -> None:
    own_netns = os.readlink("/proc/thread-self/ns/net")
    start = time.monotonic()
    ep = attach_endpoint(pod_net.path)
    elapsed = time.monotonic() - start
    try:
        assert os.readlink("/proc/thread-self/ns/net") == own_netns
        assert (ep.veth_name, ep.tap_name, ep.mac, ep.mtu) == (
            "eth0", DEFAULT_TAP_NAME, pod_net.pod_mac, 1500)
        assert {a.address for a in ep.addresses} == {POD_IP, POD_IP6}
        tap = ip_json(pod_net.pod, "link", "show", DEFAULT_TAP_NAME)[0]
        assert tap["linkinfo"]["info_kind"] == "tun"
        assert tap["linkinfo"]["info_data"]["type"] == "tap"
        assert tap["linkinfo"]["info_data"]["multi_queue"] is False
        assert tap["linkinfo"]["info_data"]["persist"] is True
        assert "UP" in tap["flags"] and tap["mtu"] == 1500
        assert tap["address"] != pod_net.pod_mac
        # The tap takes no part in the pod netns' IPv6.
        assert ip_json(pod_net.pod, "addr", "show", "dev", DEFAULT_TAP_NAME)[0]["addr_info"] == []
        assert len(ingress_qdiscs(pod_net.pod, "eth0")) == 1
        assert len(ingress_qdiscs(pod_net.pod, DEFAULT_TAP_NAME)) == 1
        assert redirect_targets(pod_net.pod, "eth0") == [DEFAULT_TAP_NAME]
        assert redirect_targets(pod_net.pod, DEFAULT_TAP_NAME) == ["eth0"]
        assert link_names(pod_net.peer) == {"lo", pod_net.peer_dev}
    finally:
        detach_endpoint(pod_net.path)
    assert elapsed < 1.0, f"attach took {elapsed:.3f}s"


def test_adopted_tap_moves_in_keeps_its_fd_and_carries_traffic(pod_net: PodNet) -> None:
    """A VM restored ahead of its pod holds a transient tap made in the host netns: adopting
    moves that device into the pod netns as tap0_graft and wires it; the fd opened before
    the move still sends and receives the pod's frames. Detach leaves nothing."""
    name = f"gn{uuid.uuid4().hex[:12]}"
    fd = open_transient_tap(name, vnet_hdr=False)
    try:
        ep = adopt_tap(pod_net.path, name)
        assert name not in link_names_here()
        assert (ep.veth_name, ep.tap_name, ep.mac) == ("eth0", DEFAULT_TAP_NAME, pod_net.pod_mac)
        tap = ip_json(pod_net.pod, "link", "show", DEFAULT_TAP_NAME)[0]
        assert tap["linkinfo"]["info_data"]["persist"] is False  # still gone with its fd
        assert redirect_targets(pod_net.pod, "eth0") == [DEFAULT_TAP_NAME]
        assert redirect_targets(pod_net.pod, DEFAULT_TAP_NAME) == ["eth0"]
        sock = peer_socket(pod_net)
        try:
            sock.send(test_frame(pod_net.pod_mac, pod_net.peer_mac, b"adopted-in"))
            read_tap_until(fd, lambda f: b"adopted-in" in f)
            os.write(fd, test_frame(pod_net.peer_mac, pod_net.pod_mac, b"adopted-out"))
            recv_peer_until(sock, b"adopted-out")
        finally:
            sock.close()
    finally:
        detach_endpoint(pod_net.path)
        os.close(fd)
    assert link_names(pod_net.pod) == {"lo", "eth0"}
    assert not ingress_qdiscs(pod_net.pod, "eth0")


def test_adopting_a_missing_tap_changes_nothing(pod_net: PodNet) -> None:
    with pytest.raises(TapNotFound):
        adopt_tap(pod_net.path, "gnnotthere0")
    assert link_names(pod_net.pod) == {"lo", "eth0"} and not ingress_qdiscs(pod_net.pod, "eth0")


def link_names_here() -> set[str]:
    return {link["ifname"] for link in json.loads(run("ip", "-j", "link", "show").stdout)}


async def test_usable_from_async_code(pod_net: PodNet) -> None:
    # pyroute2 runs its own event loop; it must live in the netns thread, not
    # clash with the caller's running loop.
    ep = await asyncio.to_thread(attach_endpoint, pod_net.path)
    assert discover_pod_interface(pod_net.path).name == ep.veth_name  # direct call in a loop
    await asyncio.to_thread(detach_endpoint, pod_net.path)
    assert link_names(pod_net.pod) == {"lo", "eth0"}


def test_detach_leaves_nothing_and_is_idempotent(pod_net: PodNet) -> None:
    attach_endpoint(pod_net.path)
    detach_endpoint(pod_net.path)
    assert link_names(pod_net.pod) == {"lo", "eth0"}
    assert ingress_qdiscs(pod_net.pod, "eth0") == []
    assert tc_json(pod_net.pod, "filter", "show", "dev", "eth0", "ingress") == []
    detach_endpoint(pod_net.path)
    # The pod interface itself is untouched.
    assert discover_pod_interface(pod_net.path).addresses


def test_detach_cleans_the_veth_when_the_tap_is_already_gone(pod_net: PodNet) -> None:
    attach_endpoint(pod_net.path)
    run("ip", "-n", pod_net.pod, "link", "del", DEFAULT_TAP_NAME)
    # A redirect to a deleted device stays behind in the kernel...
    assert redirect_targets(pod_net.pod, "eth0")
    detach_endpoint(pod_net.path)
    # ...until detach removes it.
    assert ingress_qdiscs(pod_net.pod, "eth0") == []


def test_detach_after_the_netns_is_gone_is_quiet(pod_net: PodNet) -> None:
    attach_endpoint(pod_net.path)
    run("ip", "netns", "del", pod_net.pod)
    detach_endpoint(pod_net.path)
    assert DEFAULT_TAP_NAME not in {link["ifname"] for link in
                                    json.loads(run("ip", "-j", "link", "show").stdout)}


def test_detach_keeps_filters_it_did_not_add(pod_net: PodNet) -> None:
    ns = pod_net.pod
    run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "ingress")
    run("ip", "netns", "exec", ns, "tc", "filter", "add", "dev", "eth0", "ingress", "prio",
        "60000", "protocol", "ip", "u32", "match", "ip", "dst", "203.0.113.7/32", "flowid", "1:1")
    attach_endpoint(pod_net.path)
    assert redirect_targets(ns, "eth0") == [DEFAULT_TAP_NAME]
    detach_endpoint(pod_net.path)
    prefs = {f["pref"] for f in tc_json(ns, "filter", "show", "dev", "eth0", "ingress")}
    assert prefs == {60000}
    assert len(ingress_qdiscs(ns, "eth0")) == 1


def test_second_attach_fails_and_leaves_the_first_alone(endpoint_of: PodNet) -> None:
    ns = endpoint_of.pod
    with pytest.raises(EndpointExists, match=DEFAULT_TAP_NAME):
        attach_endpoint(endpoint_of.path)
    assert redirect_targets(ns, "eth0") == [DEFAULT_TAP_NAME]
    assert redirect_targets(ns, DEFAULT_TAP_NAME) == ["eth0"]


def test_failed_attach_rolls_back(pod_net: PodNet) -> None:
    # A tap's MTU cannot exceed 65521, a veth's can: copying it fails midway.
    run("ip", "-n", pod_net.pod, "link", "set", "eth0", "mtu", "65535")
    with pytest.raises(NetlinkFailure, match="mtu"):
        attach_endpoint(pod_net.path)
    assert link_names(pod_net.pod) == {"lo", "eth0"}
    assert ingress_qdiscs(pod_net.pod, "eth0") == []


def test_multi_queue_tap(pod_net: PodNet) -> None:
    attach_endpoint(pod_net.path, "mq0", queues=2)
    try:
        tap = ip_json(pod_net.pod, "link", "show", "mq0")[0]
        assert tap["linkinfo"]["info_data"]["multi_queue"] is True
        fds = open_tap_fds(pod_net.path, "mq0", queues=2)
        assert len(fds) == 2
        for fd in fds:
            os.close(fd)
        with pytest.raises(InvalidArgument, match="multi-queue"):
            open_tap_fds(pod_net.path, "mq0", queues=1)
    finally:
        detach_endpoint(pod_net.path, "mq0")
    assert link_names(pod_net.pod) == {"lo", "eth0"}


def test_open_tap_fds_never_creates_a_tap(pod_net: PodNet) -> None:
    with pytest.raises(TapNotFound):
        open_tap_fds(pod_net.path)
    with pytest.raises(TapNotFound):
        open_tap_fds(pod_net.path, "eth0")  # exists, but is no tap
    assert link_names(pod_net.pod) == {"lo", "eth0"}


# -- traffic ------------------------------------------------------------------------------

def peer_socket(net: PodNet) -> socket.socket:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_TEST))
        sock.bind((net.peer_dev, ETH_P_TEST))
        return sock
    return run_in_netns(net.peer_path, make)


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def test_frame(dst: str, src: str, marker: bytes) -> bytes:
    return mac_bytes(dst) + mac_bytes(src) + struct.pack("!H", ETH_P_TEST) + marker.ljust(46, b"\0")


test_frame.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def read_tap_until(fd: int, wanted: Callable[[bytes], bool], timeout: float = 2.0) -> bytes:
    """Frames from the pod side also include the peer's IPv6 chatter: skip it."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0]:
            frame = os.read(fd, 65536)
            if wanted(frame):
                return frame
    raise AssertionError("expected frame never reached the tap")


def recv_peer_until(sock: socket.socket, marker: bytes, timeout: float = 2.0) -> bytes:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        frame, addr = sock.recvfrom(65536)
        if addr[2] != socket.PACKET_OUTGOING and marker in frame:
            return frame
    raise AssertionError("expected frame never reached the peer")


@pytest.mark.parametrize("vnet_hdr", [False, True])
def test_frames_flow_both_ways_through_the_redirects(endpoint_of: PodNet, vnet_hdr: bool) -> None:
    net = endpoint_of
    header = bytes(VNET_HDR_LEN) if vnet_hdr else b""
    [tap_fd] = open_tap_fds(net.path, vnet_hdr=vnet_hdr)
    sock = peer_socket(net)
    try:
        # peer → veth ingress → redirect → tap → "VMM" fd
        inbound = test_frame(net.pod_mac, net.peer_mac, b"to-guest")
        sock.send(inbound)
        got = read_tap_until(tap_fd, lambda f: b"to-guest" in f)
        assert got[len(header):len(header) + len(inbound)] == inbound
        if vnet_hdr:
            assert got[:2] == b"\0\0"  # virtio_net_hdr flags/gso_type: plain frame
        # "VMM" fd → tap ingress → redirect → veth → peer
        outbound = test_frame(net.peer_mac, net.pod_mac, b"from-guest")
        os.write(tap_fd, header + outbound)
        assert recv_peer_until(sock, b"from-guest")[:len(outbound)] == outbound
    finally:
        sock.close()
        os.close(tap_fd)


class GuestStandIn:
    """Answers ARP and ICMP echo for the pod IP on the tap fd, as the guest
    would: the pod IP is only reachable if traffic really crosses the tap."""

    def __init__(self, fd: int, mac: str, ip: str) -> None:
        self.fd, self.mac, self.ip = fd, mac_bytes(mac), socket.inet_aton(ip)
        self.echo_requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> GuestStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if select.select([self.fd], [], [], 0.05)[0]:
                reply = self._answer(os.read(self.fd, 65536))
                if reply:
                    os.write(self.fd, reply)

    def _answer(self, frame: bytes) -> bytes | None:
        src, ethertype, payload = frame[6:12], frame[12:14], frame[14:]
        if ethertype == b"\x08\x06" and payload[6:8] == b"\x00\x01" and payload[24:28] == self.ip:
            arp = payload[:6] + b"\x00\x02" + self.mac + self.ip + payload[8:18]
            return src + self.mac + ethertype + arp
        if ethertype == b"\x08\x00" and payload[9] == 1 and payload[16:20] == self.ip:
            ihl = (payload[0] & 0x0F) * 4
            total = struct.unpack("!H", payload[2:4])[0]
            icmp = payload[ihl:total]
            if icmp[0] != 8:
                return None
            self.echo_requests += 1
            icmp = b"\x00\x00\x00\x00" + icmp[4:]
            icmp = icmp[:2] + struct.pack("!H", inet_checksum(icmp)) + icmp[4:]
            header = payload[:12] + payload[16:20] + payload[12:16] + payload[20:ihl]
            return src + self.mac + ethertype + header + icmp
        return None


def inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ping_from_peer(net: PodNet, count: int, deadline: int) -> str:
    busybox = shutil.which("busybox")  # iputils' ping is not installed here
    assert busybox, "busybox (busybox-static) is needed for ping"
    out = run("ip", "netns", "exec", net.peer, busybox, "ping", "-c", str(count), "-i", "0.2",
              "-W", str(deadline), "-w", str(deadline), POD_IP, check=False)
    assert f"{count} packets transmitted" in out.stdout, out.stdout + out.stderr
    return out.stdout


def test_pod_ip_answers_only_through_the_tap(endpoint_of: PodNet) -> None:
    net = endpoint_of
    [tap_fd] = open_tap_fds(net.path, vnet_hdr=False)
    try:
        # The pod netns still holds the IP, but its stack never sees the
        # traffic (redirect, not mirror): without a "guest" nobody answers.
        assert "1 packets transmitted, 0 packets received" in ping_from_peer(net, 1, 1)
        with GuestStandIn(tap_fd, net.pod_mac, POD_IP) as guest:
            output = ping_from_peer(net, 3, 5)
        assert "3 packets transmitted, 3 packets received" in output, output
        # >= : the unanswered ping's request may still sit in the peer's ARP queue.
        assert guest.echo_requests >= 3
    finally:
        os.close(tap_fd)

"""The tap made by attach_endpoint is what QEMU 7.2 expects: it hot-plugs a
virtio-net NIC on it, by name (netdev_add ifname=) and by an fd from
open_tap_fds (getfd). QEMU runs paused (-S) inside the pod netns: no guest
needed, only the VMM side of the contract."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from qemu.qmp import QMPClient

from shim.network import attach_endpoint, detach_endpoint, open_tap_fds
from shim.network.model import PodEndpoint

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or QEMU is None or shutil.which("ip") is None,
                                reason="needs root, iproute2 and qemu-system-x86_64")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, capture_output=True, text=True)


@pytest.fixture
def endpoint() -> Iterator[PodEndpoint]:
    ns = f"graft-test-qemu-{uuid.uuid4().hex[:8]}"
    run("ip", "netns", "add", ns)
    try:
        run("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
        run("ip", "-n", ns, "addr", "add", "192.0.2.2/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        ep = attach_endpoint(Path("/run/netns") / ns)
        yield ep
        detach_endpoint(ep.netns)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest_asyncio.fixture
async def qmp(endpoint: PodEndpoint, tmp_path: Path) -> AsyncIterator[QMPClient]:
    sock = tmp_path / "qmp.sock"
    # `ip netns exec` setns()es and execs QEMU: the recorded pid is QEMU's.
    proc = subprocess.Popen(
        ["ip", "netns", "exec", endpoint.netns.name, str(QEMU), "-S", "-nodefaults",
         "-display", "none", "-machine", "q35", "-accel", "tcg", "-m", "64",
         "-device", "pcie-root-port,id=rp0,chassis=1",
         "-qmp", f"unix:{sock},server=on,wait=off"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    client = QMPClient("graft-network-test")
    try:
        for _ in range(100):
            if sock.exists() or proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        await client.connect(str(sock))
        yield client
    finally:
        await client.disconnect()
        proc.kill()
        proc.wait()


def tap_state(ep: PodEndpoint) -> dict:
    return json.loads(run("ip", "-n", ep.netns.name, "-j", "-d", "link", "show",
                          ep.tap_name).stdout)[0]


async def plug_nic(qmp: QMPClient, ep: PodEndpoint, netdev: dict[str, object]) -> None:
    await qmp.execute("netdev_add", {"type": "tap", "id": "net0", **netdev})
    await qmp.execute("device_add", {"driver": "virtio-net-pci", "id": "nic0", "netdev": "net0",
                                     "bus": "rp0", "mac": ep.mac, "romfile": ""})


async def test_qemu_hot_plugs_the_tap_by_name(endpoint: PodEndpoint, qmp: QMPClient) -> None:
    assert "LOWER_UP" not in tap_state(endpoint)["flags"]  # nobody holds a queue yet
    await plug_nic(qmp, endpoint, {"ifname": endpoint.tap_name, "script": "no",
                                   "downscript": "no"})
    tap = tap_state(endpoint)
    assert "LOWER_UP" in tap["flags"]
    assert tap["linkinfo"]["info_data"]["vnet_hdr"] is True
    [rx] = await qmp.execute("query-rx-filter", {"name": "nic0"})  # type: ignore[misc]
    assert rx["main-mac"] == endpoint.mac


async def test_qemu_takes_a_tap_fd_from_open_tap_fds(endpoint: PodEndpoint,
                                                    qmp: QMPClient) -> None:
    [fd] = open_tap_fds(endpoint.netns, endpoint.tap_name)
    try:
        qmp.send_fd_scm(fd)
        await qmp.execute("getfd", {"fdname": "tapfd"})
    finally:
        os.close(fd)  # QEMU holds its own copy now
    await plug_nic(qmp, endpoint, {"fd": "tapfd"})
    assert "LOWER_UP" in tap_state(endpoint)["flags"]
    [rx] = await qmp.execute("query-rx-filter", {"name": "nic0"})  # type: ignore[misc]
    assert rx["main-mac"] == endpoint.mac

"""Agent housekeeping, sandbox and network RPCs against a real agent process on the host
(in its own mount/UTS/network namespaces, so nothing here touches the host's setup)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest
from google.protobuf import empty_pb2

from agent_harness import AgentClient, AgentProcess, process_alive, unique
from graft_agent.api import agent_pb2 as pb
from shim.ttrpc import Code, TtrpcError

pytestmark = [
    pytest.mark.skipif(shutil.which("crun") is None, reason="needs crun"),
    pytest.mark.asyncio(loop_scope="session"),
]


def in_agent_netns(agent_process: AgentProcess, *args: str) -> str:
    return subprocess.run(["nsenter", f"--net=/proc/{agent_process.pid}/ns/net", *args],
                          check=True, capture_output=True, text=True).stdout


async def test_check_and_details(agent):
    health = await agent.call("Check", pb.CheckRequest())
    assert health.status == pb.HealthCheckResponse.SERVING
    details = await agent.call("GetGuestDetails", empty_pb2.Empty())
    assert details.kernel_release == os.uname().release
    with open("/proc/sys/kernel/random/boot_id") as f:
        assert details.boot_id == f.read().strip()
    assert details.online_cpus == os.sysconf("SC_NPROCESSORS_ONLN")
    assert details.memory_total_bytes > 1 << 20
    assert details.default_runtime == "crun"
    assert details.agent_version
    assert 0 < details.agent_uptime_s < 3600


async def test_reseed_random(agent):
    await agent.call("ReseedRandomDev", pb.ReseedRandomDevRequest(data=os.urandom(64)))
    await agent.call("ReseedRandomDev", pb.ReseedRandomDevRequest(data=os.urandom(4096)))  # > 1 KiB ioctl arg
    with pytest.raises(TtrpcError) as err:
        await agent.call("ReseedRandomDev", pb.ReseedRandomDevRequest(data=b""))
    assert err.value.code == Code.INVALID_ARGUMENT


async def test_set_time_rejects_nonsense(agent):
    # Only the validation is exercised here: a successful call would set the host's clock.
    for sec, usec in ((0, 0), (1_700_000_000, 1_000_000), (-5, 0)):
        with pytest.raises(TtrpcError) as err:
            await agent.call("SetGuestDateTime", pb.SetGuestDateTimeRequest(sec=sec, usec=usec))
        assert err.value.code == Code.INVALID_ARGUMENT


async def test_online_cpu_mem(agent):
    await agent.call("OnlineCPUMem", pb.OnlineCPUMemRequest())
    await agent.call("OnlineCPUMem", pb.OnlineCPUMemRequest(nb_cpus=os.sysconf("SC_NPROCESSORS_ONLN"),
                                                            cpu_only=True))


async def test_sandbox_lifecycle(agent, agent_process, busybox_rootfs):
    name = unique("pod")[:60]
    await agent.call("CreateSandbox", pb.CreateSandboxRequest(
        sandbox_id="sb1", hostname=name, dns=["nameserver 10.0.0.53", "search example.test"]))
    hostname = subprocess.run(["nsenter", f"--uts=/proc/{agent_process.pid}/ns/uts", "hostname"],
                              check=True, capture_output=True, text=True).stdout.strip()
    assert hostname == name
    assert (agent_process.run_dir / "resolv.conf").read_text() == \
        "nameserver 10.0.0.53\nsearch example.test\n"
    with pytest.raises(TtrpcError) as err:
        await agent.call("CreateSandbox", pb.CreateSandboxRequest(sandbox_id="sb1"))
    assert err.value.code == Code.ALREADY_EXISTS

    # DestroySandbox takes every container down with it.
    pid = await agent.create("in-sandbox", ["sleep", "1000"], busybox_rootfs)
    await agent.start("in-sandbox")
    await agent.call("DestroySandbox", pb.DestroySandboxRequest())
    assert not process_alive(pid)
    with pytest.raises(TtrpcError) as err:
        await agent.wait("in-sandbox")
    assert err.value.code == Code.NOT_FOUND


async def test_share_mount_failure_is_reported(agent):
    # No virtio transport on the host: the 9p mount must fail cleanly, not crash the agent.
    with pytest.raises(TtrpcError) as err:
        await agent.call("CreateSandbox", pb.CreateSandboxRequest(
            sandbox_id="sb2", share_mount_tag="no-such-tag",
            share_mount_point=str(agent.agent.workdir / "share")))
    assert err.value.code == Code.FAILED_PRECONDITION and "no-such-tag" in err.value.message
    # The sandbox was not half-created: a retry without the share works.
    await agent.call("CreateSandbox", pb.CreateSandboxRequest(sandbox_id="sb2"))
    await agent.call("DestroySandbox", pb.DestroySandboxRequest())


async def test_interfaces_and_routes(agent, agent_process):
    mac = "02:00:00:12:34:56"
    in_agent_netns(agent_process, "ip", "link", "add", "gtest0", "address", mac, "type", "veth",
                   "peer", "name", "gtest1")
    in_agent_netns(agent_process, "ip", "link", "set", "gtest1", "up")

    iface = await agent.call("UpdateInterface", pb.UpdateInterfaceRequest(interface=pb.Interface(
        name="eth7", hw_addr=mac.upper(), mtu=1400,
        addresses=[pb.IPAddress(address="10.9.0.2", prefix_len=24),
                   pb.IPAddress(address="fd00::2", prefix_len=64)])))
    assert iface.name == "eth7" and iface.hw_addr == mac and iface.mtu == 1400
    assert {(a.address, a.prefix_len) for a in iface.addresses} >= {("10.9.0.2", 24), ("fd00::2", 64)}
    assert "state UP" in in_agent_netns(agent_process, "ip", "link", "show", "eth7") or \
        ",UP" in in_agent_netns(agent_process, "ip", "link", "show", "eth7")

    listed = await agent.call("ListInterfaces", empty_pb2.Empty())
    by_name = {i.name: i for i in listed.interfaces}
    assert "lo" in by_name and by_name["eth7"].mtu == 1400
    assert ("127.0.0.1", 8) in {(a.address, a.prefix_len) for a in by_name["lo"].addresses}

    routes = await agent.call("UpdateRoutes", pb.UpdateRoutesRequest(routes=pb.Routes(routes=[
        pb.Route(dest="default", gateway="10.9.0.1", device="eth7"),
        pb.Route(dest="10.20.0.0/16", gateway="10.9.0.1", device="eth7", source="10.9.0.2"),
    ])))
    got = {(r.dest, r.gateway, r.device) for r in routes.routes}
    assert ("default", "10.9.0.1", "eth7") in got
    assert ("10.20.0.0/16", "10.9.0.1", "eth7") in got
    assert ("10.9.0.0/24", "", "eth7") in got  # the kernel's link route for the address
    link_route = next(r for r in routes.routes if r.dest == "10.9.0.0/24")
    assert link_route.scope == 253 and link_route.source == "10.9.0.2"
    kernel_view = in_agent_netns(agent_process, "ip", "route", "show")
    assert "default via 10.9.0.1 dev eth7" in kernel_view
    listed_routes = await agent.call("ListRoutes", empty_pb2.Empty())
    assert {(r.dest, r.gateway) for r in listed_routes.routes} >= {("default", "10.9.0.1")}

    for bad in (pb.Interface(hw_addr="not-a-mac"),
                pb.Interface(hw_addr=mac, addresses=[pb.IPAddress(address="10.0.0.300", prefix_len=8)]),
                pb.Interface(hw_addr=mac, name="way-too-long-interface-name")):
        with pytest.raises(TtrpcError) as err:
            await agent.call("UpdateInterface", pb.UpdateInterfaceRequest(interface=bad))
        assert err.value.code == Code.INVALID_ARGUMENT
    with pytest.raises(TtrpcError) as err:
        await agent.call("UpdateRoutes", pb.UpdateRoutesRequest(routes=pb.Routes(routes=[
            pb.Route(dest="10.0.0.0/33")])))
    assert err.value.code == Code.INVALID_ARGUMENT


async def test_a_restored_nic_is_given_the_pods_mac(agent, agent_process):
    """The NIC a template VM was built with carries the template's MAC: the agent finds it by
    that MAC and gives it the pod's (plus name, MTU, address)."""
    template_mac, pod_mac = "02:67:72:61:66:74", "0a:58:0a:de:01:07"
    in_agent_netns(agent_process, "ip", "link", "add", "gtpl0", "address", template_mac,
                   "type", "veth", "peer", "name", "gtpl1")
    iface = await agent.call("UpdateInterface", pb.UpdateInterfaceRequest(
        interface=pb.Interface(name="eth3", hw_addr=pod_mac, mtu=1450,
                               addresses=[pb.IPAddress(address="10.8.0.5", prefix_len=24)]),
        match_hw_addr=template_mac.upper()))
    assert (iface.name, iface.hw_addr, iface.mtu) == ("eth3", pod_mac, 1450)
    shown = in_agent_netns(agent_process, "ip", "link", "show", "eth3")
    assert pod_mac in shown and template_mac not in shown
    with pytest.raises(TtrpcError) as err:  # nothing carries the template MAC any more
        await agent.call("UpdateInterface", pb.UpdateInterfaceRequest(
            interface=pb.Interface(hw_addr=pod_mac), match_hw_addr=template_mac), timeout=20)
    assert err.value.code == Code.NOT_FOUND


async def test_unknown_mac_is_not_found(agent):
    with pytest.raises(TtrpcError) as err:
        await agent.call("UpdateInterface", pb.UpdateInterfaceRequest(interface=pb.Interface(
            hw_addr="02:de:ad:be:ef:00")), timeout=20)
    assert err.value.code == Code.NOT_FOUND


async def test_oom_event_long_poll_waits(agent):
    # The host has no memory controller to trigger a real OOM kill; the long poll must just
    # keep waiting (and be cancellable) — the counter logic is unit-tested in test_agent_parts.
    with pytest.raises(TtrpcError) as err:
        await agent.call("GetOOMEvent", empty_pb2.Empty(), timeout=1.5)
    assert err.value.code == Code.DEADLINE_EXCEEDED


async def test_agent_survives_client_disconnect_mid_call(agent_process, busybox_rootfs):
    first = await AgentClient.connect(agent_process)
    pid = await first.create("orphan-read", ["sleep", "1000"], busybox_rootfs)
    await first.start("orphan-read")
    import asyncio

    pending = asyncio.ensure_future(first.call("ReadStdout", pb.ReadStreamRequest(container_id="orphan-read")))
    await asyncio.sleep(0.2)
    await first.close()
    with pytest.raises(TtrpcError):
        await pending
    second = await AgentClient.connect(agent_process)
    await second.signal("orphan-read", signal.SIGKILL)
    assert await second.wait("orphan-read") == 137
    await second.remove("orphan-read")
    await second.close()
    assert not process_alive(pid)

"""Templates on real QEMU (TCG): one template per module, clones restored
from it run containers, get their own RNG state and the host's clock, and
never write the template's memory."""
from __future__ import annotations

import asyncio
import io
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
import pytest_asyncio

from shim.agent.client import AgentClient
from shim.config import GraftConfig
from shim.factory import tmpfs
from shim.factory.build import destroy_template, init_template
from shim.factory.cli import run_factory
from shim.factory.digests import sha256_file
from shim.factory.boot import make_hypervisor, template_hypervisor_config
from shim.factory.boot_nic import open_clone_tap
from shim.factory.template import find_usable_template
from shim.hypervisor.base import FileBackedMemoryConfig, HypervisorError, VmPaths
from shim.vmconfig.pod_resources import PodResources
from shim.sandbox.sandbox import Sandbox
from shim.sandbox.state import list_sandboxes, read_boot_path
from shim.ttrpc import Client

from template_support import factory_config, open_modes, run_in  # same directory

pytestmark = pytest.mark.vm

MIB = 1 << 20
CLOCK_TEMPLATE_AGE_S = 20  # stands for "a template saved minutes ago"


@pytest.fixture(scope="module")
def config(graft_config: GraftConfig) -> GraftConfig:
    return factory_config(graft_config, graft_config.state_dir / "tpl-clone")


@pytest_asyncio.fixture(scope="module")
async def template(config: GraftConfig):
    result = await init_template(config)
    assert result.built
    memory_digest = sha256_file(result.template.memory_file)
    yield result.template, memory_digest
    destroy_template(config)


async def test_init_made_a_private_tmpfs_template(config: GraftConfig, template) -> None:
    tpl, _ = template
    root = config.template_path
    assert tmpfs.mounted_fstype(root) == "tmpfs"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert tmpfs.size_bytes(root) >= (256 + 8) * MIB
    assert stat.S_IMODE(tpl.directory.stat().st_mode) == 0o700
    for path in tpl.directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert tpl.memory_file.stat().st_size == 256 * MIB
    assert tpl.metadata.hypervisor.kind == "qemu"
    assert tpl.metadata.hypervisor.version.startswith("QEMU ")
    assert [f.name for f in tpl.metadata.files] == ["state"]


async def test_status_shows_the_template_and_init_is_idempotent(config: GraftConfig,
                                                                template) -> None:
    tpl, _ = template
    out = io.StringIO()
    assert run_factory(config, "status", out) == 0
    text = out.getvalue()
    assert f"template: usable ({tpl.directory})" in text
    assert "hypervisor: qemu, QEMU " in text
    assert ("clones open the memory file read-only\n" in text) == (
        tpl.metadata.hypervisor.private_readonly_memory)
    again = await init_template(config)
    assert not again.built and again.template.directory == tpl.directory


async def test_clone_is_restored_and_runs_a_container(config: GraftConfig, template,
                                                      busybox_rootfs: Path) -> None:
    tpl, _ = template
    box = await Sandbox.launch("tpl-c1", config)
    try:
        assert box.boot_path.restored, box.boot_path
        assert str(tpl.directory) in box.boot_path.reason
        recorded = read_boot_path(config, "tpl-c1")
        assert recorded is not None and recorded["restored"] is True
        assert recorded["boot_seconds"] < 5
        # Read-only where the template's QEMU can map it so (>= 8.2; bookworm's 7.2 cannot:
        # test_template_readonly_memory.py runs a newer one).
        readonly = tpl.metadata.hypervisor.private_readonly_memory
        assert open_modes(box.vm.pid, tpl.memory_file) == [os.O_RDONLY if readonly else os.O_RDWR]
        status, out = await run_in(box, "hello", busybox_rootfs, ["echo", "hello"])
        assert (status, out) == (0, b"hello\n")
    finally:
        await box.stop()


async def test_five_clones_at_once_have_distinct_random_bytes(
        config: GraftConfig, template, busybox_rootfs: Path) -> None:
    ids = [f"tpl-m{i}" for i in range(5)]
    started = time.monotonic()
    launched = await asyncio.gather(*(Sandbox.launch(i, config) for i in ids),
                                    return_exceptions=True)
    boxes = [b for b in launched if isinstance(b, Sandbox)]
    try:
        failures = [b for b in launched if not isinstance(b, Sandbox)]
        assert not failures, failures
        assert time.monotonic() - started < 60
        assert all(b.boot_path.restored for b in boxes), [b.boot_path for b in boxes]
        assert len({b.vmm_pid for b in boxes}) == 5
        results = await asyncio.gather(*(
            run_in(b, "rng", busybox_rootfs, ["sh", "-c", "head -c 32 /dev/urandom | od -An -tx1"])
            for b in boxes))
        samples = []
        for status, out in results:
            assert status == 0
            hex_bytes = "".join(out.decode().split())
            assert len(hex_bytes) == 64, out
            samples.append(hex_bytes)
        assert len(set(samples)) == 5, samples  # pairwise different
    finally:
        await asyncio.gather(*(b.stop() for b in boxes))


@pytest.mark.parametrize("connect_after_s", [0.0, 0.05, 0.2])
async def test_first_health_check_of_a_clone_is_answered(config: GraftConfig, template,
                                                         connect_after_s: float) -> None:
    """Right after restore the agent ends the template's host session; a host that connects
    while it does so must get its first request answered on that first connection (before
    the agent kept its port open, a check sent 50 ms after resume was lost every time and
    only the host's reconnect-on-timeout recovered)."""
    tpl, _ = template
    run_dir = config.state_dir / "sandboxes" / f"tpl-first-{int(connect_after_s * 1000)}"
    paths = VmPaths(run_dir=run_dir, shared_dir=run_dir / "shared")
    paths.shared_dir.mkdir(parents=True)
    hv = template_hypervisor_config(config, FileBackedMemoryConfig(tpl.memory_file,
                                                                   shared=False))
    vm = make_hypervisor(config, run_dir.name, hv, paths, None)
    agent: AgentClient | None = None
    try:
        vm.boot_nic_fd = open_clone_tap(None, run_dir.name)  # the template's NIC
        try:
            await vm.restore_vm(tpl.directory)
        finally:
            os.close(vm.boot_nic_fd)
        await vm.resume_vm()
        await asyncio.sleep(connect_after_s)
        agent = AgentClient(Client(*await vm.open_agent_stream()))
        assert await agent.check(timeout=5)  # one connection, one request: no retry
    finally:
        if agent is not None:
            await agent.close()
        await vm.stop_vm()
        shutil.rmtree(run_dir, ignore_errors=True)


async def test_clone_clock_is_the_hosts_not_the_templates(
        config: GraftConfig, template, busybox_rootfs: Path) -> None:
    tpl, _ = template
    age = time.time() - tpl.metadata.created_at
    if age < CLOCK_TEMPLATE_AGE_S:
        await asyncio.sleep(CLOCK_TEMPLATE_AGE_S - age)
    box = await Sandbox.launch("tpl-clock", config)
    try:
        assert box.boot_path.restored
        before = time.time()
        status, out = await run_in(box, "date", busybox_rootfs, ["date", "+%s"])
        after = time.time()
        assert status == 0
        guest = int(out.decode().strip())
        assert before - 2 <= guest <= after + 2, (before, guest, after)
    finally:
        await box.stop()


async def test_clone_gets_the_vcpus_its_pod_asks_for(config: GraftConfig, template) -> None:
    """The template has 1 vCPU; a pod asking for 2 gets one hot-added and
    onlined before anything runs, and the boot record/metrics say so."""
    tpl, _ = template
    assert tpl.metadata.identity["vcpus"] == 1
    box = await Sandbox.launch("tpl-cpu", config, resources=PodResources(vcpus=2))
    try:
        assert box.boot_path.restored
        details = await box.agent.get_guest_details()
        assert details.online_cpus == 2
        assert (box.size.vcpus, box.size.shortfalls) == (2, ())
        assert read_boot_path(config, "tpl-cpu")["vcpus"] == 2
        metrics = (box.paths.run_dir / "metrics.prom").read_text()
        assert 'graft_sandbox_vcpus{sandbox="tpl-cpu"} 2' in metrics
        assert 'graft_sandbox_boot_info{sandbox="tpl-cpu",path="restored"' in metrics
    finally:
        await box.stop()


async def test_clone_gets_the_memory_its_pod_asks_for(config: GraftConfig, template) -> None:
    """The template has 256 MiB and two DIMM slots; a pod asking for 384 MiB
    gets a 128 MiB DIMM (one guest memory block) hot-added and onlined
    before anything runs. The driver then refuses what the slots/maxmem
    cannot hold."""
    tpl, _ = template
    identity = tpl.metadata.identity
    assert (identity["memory_mib"], identity["memory_slots"], identity["max_memory_mib"]) \
        == (256, 2, 2048)
    plain = await Sandbox.launch("tpl-mem0", config)
    try:
        base = await plain.agent.get_guest_details()
    finally:
        await plain.stop()
    assert base.mem_block_size_bytes == 128 * MIB
    # Slots put possible RAM above 4 GiB; without a small swiotlb the guest
    # would lose 64 MiB of its 256 to a bounce pool (MemTotal 140 MiB).
    assert base.memory_total_bytes > 190 * MIB
    box = await Sandbox.launch("tpl-mem", config, resources=PodResources(memory_mib=384))
    try:
        assert box.boot_path.restored
        details = await box.agent.get_guest_details()
        assert details.memory_total_bytes - base.memory_total_bytes == 128 * MIB
        assert (box.size.memory_mib, box.size.shortfalls) == (384, ())
        assert read_boot_path(config, "tpl-mem")["memory_mib"] == 384
        metrics = (box.paths.run_dir / "metrics.prom").read_text()
        assert f'graft_sandbox_memory_bytes{{sandbox="tpl-mem"}} {384 * MIB}' in metrics

        # The second slot, straight through the driver, onlined by the agent.
        with pytest.raises(HypervisorError, match=r"max_memory_mib=2048"):
            await box.vm.add_memory(2048)
        started = time.monotonic()
        assert await box.vm.add_memory(256) == 640
        await box.agent.online_cpu_mem(0, cpu_only=False, memory_bytes=640 * MIB)
        print(f"[timing] hot-add + online 256 MiB: {(time.monotonic() - started) * 1000:.0f} ms")
        details = await box.agent.get_guest_details()
        assert details.memory_total_bytes - base.memory_total_bytes == 384 * MIB
        with pytest.raises(HypervisorError, match="all 2 memory slots are in use"):
            await box.vm.add_memory(128)
    finally:
        await box.stop()


async def test_template_memory_is_unchanged_after_clones(config: GraftConfig,
                                                         template) -> None:
    tpl, digest_after_build = template
    # Clones above ran containers, i.e. dirtied guest RAM: all of it went to
    # their private copies, none to the file.
    assert sha256_file(tpl.memory_file) == digest_after_build
    assert find_usable_template(config).directory == tpl.directory
    left = [e.ref.id for e in list_sandboxes(config) if e.ref is not None]
    assert not any(name.startswith("tpl-") for name in left)


async def test_rebuild_and_destroy_under_a_running_clone(config: GraftConfig, template,
                                                         busybox_rootfs: Path) -> None:
    """Runs last: replaces the module's template. A clone of the old template
    keeps working while the template is rebuilt for another config and then
    destroyed (its memory file is unlinked, never rewritten; the busy tmpfs is
    detached lazily)."""
    old, _ = template
    box = await Sandbox.launch("tpl-old", config)
    try:
        assert box.boot_path.restored
        changed = factory_config(config, config.template_path, kernel_params="graft.rebuilt=1")
        rebuilt = await init_template(changed)
        assert rebuilt.built and rebuilt.replaced
        assert "config mismatch: kernel_params" in rebuilt.replaced[0]
        assert not old.directory.exists()
        assert (await run_in(box, "after-rebuild", busybox_rootfs, ["echo", "still"])) \
            == (0, b"still\n")
        clone = await Sandbox.launch("tpl-new", changed)
        try:
            assert clone.boot_path.restored
            assert str(rebuilt.template.directory) in clone.boot_path.reason
        finally:
            await clone.stop()
        destroy_template(changed)
        assert tmpfs.mounted_fstype(config.template_path) is None
        assert (await run_in(box, "after-destroy", busybox_rootfs, ["echo", "alive"])) \
            == (0, b"alive\n")
    finally:
        await box.stop()

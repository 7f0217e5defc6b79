"""WarmUp in real clones (QEMU under TCG, the 9p share, the template's NIC): what a warm
pool's clone does before its pod comes leaves the pod nothing to see — its share empty, the
NIC without an address — may be repeated, and the pod then runs as in any other clone; once
the VM has a sandbox, WarmUp is refused."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import pytest_asyncio

from graft_agent.warmup import THROWAWAY_ID
from shim.agent.streams import copy_output
from shim.config import GraftConfig
from shim.factory.boot_nic import TEMPLATE_MAC
from shim.factory.build import destroy_template, init_template
from shim.oci import default_spec
from shim.sandbox.sandbox import Sandbox
from shim.sandbox.state import SandboxRef, run_dir
from shim.sandbox.warm import WarmVm, adopt_warm_vm, prepare_warm_vm
from shim.ttrpc import Code, TtrpcError

from template_support import factory_config  # same directory (pytest puts it on sys.path)

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def config(graft_config: GraftConfig) -> GraftConfig:
    return factory_config(graft_config, graft_config.state_dir / "tpl-warmup")


@pytest_asyncio.fixture(scope="module")
async def template(config: GraftConfig):
    result = await init_template(config)
    yield result.template
    destroy_template(config)


async def _echo(box: Sandbox, rootfs: Path) -> tuple[int, bytes]:
    guest_rootfs = box.add_container_rootfs("echo", rootfs)
    out = bytearray()

    async def sink(data: bytes) -> None:
        out.extend(data)
    try:
        await box.agent.create_container("echo", json.dumps(default_spec(["echo", "hi"])).encode(),
                                         guest_rootfs, stdin=False)
        reader = asyncio.ensure_future(copy_output(box.agent, "echo", "", "stdout", sink))
        await box.agent.start_container("echo")
        status = await asyncio.wait_for(box.agent.wait_process("echo", ""), 120)
        await asyncio.wait_for(reader, 30)
        return status.exit_status, bytes(out)
    finally:
        await box.agent.remove_container("echo", force=True)
        box.remove_container_rootfs("echo")


async def _assert_nothing_shows(warm: WarmVm) -> None:
    assert list(warm.paths.shared_dir.iterdir()) == []
    nics = [i for i in await warm.booted.agent.list_interfaces() if i.hw_addr == TEMPLATE_MAC]
    assert len(nics) == 1 and list(nics[0].addresses) == [], nics


async def test_a_warmed_clone_shows_its_pod_nothing(config: GraftConfig, template,
                                                    busybox_rootfs: Path) -> None:
    warm = await prepare_warm_vm(config, "")   # WarmUp included
    try:
        console = (warm.paths.run_dir / "console.log").read_text(errors="replace")
        assert console.count(f"removed container {THROWAWAY_ID}") == 1, console[-3000:]
        await _assert_nothing_shows(warm)
        share_written = warm.paths.shared_dir.stat().st_mtime_ns
        started = time.monotonic()
        await warm.booted.agent.warm_up(warm.booted.hypervisor.config.share_mount_tag)
        assert time.monotonic() - started < 30
        assert warm.paths.shared_dir.stat().st_mtime_ns > share_written   # used again
        await _assert_nothing_shows(warm)
    except BaseException:
        await warm.discard()
        raise
    ref = SandboxRef.of("warmed")
    run_dir(config, ref).parent.mkdir(parents=True, exist_ok=True)   # (the shim's, usually)
    box = await adopt_warm_vm(warm, ref, config)
    assert box is not None
    try:
        assert await _echo(box, busybox_rootfs) == (0, b"hi\n")
        with pytest.raises(TtrpcError) as refused:
            await box.agent.warm_up(box.vm.config.share_mount_tag)
        assert refused.value.code is Code.FAILED_PRECONDITION
    finally:
        await box.stop()

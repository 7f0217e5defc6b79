"""A clone opens its template's memory file read-only, where the VMM can (QEMU >= 8.2).

bookworm's QEMU 7.2 cannot: a read-only memory-backend-file is guest ROM there, so graft
records in each template whether its VMM maps a read-only file as private, writable RAM
(readonly=on,rom=off) and clones use it only then. This module builds and restores a template
for real with QEMU 10 from bookworm-backports (hack/qemu_backports.py, fetched by setup)."""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest
import pytest_asyncio

from shim.config import GraftConfig
from shim.factory.build import destroy_template, init_template
from shim.factory.cli import run_factory
from shim.factory.digests import sha256_file
from shim.sandbox.sandbox import Sandbox

from template_support import factory_config, open_modes, run_in  # same directory

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "hack"))
import qemu_backports  # noqa: E402

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def newer_qemu() -> Path:
    try:
        return qemu_backports.fetch()
    except qemu_backports.FetchError as exc:  # no network and nothing cached: not graft's failure
        pytest.skip(f"QEMU from Debian {qemu_backports.SUITE} unavailable: {exc}")


@pytest.fixture(scope="module")
def config(graft_config: GraftConfig, newer_qemu: Path) -> GraftConfig:
    return factory_config(graft_config, graft_config.state_dir / "tpl-ro", binary=str(newer_qemu))


@pytest_asyncio.fixture(scope="module")
async def template(config: GraftConfig):
    result = await init_template(config)
    assert result.built
    yield result.template, sha256_file(result.template.memory_file)
    destroy_template(config)


def mappings(pid: int, path: Path) -> list[str]:
    """The permission fields (e.g. rw-p) of *pid*'s mappings of *path*."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return [line.split()[1] for line in lines if line.endswith(" " + str(path))]


async def test_template_records_that_its_qemu_maps_memory_read_only(config: GraftConfig,
                                                                   template) -> None:
    tpl, _ = template
    assert tpl.metadata.hypervisor.version.startswith("QEMU 10."), tpl.metadata.hypervisor
    assert tpl.metadata.hypervisor.private_readonly_memory is True
    out = io.StringIO()
    assert run_factory(config, "status", out) == 0
    assert "clones open the memory file read-only\n" in out.getvalue()


async def test_clone_opens_the_memory_read_only_and_writes_its_own_copy(
        config: GraftConfig, template, busybox_rootfs: Path) -> None:
    tpl, digest = template
    box = await Sandbox.launch("tplro-c1", config)
    try:
        assert box.boot_path.restored, box.boot_path
        pid = box.vm.pid
        assert pid is not None
        assert open_modes(pid, tpl.memory_file) == [os.O_RDONLY]
        assert mappings(pid, tpl.memory_file) == ["rw-p"]  # private: guest writes stay in QEMU
        # The guest runs, i.e. writes its RAM (page cache, a new process) through that mapping.
        eight_mib_of_zeros = "dd if=/dev/zero bs=1M count=8 2>/dev/null | md5sum"
        status, out = await run_in(box, "ro-hello", busybox_rootfs,
                                   ["sh", "-c", eight_mib_of_zeros])
        assert status == 0 and out.startswith(b"96995b58d4cbf6aaa9041b4f00c7f6ae"), out
    finally:
        await box.stop()
    assert sha256_file(tpl.memory_file) == digest

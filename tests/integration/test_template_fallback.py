"""A template that cannot be used means a cold boot with the reason logged
and recorded, never a failed sandbox (real QEMU, TCG)."""
from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_asyncio

from shim.config import GraftConfig
from shim.factory import tmpfs
from shim.factory.build import destroy_template, init_template
from shim.factory.cli import run_factory
from shim.factory.digests import sha256_file
from shim.sandbox.sandbox import Sandbox
from shim.sandbox.state import read_boot_path

from template_support import factory_config  # same directory (pytest puts it on sys.path)

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def config(graft_config: GraftConfig) -> GraftConfig:
    return factory_config(graft_config, graft_config.state_dir / "tpl-fallback")


@pytest_asyncio.fixture(scope="module")
async def template(config: GraftConfig):
    result = await init_template(config)
    yield result.template
    destroy_template(config)


async def launch_expecting_cold_boot(config: GraftConfig, sandbox_id: str, reason: str,
                                     caplog: pytest.LogCaptureFixture,
                                     logged: str | None = None) -> None:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="shim.factory.boot"):
        box = await Sandbox.launch(sandbox_id, config)
    try:
        assert not box.boot_path.restored
        assert reason in box.boot_path.reason, box.boot_path.reason
        recorded = read_boot_path(config, sandbox_id)
        assert recorded is not None and recorded["restored"] is False
        assert reason in recorded["reason"]
        assert any((logged or reason) in r.getMessage() and "cold boot" in r.getMessage()
                   for r in caplog.records), [r.getMessage() for r in caplog.records]
        assert await box.agent.check(timeout=30)  # a running, answering VM
    finally:
        await box.stop()


class saved_file:
    """Put a template file back as it was after the test damaged it."""

    def __init__(self, path: Path) -> None:
        self.path, self.backup = path, path.with_name(f".{path.name}.orig")

    def __enter__(self) -> Path:
        shutil.copy2(self.path, self.backup)
        return self.path

    def __exit__(self, *exc) -> None:
        self.backup.replace(self.path)


async def test_corrupted_state_file_means_cold_boot(config: GraftConfig, template,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with saved_file(template.directory / "state") as state:
        state.write_bytes(b"\xde\xad" * (state.stat().st_size // 2) + b"\0" *
                          (state.stat().st_size % 2))
        out = io.StringIO()
        assert run_factory(config, "status", out) == 1
        assert "state file state corrupt" in out.getvalue()
        await launch_expecting_cold_boot(config, "fb-state", "state file state corrupt", caplog)


async def test_state_that_qemu_rejects_means_cold_boot(config: GraftConfig, template,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Damage metadata cannot see (digest updated to match): the restore
    itself fails, and the sandbox still gets a cold-booted VM."""
    meta_path = template.directory / "metadata.json"
    with saved_file(template.directory / "state") as state, saved_file(meta_path):
        state.write_bytes(b"QEVM garbage" + b"\0" * (state.stat().st_size - 12))
        meta = json.loads(meta_path.read_text())
        meta["files"][0]["sha256"] = sha256_file(state)
        meta_path.write_text(json.dumps(meta))
        await launch_expecting_cold_boot(config, "fb-restore", "restore failed", caplog,
                                         logged="failed, cold boot instead")


async def test_mismatched_config_means_cold_boot(config: GraftConfig, template,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    other = factory_config(config, config.template_path, kernel_params="graft.test=1")
    await launch_expecting_cold_boot(other, "fb-config", "config mismatch: kernel_params",
                                     caplog)


async def test_template_from_another_kernel_means_cold_boot(
        config: GraftConfig, template, caplog: pytest.LogCaptureFixture) -> None:
    meta_path = template.directory / "metadata.json"
    with saved_file(meta_path):
        meta = json.loads(meta_path.read_text())
        meta["kernel_sha256"] = "0" * 64
        meta_path.write_text(json.dumps(meta))
        await launch_expecting_cold_boot(config, "fb-kernel", "guest kernel changed", caplog)


def graft_cli(config: GraftConfig, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the `graft` CLI with *config* written out as a TOML file."""
    lines = []
    for section in sorted({s for s, _ in config.values}):
        lines.append(f"[{section}]")
        for (sec, name), value in config.values.items():
            if sec == section:
                lines.append(f"{name} = {json.dumps(value)}")
    path = tmp_path / "graft.toml"
    path.write_text("\n".join(lines) + "\n")
    return subprocess.run([sys.executable, "-m", "shim.cli.graft_main", "--config", str(path),
                           *args], capture_output=True, text=True, timeout=120)


async def test_destroy_then_missing_template_means_cold_boot(
        config: GraftConfig, template, caplog: pytest.LogCaptureFixture,
        tmp_path: Path) -> None:
    status = graft_cli(config, tmp_path, "factory", "status")
    assert status.returncode == 0, status.stdout + status.stderr  # the damage above was undone
    assert f"template: usable ({template.directory})" in status.stdout
    overview = graft_cli(config, tmp_path, "status")
    assert overview.returncode == 0 and "template: usable" in overview.stdout
    destroyed = graft_cli(config, tmp_path, "factory", "destroy")
    assert destroyed.returncode == 0, destroyed.stderr
    assert f"unmounted the tmpfs on {config.template_path}" in destroyed.stdout
    assert tmpfs.mounted_fstype(config.template_path) is None
    assert not config.template_path.exists()
    again = graft_cli(config, tmp_path, "factory", "destroy")  # safe when absent
    assert again.returncode == 0 and "no template" in again.stdout
    missing = graft_cli(config, tmp_path, "factory", "status")
    assert missing.returncode == 1 and "no template at" in missing.stdout
    await launch_expecting_cold_boot(config, "fb-missing", "no template at", caplog)

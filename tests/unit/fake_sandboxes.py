"""Sandbox directories as a running shim leaves them (for `graft status`/`metrics` tests)."""
from __future__ import annotations

import json
from pathlib import Path

from shim.config import GraftConfig
from shim.sandbox import state
from shim.sandbox.state import SandboxRef


def fake_sandbox(config: GraftConfig, sandbox_id: str, boot: dict | None = None,
                 vmm_pid: int | None = None) -> Path:
    """A run dir with an owner record, and a boot record / VMM record when given."""
    ref = SandboxRef(sandbox_id)
    directory = state.run_dir(config, ref)
    directory.mkdir(parents=True)
    state.write_owner(directory, ref)
    if boot is not None:
        (directory / state.BOOT_PATH_FILE).write_text(json.dumps(boot))
    if vmm_pid is not None:
        state.record_vmm(directory, vmm_pid)
    return directory

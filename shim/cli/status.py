"""`graft status`: the sandboxes on this host, how each VM was booted
(restored from the template or cold, and why), and the template's state."""
from __future__ import annotations

import sys
import time
from typing import TextIO

import psutil

from shim.config import GraftConfig
from shim.factory.cli import describe_status
from shim.factory.template import inspect_template
from shim.sandbox.sandbox import (InvalidSandboxId, list_sandboxes, read_boot_path,
                                  sandbox_dir)


def _vmm_state(config: GraftConfig, sandbox_id: str) -> str:
    try:
        pid = int((sandbox_dir(config, sandbox_id) / "vmm.pid").read_text())
    except (OSError, ValueError):
        return "no VMM recorded"
    return f"VMM pid {pid}" if psutil.pid_exists(pid) else f"VMM pid {pid} gone"


def sandbox_lines(config: GraftConfig) -> list[str]:
    ids = list_sandboxes(config)
    lines = [f"sandboxes: {len(ids)}"]
    for sandbox_id in ids:
        try:
            boot = read_boot_path(config, sandbox_id)
        except InvalidSandboxId:
            lines.append(f"  {sandbox_id!r}: not a sandbox directory")
            continue
        if boot is None:
            lines.append(f"  {sandbox_id}: starting (no boot record yet)")
            continue
        how = "restored" if boot.get("restored") else "cold boot"
        age = time.time() - float(boot.get("created_at", time.time()))
        lines.append(f"  {sandbox_id}: {how} ({boot.get('reason', '?')}) in "
                     f"{boot.get('boot_seconds', '?')}s, up {age:.0f}s, "
                     f"{_vmm_state(config, sandbox_id)}")
    return lines


def run_status(config: GraftConfig, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    lines = sandbox_lines(config)
    lines += describe_status(inspect_template(config))
    lines.append(f"  templates enabled: {'yes' if config.enable_template else 'no'} "
                 f"([factory] enable_template)")
    print("\n".join(lines), file=out)
    return 0

"""`graft status [--json]` and `graft metrics`: the sandboxes on this host, how
each VM was booted (restored from the template or cold, and why), its size,
and the template's state."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from typing import Any, TextIO

import psutil

from shim.config import GraftConfig
from shim.factory.cli import describe_status
from shim.factory.template import TemplateStatus, inspect_template
from shim.sandbox import boot_metrics
from shim.sandbox.sandbox import (InvalidSandboxId, list_sandboxes, read_boot_path,
                                  sandbox_dir)


def _vmm_pid(config: GraftConfig, sandbox_id: str) -> int | None:
    try:
        return int((sandbox_dir(config, sandbox_id) / "vmm.pid").read_text())
    except (OSError, ValueError):
        return None


def _vmm_state(pid: int | None) -> str:
    if pid is None:
        return "no VMM recorded"
    return f"VMM pid {pid}" if psutil.pid_exists(pid) else f"VMM pid {pid} gone"


def _boot_records(config: GraftConfig) -> list[tuple[str, dict[str, Any] | None]]:
    """(id, boot record or None while starting); skips names that are not sandbox ids."""
    out = []
    for sandbox_id in list_sandboxes(config):
        try:
            out.append((sandbox_id, read_boot_path(config, sandbox_id)))
        except InvalidSandboxId:
            continue
    return out


def sandbox_lines(config: GraftConfig) -> list[str]:
    ids = list_sandboxes(config)
    records = dict(_boot_records(config))
    lines = [f"sandboxes: {len(ids)}"]
    for sandbox_id in ids:
        if sandbox_id not in records:
            lines.append(f"  {sandbox_id!r}: not a sandbox directory")
            continue
        boot = records[sandbox_id]
        if boot is None:
            lines.append(f"  {sandbox_id}: starting (no boot record yet)")
            continue
        how = "restored" if boot.get("restored") else "cold boot"
        age = time.time() - float(boot.get("created_at", time.time()))
        size = (f", {boot['vcpus']} vCPU {boot['memory_mib']} MiB"
                if "vcpus" in boot and "memory_mib" in boot else "")
        lines.append(f"  {sandbox_id}: {how} ({boot.get('reason', '?')}) in "
                     f"{boot.get('boot_seconds', '?')}s{size}, up {age:.0f}s, "
                     f"{_vmm_state(_vmm_pid(config, sandbox_id))}")
        lines += [f"    not met: {note}" for note in boot.get("shortfalls") or ()]
    return lines


def _template_json(status: TemplateStatus) -> dict[str, Any]:
    meta = status.metadata
    return {
        "root": str(status.root),
        "directory": str(status.directory) if status.directory else None,
        "usable": status.usable,
        "problems": list(status.problems),
        "metadata": asdict(meta) if meta is not None else None,
    }


def status_json(config: GraftConfig) -> dict[str, Any]:
    sandboxes = []
    for sandbox_id, boot in _boot_records(config):
        pid = _vmm_pid(config, sandbox_id)
        entry: dict[str, Any] = {"id": sandbox_id, "vmm_pid": pid,
                                 "vmm_running": pid is not None and psutil.pid_exists(pid)}
        if boot is None:
            entry["boot_path"] = None  # still starting
        else:
            entry["boot_path"] = boot_metrics.boot_path_label(boot)
            entry.update({k: v for k, v in boot.items() if k != "restored"})
        sandboxes.append(entry)
    return {"sandboxes": sandboxes, "template": _template_json(inspect_template(config)),
            "templates_enabled": config.enable_template}


def run_status(config: GraftConfig, out: TextIO | None = None, as_json: bool = False) -> int:
    out = out or sys.stdout
    if as_json:
        json.dump(status_json(config), out, indent=2)
        out.write("\n")
        return 0
    lines = sandbox_lines(config)
    lines += describe_status(inspect_template(config))
    lines.append(f"  templates enabled: {'yes' if config.enable_template else 'no'} "
                 f"([factory] enable_template)")
    print("\n".join(lines), file=out)
    return 0


def run_metrics(config: GraftConfig, out: TextIO | None = None) -> int:
    """Prometheus text exposition of every sandbox's boot record, plus the
    template's usability."""
    out = out or sys.stdout
    records = [(sandbox_id, boot) for sandbox_id, boot in _boot_records(config) if boot]
    out.write(boot_metrics.render(records))
    usable = 1 if inspect_template(config).usable else 0
    out.write("# HELP graft_template_usable 1 when the template can be restored now.\n"
              "# TYPE graft_template_usable gauge\n"
              f"graft_template_usable {usable}\n")
    return 0

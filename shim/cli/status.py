"""`graft status [--json]` and `graft metrics`: the sandboxes on this host, how
each VM was booted (restored from the template or cold, and why), its size,
and the template's state."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from typing import Any, TextIO

from shim.config import GraftConfig
from shim.factory.cli import describe_status
from shim.factory.template import TemplateStatus, inspect_template
from shim.sandbox import boot_metrics
from shim.sandbox.warm import waiting_vms
from shim.sandbox.state import (BOOT_PATH_FILE, TIMELINE_FILE, SandboxEntry, list_sandboxes,
                                read_record, vmm_pid)

_Record = tuple[SandboxEntry, "dict[str, Any] | None"]


def _vmm_state(pid: int | None) -> str:
    return f"VMM pid {pid}" if pid is not None else "no VMM running"


def _boot_records(config: GraftConfig) -> list[_Record]:
    """(entry, boot record or None while starting) for every sandbox directory."""
    return [(entry, read_record(config, entry.ref, BOOT_PATH_FILE) if entry.ref else None)
            for entry in list_sandboxes(config)]


def sandbox_lines(config: GraftConfig) -> list[str]:
    records = _boot_records(config)
    lines = [f"sandboxes: {len(records)}"]
    for entry, boot in records:
        if entry.ref is None:
            lines.append(f"  {entry.directory.name}: no owner record (starting, or not graft's)")
            continue
        name = entry.ref.describe()
        if boot is None:
            lines.append(f"  {name}: starting (no boot record yet)")
            continue
        how = "restored" if boot.get("restored") else "cold boot"
        age = time.time() - float(boot.get("created_at", time.time()))
        size = (f", {boot['vcpus']} vCPU {boot['memory_mib']} MiB"
                if "vcpus" in boot and "memory_mib" in boot else "")
        lines.append(f"  {name}: {how} ({boot.get('reason', '?')}) in "
                     f"{boot.get('boot_seconds', '?')}s{size}, up {age:.0f}s, "
                     f"{_vmm_state(vmm_pid(config, entry.ref))}")
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
    for entry, boot in _boot_records(config):
        if entry.ref is None:
            continue
        pid = vmm_pid(config, entry.ref)
        item: dict[str, Any] = {"id": entry.ref.id, "namespace": entry.ref.namespace,
                                "directory": str(entry.directory), "vmm_pid": pid,
                                "vmm_running": pid is not None,
                                "timeline": read_record(config, entry.ref, TIMELINE_FILE) or []}
        if boot is None:
            item["boot_path"] = None  # still starting
        else:
            item["boot_path"] = boot_metrics.boot_path_label(boot)
            item.update({k: v for k, v in boot.items() if k != "restored"})
        sandboxes.append(item)
    return {"sandboxes": sandboxes, "template": _template_json(inspect_template(config)),
            "templates_enabled": config.enable_template,
            "warm_pool": {"size": config.get("factory", "cache_size"),
                          "waiting": waiting_vms(config)}}


def run_status(config: GraftConfig, out: TextIO | None = None, as_json: bool = False) -> int:
    out = out or sys.stdout
    if as_json:
        json.dump(status_json(config), out, indent=2)
        out.write("\n")
        return 0
    lines = sandbox_lines(config)
    lines += describe_status(inspect_template(config))
    lines.append(f"  warm pool: {waiting_vms(config)} of {config.get('factory', 'cache_size')} "
                 f"VMs waiting ([factory] cache_size)")
    lines.append(f"  templates enabled: {'yes' if config.enable_template else 'no'} "
                 f"([factory] enable_template)")
    print("\n".join(lines), file=out)
    return 0


def run_metrics(config: GraftConfig, out: TextIO | None = None) -> int:
    """Prometheus text exposition of every sandbox's boot record, plus the
    template's usability."""
    out = out or sys.stdout
    records = [(entry.ref.id, boot) for entry, boot in _boot_records(config)
               if boot and entry.ref is not None]
    out.write(boot_metrics.render(records))
    usable = 1 if inspect_template(config).usable else 0
    out.write("# HELP graft_template_usable 1 when the template can be restored now.\n"
              "# TYPE graft_template_usable gauge\n"
              f"graft_template_usable {usable}\n")
    return 0

"""How each sandbox VM was booted, as Prometheus text exposition.

Every sandbox writes ``<state_dir>/sandboxes/<id>/metrics.prom`` next to its
``boot_path.json`` (a node-exporter textfile collector can pick the files
up); ``graft metrics`` prints all sandboxes at once. Families:

    graft_sandbox_boot_info{sandbox, path="restored"|"cold", reason} 1
    graft_sandbox_boot_seconds{sandbox, path}   VMM launch → guest agent answering
    graft_sandbox_vcpus{sandbox}                vCPUs online after sizing to the pod
    graft_sandbox_memory_bytes{sandbox}         guest RAM
    graft_sandbox_created_timestamp_seconds{sandbox}
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MIB = 1 << 20

_FAMILIES: tuple[tuple[str, str], ...] = (
    ("graft_sandbox_boot_info",
     "How the sandbox VM was booted: path is restored (from the template) or cold."),
    ("graft_sandbox_boot_seconds", "Seconds from VMM launch until the guest agent answered."),
    ("graft_sandbox_vcpus", "vCPUs online in the guest after sizing to the pod's request."),
    ("graft_sandbox_memory_bytes", "Guest RAM in bytes."),
    ("graft_sandbox_created_timestamp_seconds", "When the sandbox VM was up (unix time)."),
)


def boot_path_label(record: Mapping[str, Any]) -> str:
    return "restored" if record.get("restored") else "cold"


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: object) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _samples(sandbox_id: str, record: Mapping[str, Any]) -> dict[str, list[str]]:
    path = boot_path_label(record)
    out: dict[str, list[str]] = {name: [] for name, _ in _FAMILIES}
    out["graft_sandbox_boot_info"].append(
        _labels(sandbox=sandbox_id, path=path, reason=record.get("reason", "")) + " 1")
    values = {
        "graft_sandbox_boot_seconds": (record.get("boot_seconds"), {"path": path}),
        "graft_sandbox_vcpus": (record.get("vcpus"), {}),
        "graft_sandbox_memory_bytes": (
            record["memory_mib"] * MIB if isinstance(record.get("memory_mib"), int) else None,
            {}),
        "graft_sandbox_created_timestamp_seconds": (record.get("created_at"), {}),
    }
    for name, (value, extra) in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name].append(f"{_labels(sandbox=sandbox_id, **extra)} {value}")
    return out


def render(records: Iterable[tuple[str, Mapping[str, Any]]]) -> str:
    """One exposition for many sandboxes (each family's HELP/TYPE once)."""
    merged: dict[str, list[str]] = {name: [] for name, _ in _FAMILIES}
    for sandbox_id, record in records:
        for name, samples in _samples(sandbox_id, record).items():
            merged[name].extend(samples)
    lines = []
    for name, help_text in _FAMILIES:
        if merged[name]:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            lines += [name + sample for sample in merged[name]]
    return "\n".join(lines) + "\n" if lines else ""


def write(path: Path, sandbox_id: str, record: Mapping[str, Any]) -> None:
    """Atomically (a scraper never reads half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render([(sandbox_id, record)]))
    os.replace(tmp, path)

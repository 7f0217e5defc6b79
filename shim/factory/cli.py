"""`graft factory init | status | destroy`.

Exit status: 0 on success; `status` exits 1 when no usable template exists
(so scripts can test for one).
"""
from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

from shim.config import GraftConfig

from . import tmpfs
from .build import MIB, destroy_template, init_template
from .template import TemplateStatus, inspect_template


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


def describe_status(status: TemplateStatus) -> list[str]:
    """Human lines for `graft factory status` and `graft status`."""
    lines = [f"template: {'usable' if status.usable else 'NOT usable'} "
             f"({status.directory or status.root})"]
    meta = status.metadata
    if meta is not None:
        lines += [
            f"  created: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(meta.created_at))}"
            f" ({_age(time.time() - meta.created_at)} ago)",
            f"  hypervisor: {meta.hypervisor.kind}, {meta.hypervisor.version}, "
            f"accelerator {meta.accelerator}",
            f"  memory: {meta.memory_bytes // MIB} MiB, vcpus {meta.identity.get('vcpus')}, "
            f"config sha256 {meta.identity_sha256[:12]}…",
            "  saved: " + ", ".join(f"{f.name} ({f.size} bytes)" for f in meta.files),
            "  clones open the memory file " + (
                "read-only" if meta.hypervisor.private_readonly_memory
                else "read-write, mapped privately (this QEMU cannot map it read-only)"),
        ]
    if tmpfs.mounted_fstype(status.root) == "tmpfs":
        lines.append(f"  tmpfs: {tmpfs.used_bytes(status.root) // MIB} of "
                     f"{tmpfs.size_bytes(status.root) // MIB} MiB used")
    lines += [f"  why not usable: {problem}" for problem in status.problems]
    return lines


def run_factory(config: GraftConfig, action: str, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if action == "init":
        result = asyncio.run(init_template(config))
        if not result.built:
            print(f"template already present: {result.template.directory}", file=out)
        else:
            for why in result.replaced:
                print(f"replaced the previous template: {why}", file=out)
            print(f"template built in {result.seconds:.1f}s: {result.template.directory}",
                  file=out)
        return 0
    if action == "status":
        status = inspect_template(config)
        print("\n".join(describe_status(status)), file=out)
        if not config.enable_template:
            print("  note: [factory] enable_template is false: sandboxes cold boot", file=out)
        return 0 if status.usable else 1
    if action == "destroy":
        done = destroy_template(config)
        print("\n".join(done) if done else f"no template at {config.template_path}", file=out)
        return 0
    raise ValueError(f"unknown factory action {action!r} (init, status, destroy)")

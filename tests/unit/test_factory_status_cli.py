"""`graft status`: each sandbox's boot path as recorded by the sandbox, plus
the template's state."""
from __future__ import annotations

import io
import os
import time
from pathlib import Path

from shim.cli.status import run_status
from shim.config import parse_config

from fake_sandboxes import fake_sandbox


def test_lists_boot_paths_and_template_state(tmp_path: Path) -> None:
    config = parse_config({"runtime": {"state_dir": str(tmp_path)},
                           "guest": {"image_dir": str(tmp_path / "no-image")},
                           "factory": {"template_path": str(tmp_path / "tpl")}})
    fake_sandbox(config, "pod-a", {
        "restored": True, "reason": "template /run/graft/template/tpl-1",
        "boot_seconds": 0.14, "created_at": time.time() - 5}, vmm_pid=os.getpid())
    fake_sandbox(config, "pod-b", {
        "restored": False, "reason": "config mismatch: memory_mib (template 256, now 512)",
        "boot_seconds": 3.1, "created_at": time.time()})
    fake_sandbox(config, "pod-c")
    out = io.StringIO()
    assert run_status(config, out) == 0
    text = out.getvalue()
    assert "sandboxes: 3" in text
    assert ("pod-a: restored (template /run/graft/template/tpl-1) in 0.14s" in text
            and f"VMM pid {os.getpid()}" in text)
    assert "pod-b: cold boot (config mismatch: memory_mib (template 256, now 512)) in 3.1s" \
        in text
    assert "pod-c: starting" in text
    assert "template: NOT usable" in text and "no template at" in text
    assert "templates enabled: no" in text

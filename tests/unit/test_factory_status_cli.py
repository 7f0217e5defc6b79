"""`graft status`: each sandbox's boot path as recorded by the sandbox, plus
the template's state."""
from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

from shim.cli.status import run_status
from shim.config import parse_config


def test_lists_boot_paths_and_template_state(tmp_path: Path) -> None:
    config = parse_config({"runtime": {"state_dir": str(tmp_path)},
                           "guest": {"image_dir": str(tmp_path / "no-image")},
                           "factory": {"template_path": str(tmp_path / "tpl")}})
    sandboxes = tmp_path / "sandboxes"
    restored, cold, starting = sandboxes / "pod-a", sandboxes / "pod-b", sandboxes / "pod-c"
    for d in (restored, cold, starting):
        d.mkdir(parents=True)
    (restored / "boot_path.json").write_text(json.dumps({
        "restored": True, "reason": "template /run/graft/template/tpl-1",
        "boot_seconds": 0.14, "created_at": time.time() - 5}))
    (restored / "vmm.pid").write_text(str(os.getpid()))
    (cold / "boot_path.json").write_text(json.dumps({
        "restored": False, "reason": "config mismatch: memory_mib (template 256, now 512)",
        "boot_seconds": 3.1, "created_at": time.time()}))
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

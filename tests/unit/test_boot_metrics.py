"""Boot path per sandbox as Prometheus text, `graft status --json`, `graft metrics`."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

from shim.cli.status import run_metrics, run_status
from shim.config import parse_config
from shim.sandbox import boot_metrics

from fake_sandboxes import fake_sandbox

RESTORED = {"restored": True, "reason": "template /run/t/tpl-1", "boot_seconds": 0.25,
            "created_at": 1764320000.5, "vcpus": 2, "memory_mib": 256, "shortfalls": []}
COLD = {"restored": False, "reason": 'no template at /run/t (run "graft factory init")\nx\\y',
        "boot_seconds": 6.1, "created_at": 1764320001.0, "vcpus": 1, "memory_mib": 256,
        "shortfalls": ["pod asks for 512 MiB of memory, the VM has 256 MiB"]}


def test_render_one_family_header_many_sandboxes() -> None:
    text = boot_metrics.render([("pod-a", RESTORED), ("pod-b", COLD)])
    lines = text.splitlines()
    assert lines.count("# TYPE graft_sandbox_boot_info gauge") == 1
    assert 'graft_sandbox_boot_info{sandbox="pod-a",path="restored",' \
           'reason="template /run/t/tpl-1"} 1' in lines
    # label values escaped: quote, newline, backslash
    assert 'graft_sandbox_boot_info{sandbox="pod-b",path="cold",reason="no template at ' \
           '/run/t (run \\"graft factory init\\")\\nx\\\\y"} 1' in lines
    assert 'graft_sandbox_boot_seconds{sandbox="pod-b",path="cold"} 6.1' in lines
    assert 'graft_sandbox_vcpus{sandbox="pod-a"} 2' in lines
    assert f'graft_sandbox_memory_bytes{{sandbox="pod-a"}} {256 << 20}' in lines
    assert 'graft_sandbox_created_timestamp_seconds{sandbox="pod-a"} 1764320000.5' in lines


def test_render_nothing() -> None:
    assert boot_metrics.render([]) == ""


def test_old_records_without_size_still_render() -> None:
    old = {"restored": True, "reason": "r", "boot_seconds": 0.1, "created_at": 1.0}
    text = boot_metrics.render([("p", old)])
    assert "graft_sandbox_vcpus" not in text and 'path="restored"' in text


def test_write_is_atomic_and_complete(tmp_path: Path) -> None:
    target = tmp_path / "metrics.prom"
    boot_metrics.write(target, "pod-a", RESTORED)
    assert target.read_text() == boot_metrics.render([("pod-a", RESTORED)])
    assert os.listdir(tmp_path) == ["metrics.prom"]


def _config(tmp_path: Path):
    config = parse_config({"runtime": {"state_dir": str(tmp_path)},
                           "guest": {"image_dir": str(tmp_path / "no-image")},
                           "factory": {"template_path": str(tmp_path / "tpl"),
                                       "enable_template": True}})
    fake_sandbox(config, "pod-a", RESTORED, vmm_pid=os.getpid())
    fake_sandbox(config, "pod-b", COLD)
    fake_sandbox(config, "pod-c")  # starting: no record yet
    return config


def test_status_json(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run_status(_config(tmp_path), out, as_json=True) == 0
    data = json.loads(out.getvalue())
    by_id = {s["id"]: s for s in data["sandboxes"]}
    assert by_id["pod-a"]["boot_path"] == "restored"
    assert by_id["pod-a"]["vmm_pid"] == os.getpid() and by_id["pod-a"]["vmm_running"]
    assert by_id["pod-a"]["vcpus"] == 2 and by_id["pod-a"]["boot_seconds"] == 0.25
    assert by_id["pod-b"]["boot_path"] == "cold" and by_id["pod-b"]["reason"] == COLD["reason"]
    assert by_id["pod-b"]["vmm_pid"] is None and not by_id["pod-b"]["vmm_running"]
    assert by_id["pod-c"]["boot_path"] is None
    assert data["templates_enabled"] is True
    assert data["template"]["usable"] is False and data["template"]["problems"]


def test_status_text_shows_size_and_shortfalls(tmp_path: Path) -> None:
    out = io.StringIO()
    run_status(_config(tmp_path), out)
    text = out.getvalue()
    assert "pod-a: restored (template /run/t/tpl-1) in 0.25s, 2 vCPU 256 MiB" in text
    assert "not met: pod asks for 512 MiB of memory" in text


def test_metrics_command(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run_metrics(_config(tmp_path), out) == 0
    text = out.getvalue()
    assert 'graft_sandbox_boot_info{sandbox="pod-a",path="restored"' in text
    assert 'sandbox="pod-c"' not in text
    assert text.endswith("graft_template_usable 0\n")

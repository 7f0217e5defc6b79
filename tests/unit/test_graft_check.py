"""`graft check`: one line per readiness item, exit 1 when something required is missing;
a bad configuration is refused with the offending key named."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _graft(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shim.cli.graft_main", *argv],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def _config(tmp_path: Path, body: str) -> str:
    path = tmp_path / "graft.toml"
    path.write_text(body)
    return str(path)


def test_missing_guest_image_fails_the_check(tmp_path):
    done = _graft("--config", _config(tmp_path, f'[guest]\nimage_dir = "{tmp_path}/none"\n'),
                  "check")
    lines = dict(line.split("] ", 1)[1].split(":", 1) for line in done.stdout.splitlines())
    assert done.returncode == 1
    assert {"hypervisor", "accelerator", "guest image", "root", "containerd"} <= set(lines)
    assert f"[FAIL] guest image: guest image file {tmp_path}/none/vmlinux is missing" \
        in done.stdout


def test_present_guest_image_passes_that_item(tmp_path):
    image = tmp_path / "guest"
    image.mkdir()
    for name in ("vmlinux", "initrd.img"):
        (image / name).write_bytes(b"\0")
    done = _graft("--config", _config(tmp_path, f'[guest]\nimage_dir = "{image}"\n'), "check")
    assert f"[ok  ] guest image: {image}/vmlinux, {image}/initrd.img" in done.stdout
    required = [line for line in done.stdout.splitlines() if line.startswith("[FAIL]")]
    assert done.returncode == (1 if required else 0)


def test_bad_config_names_the_key(tmp_path):
    done = _graft("--config", _config(tmp_path, "[hypervisor]\nmemory_mib = \"lots\"\n"), "check")
    assert done.returncode != 0
    assert "[hypervisor] memory_mib" in done.stderr

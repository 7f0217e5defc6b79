"""`[runtime] log_level` decides what the shim writes to the bundle's log fifo; -debug forces
debug."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shim.shim_manager.logging_setup import log_level

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, level: str) -> str:
    path = tmp_path / f"graft-{level}.toml"
    path.write_text(f'[runtime]\nlog_level = "{level}"\nstate_dir = "{tmp_path}/state"\n')
    return str(path)


@pytest.mark.parametrize("level, expected", [("debug", logging.DEBUG), ("info", logging.INFO),
                                             ("warning", logging.WARNING),
                                             ("error", logging.ERROR)])
def test_config_level_is_used(tmp_path, level, expected):
    assert log_level(_config(tmp_path, level), debug=False) == expected


def test_debug_flag_wins(tmp_path):
    assert log_level(_config(tmp_path, "error"), debug=True) == logging.DEBUG


def test_unreadable_config_logs_at_info(tmp_path):
    assert log_level(str(tmp_path / "missing.toml"), debug=False) == logging.INFO
    bad = tmp_path / "bad.toml"
    bad.write_text('[runtime]\nlog_level = "loud"\n')
    assert log_level(str(bad), debug=False) == logging.INFO


@pytest.mark.skipif(os.geteuid() != 0, reason="the shim socket lives in /run/containerd/s")
def test_daemon_logs_at_the_configured_level(tmp_path):
    """Two real `start`s (no -debug): "info" logs the daemon's INFO lines, "warning" does not."""
    runs = {}
    for level in ("info", "warning"):
        bundle = tmp_path / level
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.0.2"}))
        fifo = bundle / "log"
        os.mkfifo(fifo)
        reader = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # as containerd opens it
        env = dict(os.environ, PYTHONPATH=str(ROOT), GRAFT_CONFIG=_config(tmp_path, level))
        done = subprocess.run(
            [sys.executable, "-m", "shim.cli.shim_main", "-namespace", "unit", "-address",
             str(tmp_path / "c.sock"), "-publish-binary", "/bin/false", "-id", f"lvl-{level}",
             "start"], capture_output=True, cwd=bundle, env=env, timeout=30)
        assert done.returncode == 0, done.stderr
        runs[level] = (reader, Path(done.stdout.decode().removeprefix("unix://")))
    # Nobody connects: each daemon exits by itself after its idle period (logged at INFO).
    deadline = time.monotonic() + 30
    while any(sock.exists() for _, sock in runs.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    logs = {}
    for level, (reader, sock) in runs.items():
        assert not sock.exists()
        try:
            logs[level] = os.read(reader, 1 << 20).decode()
        except BlockingIOError:
            logs[level] = ""
        os.close(reader)
    assert "level=INFO" in logs["info"] and "serving" in logs["info"]
    assert "level=INFO" not in logs["warning"] and "level=DEBUG" not in logs["warning"]

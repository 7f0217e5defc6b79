"""shim/failpoints.py: armed only by config key AND annotation; raise/exit/kill at a step."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shim import failpoints
from shim.errors import InvalidArgument

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _disarmed():
    failpoints.disarm()
    yield
    failpoints.disarm()


def _config(tmp_path: Path, enabled: bool) -> str:
    path = tmp_path / "graft.toml"
    path.write_text(f"[testing]\nfailpoints = {str(enabled).lower()}\n")
    return str(path)


def _spec(value: str) -> dict:
    return {"annotations": {failpoints.ANNOTATION: value}}


def test_parse_plans_and_rejects_unknown_names():
    assert failpoints.parse("vm-restored=kill, rootfs-bound=raise") == {
        "vm-restored": "kill", "rootfs-bound": "raise"}
    for bad in ("vm-restored", "no-such-step=raise", "vm-restored=explode"):
        with pytest.raises(InvalidArgument, match=failpoints.ANNOTATION):
            failpoints.parse(bad)


def test_annotation_without_the_config_key_does_nothing(tmp_path):
    failpoints.arm(_config(tmp_path, False), _spec("sandbox-created=raise"))
    failpoints.reach(failpoints.SANDBOX_CREATED)  # no error: not armed


def test_config_key_without_annotation_does_nothing(tmp_path):
    failpoints.arm(_config(tmp_path, True), {"annotations": {"other": "x"}})
    for step in failpoints.STEPS:
        failpoints.reach(step)


def test_raise_fires_at_its_step_only(tmp_path):
    failpoints.arm(_config(tmp_path, True), _spec("vm-restored=raise"))
    failpoints.reach(failpoints.VM_LAUNCHED)
    with pytest.raises(failpoints.FailpointError, match="failpoint vm-restored"):
        failpoints.reach(failpoints.VM_RESTORED)


def test_a_typo_is_an_error_when_enabled(tmp_path):
    with pytest.raises(InvalidArgument):
        failpoints.arm(_config(tmp_path, True), _spec("vm-restord=raise"))


@pytest.mark.parametrize("action, status", [("exit", failpoints.EXIT_STATUS),
                                            ("kill", -signal.SIGKILL)])
def test_exit_and_kill_end_the_process(tmp_path, action, status):
    script = textwrap.dedent(f"""
        from shim import failpoints
        failpoints.arm({_config(tmp_path, True)!r}, {{"annotations": {{
            failpoints.ANNOTATION: "nic-attached={action}"}}}})
        failpoints.reach(failpoints.NIC_ATTACHED)
        print("survived")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == status, done.stderr
    assert "survived" not in done.stdout


def test_each_task_create_rearms_from_its_own_spec(tmp_path):
    config = _config(tmp_path, True)
    failpoints.arm(config, _spec("rootfs-bound=raise"))
    failpoints.arm(config, {"annotations": {}})  # the next container has no annotation
    failpoints.reach(failpoints.ROOTFS_BOUND)

"""Unit tests of sandbox helpers that need no VM."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from shim.config import parse_config
from shim.errors import (AlreadyExists, FailedPrecondition, InvalidArgument, NotFound,
                         describe_failure, to_ttrpc_error)
from shim.oci import default_spec
from shim import mounts
from shim.sandbox.sandbox import InvalidSandboxId, cleanup_sandbox_leftovers, sandbox_dir
from shim.ttrpc import Code, TtrpcError


def test_mountinfo_unescape() -> None:
    assert mounts._unescape(r"/a\040b\134c") == "/a b\\c"
    assert mounts._unescape("/plain") == "/plain"
    assert mounts._unescape("/trailing\\04") == "/trailing\\04"


@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
def test_bind_mount_and_unmount_all(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    target = tmp_path / "dir with space" / "t"
    target.mkdir(parents=True)
    mounts.bind_mount(src, target)
    try:
        assert (target / "f").read_text() == "x"
        assert mounts.mounts_under(tmp_path) == [target]
    finally:
        mounts.unmount_all_under(tmp_path)
    assert mounts.mounts_under(tmp_path) == []
    mounts.unmount(target)  # not mounted any more: not an error


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "-x", "x" * 200, "a b"])
def test_sandbox_ids_are_validated(bad: str) -> None:
    with pytest.raises(InvalidSandboxId):
        sandbox_dir(parse_config({}), bad)


def test_cleanup_of_unknown_sandbox_is_a_no_op(tmp_path: Path) -> None:
    cfg = parse_config({"runtime": {"state_dir": str(tmp_path)}})
    cleanup_sandbox_leftovers(cfg, "never-existed")
    assert not (tmp_path / "sandboxes").exists()


def test_cleanup_does_not_kill_unrelated_pid(tmp_path: Path) -> None:
    cfg = parse_config({"runtime": {"state_dir": str(tmp_path)}})
    run_dir = tmp_path / "sandboxes" / "sb1"
    run_dir.mkdir(parents=True)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (run_dir / "vmm.pid").write_text(str(bystander.pid))
        cleanup_sandbox_leftovers(cfg, "sb1")
        assert bystander.poll() is None  # its cmdline does not name the run dir
        assert not run_dir.exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_default_spec_is_valid_json_without_network_namespace() -> None:
    spec = json.loads(json.dumps(default_spec(["echo", "hi"], terminal=True)))
    assert spec["process"]["args"] == ["echo", "hi"]
    assert spec["process"]["terminal"] is True
    assert "TERM=xterm" in spec["process"]["env"]
    assert "network" not in {ns["type"] for ns in spec["linux"]["namespaces"]}


@pytest.mark.parametrize("exc, code", [
    (NotFound("x"), Code.NOT_FOUND), (AlreadyExists("x"), Code.ALREADY_EXISTS),
    (InvalidArgument("x"), Code.INVALID_ARGUMENT),
    (FailedPrecondition("x"), Code.FAILED_PRECONDITION),
    (FileNotFoundError("x"), Code.NOT_FOUND), (ValueError("x"), Code.INVALID_ARGUMENT),
    (TimeoutError(), Code.DEADLINE_EXCEEDED), (RuntimeError("boom"), Code.UNKNOWN),
])
def test_error_mapping(exc: Exception, code: Code) -> None:
    assert to_ttrpc_error(exc).code == code


def test_describe_failure() -> None:
    assert describe_failure(TtrpcError(Code.NOT_FOUND, "no c1")) == "guest agent: NOT_FOUND: no c1"
    assert describe_failure(FileNotFoundError("gone")) == "gone"
    assert describe_failure(KeyError("bug")) is None  # bugs keep their traceback

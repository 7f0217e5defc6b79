"""Unit tests of sandbox helpers that need no VM."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import psutil
import pytest

from shim.config import parse_config
from shim.errors import (AlreadyExists, FailedPrecondition, InvalidArgument, NotFound,
                         describe_failure, to_ttrpc_error)
from shim.oci import default_spec
from shim import mounts
from shim.sandbox import state
from shim.sandbox.state import InvalidSandboxId, SandboxRef, cleanup_leftovers, run_dir
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


@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
def test_read_only_confined_bind_refuses_writes_on_the_host(tmp_path: Path) -> None:
    """A volume the pod mounts `ro` is read-only on the host side of the share too (the guest's
    own ro is not enough), and no share mount honours setuid bits or device nodes."""
    src = tmp_path / "volume"
    src.mkdir()
    (src / "secret").write_text("s3cret")
    target = tmp_path / "share" / "0"
    target.mkdir(parents=True)
    mounts.bind_mount(src, target, readonly=True, confined=True)
    try:
        flags = os.statvfs(target).f_flag
        assert flags & os.ST_RDONLY and flags & os.ST_NOSUID and flags & os.ST_NODEV
        with pytest.raises(OSError) as raised:
            (target / "secret").write_text("poisoned")
        assert raised.value.errno == 30  # EROFS
        assert (src / "secret").read_text() == "s3cret"
        assert not os.statvfs(src).f_flag & os.ST_RDONLY  # the source itself is untouched
    finally:
        mounts.unmount_all_under(tmp_path)


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "-x", "x" * 77, "a b", "..", "a..b"])
def test_sandbox_ids_are_validated(bad: str) -> None:
    with pytest.raises(InvalidSandboxId):
        SandboxRef(bad)


def test_same_id_in_two_namespaces_or_containerds_gets_two_directories() -> None:
    cfg = parse_config({})
    dirs = {run_dir(cfg, SandboxRef("X", ns, owner))
            for ns in ("a", "b") for owner in ("/run/c1.sock", "/run/c2.sock")}
    assert len(dirs) == 4


def test_longest_id_keeps_socket_paths_short() -> None:
    cfg = parse_config({"runtime": {"state_dir": "/" + "s" * 62}})
    longest = run_dir(cfg, SandboxRef("x" * 76, "k8s.io", "/run/containerd/containerd.sock"))
    assert len(str(longest / "control.sock").encode()) <= 107


def test_cleanup_of_unknown_sandbox_is_a_no_op(tmp_path: Path) -> None:
    cfg = parse_config({"runtime": {"state_dir": str(tmp_path)}})
    cleanup_leftovers(cfg, SandboxRef("never-existed"))
    assert not (tmp_path / "sandboxes").exists()


def _fake_run_dir(cfg, ref: SandboxRef, vmm_pid: int) -> Path:
    directory = run_dir(cfg, ref)
    directory.mkdir(parents=True)
    state.write_owner(directory, ref)
    state.record_vmm(directory, vmm_pid)
    return directory


def test_cleanup_kills_the_recorded_vmm(tmp_path: Path) -> None:
    cfg = parse_config({"runtime": {"state_dir": str(tmp_path)}})
    ref = SandboxRef("sb1", "k8s.io", "/run/c.sock")
    vmm = subprocess.Popen(["sleep", "60"])
    try:
        directory = _fake_run_dir(cfg, ref, vmm.pid)
        cleanup_leftovers(cfg, ref)
        assert not psutil.pid_exists(vmm.pid)  # killed and reaped (it was our child)
        assert not directory.exists()
    finally:
        vmm.kill()
        vmm.wait()


def test_cleanup_does_not_kill_a_process_that_reused_the_pid(tmp_path: Path) -> None:
    cfg = parse_config({"runtime": {"state_dir": str(tmp_path)}})
    ref = SandboxRef("sb1")
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        directory = _fake_run_dir(cfg, ref, bystander.pid)
        record = json.loads((directory / state.VMM_FILE).read_text())
        record["started"] -= 100  # the recorded VMM started long before this process
        (directory / state.VMM_FILE).write_text(json.dumps(record))
        cleanup_leftovers(cfg, ref)
        assert bystander.poll() is None
        assert not directory.exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_cleanup_leaves_a_directory_recorded_for_another_owner(tmp_path: Path) -> None:
    cfg = parse_config({"runtime": {"state_dir": str(tmp_path)}})
    mine, theirs = SandboxRef("X", "a"), SandboxRef("X", "b")
    other = subprocess.Popen(["sleep", "60"])
    try:
        directory = run_dir(cfg, mine)
        directory.mkdir(parents=True)
        state.write_owner(directory, theirs)  # as if the digest collided
        state.record_vmm(directory, other.pid)
        cleanup_leftovers(cfg, mine)
        assert other.poll() is None and directory.exists()
    finally:
        other.kill()
        other.wait()


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

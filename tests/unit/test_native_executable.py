"""graft_agent/native/executable.py: the $PATH search walks each directory prefix once, yet
finds what a plain stat of every candidate in turn finds (crun's way), on real trees."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from graft_agent.native.executable import find_executable


def plain_search(name: str, path_env: str, cwd: str) -> str | None:
    """One stat per candidate, nothing remembered: what the search must agree with."""
    if name.startswith(".") or (not name.startswith("/") and "/" in name):
        name = f"{cwd.rstrip('/')}/{name}"
    candidates = [name] if name.startswith("/") else [f"{d or '.'}/{name}" for d in path_env.split(":")]
    for candidate in candidates:
        try:
            mode = os.stat(candidate).st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode) and mode & 0o111:
            return candidate
    return None


def executable(path: Path, mode: int = 0o755) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(mode)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    executable(tmp_path / "usr/bin/tool")
    executable(tmp_path / "usr/local/bin/noexec", mode=0o644)
    executable(tmp_path / "usr/bin/noexec")
    (tmp_path / "usr/local/sbin/dironly").mkdir(parents=True)
    executable(tmp_path / "opt/bin/dironly")
    (tmp_path / "bin").symlink_to("usr/bin")
    (tmp_path / "usr/bin/sh").symlink_to("tool")
    (tmp_path / "usr/bin/dangling").symlink_to("nowhere")
    (tmp_path / "afile").write_text("")
    return tmp_path


CASES = [
    ("tool", ["missing/sbin", "missing/bin", "usr/local/sbin", "usr/bin"]),   # prefix absent
    ("noexec", ["usr/local/bin", "usr/bin"]),        # a non-executable file is passed over
    ("dironly", ["usr/local/sbin", "opt/bin"]),      # so is a directory of that name
    ("sh", ["bin"]),                                 # symlinked directory and file
    ("tool", ["afile/bin", "afile", "usr/bin"]),     # a prefix that is a file
    ("tool", ["usr/../usr/bin"]),                    # dot-dot, resolved as the kernel does
    ("tool", ["usr//bin/"]),                         # doubled and trailing slashes
    ("dangling", ["usr/bin", "bin"]),                # found nowhere
    ("tool", []),
]


@pytest.mark.parametrize("name,dirs", CASES)
def test_the_search_finds_what_a_plain_stat_finds(tree: Path, name: str, dirs: list[str]) -> None:
    path_env = ":".join(f"{tree}/{d}" for d in dirs)
    expected = plain_search(name, path_env, "/")
    if expected is None:
        with pytest.raises(FileNotFoundError, match=f"`{name}` not found in \\$PATH"):
            find_executable(name, path_env, "/")
    else:
        assert find_executable(name, path_env, "/") == expected


def test_relative_entries_and_paths_are_taken_from_the_cwd(tree: Path, monkeypatch) -> None:
    monkeypatch.chdir(tree / "usr")
    assert find_executable("tool", f"{tree}/missing::bin", str(tree / "usr")) == "bin/tool"
    assert find_executable("./bin/tool", None, str(tree / "usr")) == f"{tree}/usr/./bin/tool"
    assert find_executable("bin/tool", None, str(tree / "usr")) == f"{tree}/usr/bin/tool"
    with pytest.raises(FileNotFoundError, match="not found or not executable"):
        find_executable("local/bin/noexec", None, str(tree / "usr"))


def open_fds() -> set[int]:
    """(Without the fd the listing itself used.)"""
    listed = [int(fd) for fd in os.listdir("/proc/self/fd")]
    return {fd for fd in listed if _is_open(fd)}


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_pins_are_kept_close_on_exec_or_closed(tree: Path) -> None:
    path_env = f"{tree}/missing/bin:{tree}/usr/local/bin:{tree}/usr/bin"
    before = open_fds()
    assert find_executable("tool", path_env, "/") == f"{tree}/usr/bin/tool"
    assert open_fds() == before
    pins: list[int] = []
    find_executable("tool", path_env, "/", pins=pins)
    try:
        assert set(pins) == open_fds() - before
        assert pins and all(os.get_inheritable(fd) is False for fd in pins)
        assert {os.readlink(f"/proc/self/fd/{fd}") for fd in pins} >= {str(tree / "usr/bin")}
    finally:
        for fd in pins:
            os.close(fd)

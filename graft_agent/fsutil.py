"""Small filesystem helpers (shutil would pull in bz2/lzma/fnmatch at import time)."""

from __future__ import annotations

import os


def which(name: str) -> str | None:
    if "/" in name:
        return name if os.access(name, os.X_OK) else None
    for directory in os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def remove_tree(path: str) -> None:
    """rm -rf that never follows symlinks out of the tree and ignores what is already gone."""
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return
    except NotADirectoryError:
        _unlink(path)
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            remove_tree(entry.path)
        else:
            _unlink(entry.path)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


def read_text(path: str, default: str = "") -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def write_raw(path: str, value: str) -> None:
    """One write(2) of `value` to an existing file (cgroup and /proc files: no io objects,
    so it is also cheap in a freshly forked child)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

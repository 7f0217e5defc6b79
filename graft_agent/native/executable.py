"""Finding a container's executable (in the child, after pivot_root), as crun does: a path
with a slash is taken as it is (relative to the cwd), a bare name is looked for in each $PATH
directory in turn, and the first runnable regular file wins.

With as few lookups as the filesystem allows: over 9p each path component costs a round trip
to the host and an unused dentry is dropped at once, so the directories on the way are held
open (their dentries pinned) while the search goes on, and a directory found missing rules
out every $PATH entry under it. The pins are close-on-exec fds the caller may keep until its
execve, whose own lookup then finds the directories cached.
"""

from __future__ import annotations

import os
import stat

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


def _runnable_mode(mode: int) -> bool:
    """What eaccess(X_OK) says to root (the child is still root when it looks): a regular
    file with any execute bit."""
    return stat.S_ISREG(mode) and bool(mode & 0o111)


def _runnable(path: str, dir_fd: int | None = None) -> bool:
    try:
        return _runnable_mode(os.stat(path, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


class _Directories:
    """Absolute directories opened component by component, each prefix once."""

    def __init__(self, pins: list[int]) -> None:
        self._pins = pins
        self._opened: dict[str, int | None] = {}   # "/usr", "/usr/bin"... → fd; None: absent

    def _pin(self, fd: int) -> int:
        self._pins.append(fd)
        return fd

    def open(self, directory: str) -> int | None:
        """An fd of `directory` (absolute), None if it is not a directory one can enter."""
        fd = self._opened.get("")
        if fd is None:
            fd = self._opened[""] = self._pin(os.open("/", _DIR_FLAGS))
        prefix = ""
        for part in directory.split("/"):
            if not part:
                continue
            prefix = f"{prefix}/{part}"
            if prefix in self._opened:
                fd = self._opened[prefix]
                if fd is None:
                    return None
                continue
            try:
                fd = self._pin(os.open(part, _DIR_FLAGS, dir_fd=fd))
            except (FileNotFoundError, NotADirectoryError):
                self._opened[prefix] = None   # so is everything under it
                return None
            except OSError:
                return None   # (not remembered: only absence rules out what is under it)
            self._opened[prefix] = fd
        return fd


def find_executable(name: str, path_env: str | None, cwd: str,
                    pins: list[int] | None = None) -> str:
    """The path to exec. Directory fds opened on the way go to `pins` (the caller closes
    them, or leaves them to close-on-exec); without `pins` they are closed here."""
    if name.startswith(".") or (not name.startswith("/") and "/" in name):
        name = f"{cwd.rstrip('/')}/{name}"
    if name.startswith("/"):
        if _runnable(name):
            return name
        raise FileNotFoundError(f"executable file `{name}` not found or not executable")
    held: list[int] = [] if pins is None else pins
    directories = _Directories(held)
    try:
        for directory in (path_env.split(":") if path_env is not None else []):
            candidate = f"{directory or '.'}/{name}"
            if not directory.startswith("/"):   # relative to the cwd: looked up as it is
                if _runnable(candidate):
                    return candidate
                continue
            fd = directories.open(directory)
            if fd is not None and _runnable(name, dir_fd=fd):
                return candidate
    finally:
        if pins is None:
            for fd in held:
                os.close(fd)
    raise FileNotFoundError(f"executable file `{name}` not found in $PATH")

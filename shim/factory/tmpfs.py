"""The tmpfs the template lives on (mount(2) via libc; needs root).

Guest RAM of the template is a file here: tmpfs keeps it in page cache so
clones map it without disk I/O, and the size limit bounds what a template
(plus clones still mapping an older, unlinked one) can pin.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from shim.mounts import MNT_DETACH, MS_NODEV, MS_NOSUID, MS_REMOUNT, _unescape, mount, umount2

_FLAGS = MS_NOSUID | MS_NODEV


def mounted_fstype(path: Path) -> str | None:
    """Filesystem type mounted exactly at *path* (the top one), else None."""
    target = os.path.realpath(path)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if _unescape(fields[4]) == target:
                found = fields[fields.index("-") + 1]
    return found


def _mount(target: Path, flags: int, data: str) -> None:
    mount("graft-template", target, "tmpfs", flags, data)


def mount_tmpfs(target: Path, size_bytes: int) -> None:
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    _mount(target, _FLAGS, f"size={size_bytes},mode=0700")


def resize_tmpfs(target: Path, size_bytes: int) -> None:
    _mount(target, MS_REMOUNT | _FLAGS, f"size={size_bytes},mode=0700")


def used_bytes(target: Path) -> int:
    st = os.statvfs(target)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def free_bytes(target: Path) -> int:
    st = os.statvfs(target)
    return st.f_bavail * st.f_frsize


def free_inodes(target: Path) -> int:
    return os.statvfs(target).f_favail


def size_bytes(target: Path) -> int:
    st = os.statvfs(target)
    return st.f_blocks * st.f_frsize


def unmount_tmpfs(target: Path) -> bool:
    """Unmount; True if it was mounted. Clones still mapping template memory
    keep it busy: then detach lazily (the kernel frees it when they exit)."""
    if mounted_fstype(target) is None:
        return False
    try:
        umount2(target)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        umount2(target, MNT_DETACH)
    return True

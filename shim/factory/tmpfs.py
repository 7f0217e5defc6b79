"""The tmpfs the template lives on (mount(2) via libc; needs root).

Guest RAM of the template is a file here: tmpfs keeps it in page cache so
clones map it without disk I/O, and the size limit bounds what a template
(plus clones still mapping an older, unlinked one) can pin.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

from shim.mounts import _unescape

MS_REMOUNT = 0x20
MS_NOSUID = 0x2
MS_NODEV = 0x4
MNT_DETACH = 0x2
_FLAGS = MS_NOSUID | MS_NODEV

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


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
    if _libc.mount(b"graft-template", os.fsencode(target), b"tmpfs", flags,
                   data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {target} ({data}): {os.strerror(err)}")


def mount_tmpfs(target: Path, size_bytes: int) -> None:
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    _mount(target, _FLAGS, f"size={size_bytes},mode=0700")


def resize_tmpfs(target: Path, size_bytes: int) -> None:
    _mount(target, MS_REMOUNT | _FLAGS, f"size={size_bytes},mode=0700")


def used_bytes(target: Path) -> int:
    st = os.statvfs(target)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def size_bytes(target: Path) -> int:
    st = os.statvfs(target)
    return st.f_blocks * st.f_frsize


def unmount_tmpfs(target: Path) -> bool:
    """Unmount; True if it was mounted. Clones still mapping template memory
    keep it busy: then detach lazily (the kernel frees it when they exit)."""
    if mounted_fstype(target) is None:
        return False
    if _libc.umount2(os.fsencode(target), 0) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EBUSY and _libc.umount2(os.fsencode(target), MNT_DETACH) == 0:
        return True
    err = ctypes.get_errno() or err
    raise OSError(err, f"unmount {target}: {os.strerror(err)}")

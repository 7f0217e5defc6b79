"""Bind mounts for the shared directory, via the mount(2) syscall."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

MS_BIND = 0x1000
MS_REC = 0x4000
MNT_DETACH = 0x2

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def bind_mount(source: Path, target: Path) -> None:
    if _libc.mount(os.fsencode(source), os.fsencode(target), None, MS_BIND | MS_REC, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind mount {source} on {target}: {os.strerror(err)}")


def unmount(target: Path) -> None:
    """Detach *target*; a path that is not mounted is not an error."""
    if _libc.umount2(os.fsencode(target), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not a mount point; ENOENT: gone
            raise OSError(err, f"unmount {target}: {os.strerror(err)}")


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1:i + 4]) == 3 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(prefix: Path) -> list[Path]:
    """Mount points at or below *prefix*, deepest first (safe unmount order)."""
    root = os.path.realpath(prefix)
    found: list[Path] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape(line.split()[4])
            if point == root or point.startswith(root.rstrip("/") + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def unmount_all_under(prefix: Path) -> None:
    for point in mounts_under(prefix):
        unmount(point)

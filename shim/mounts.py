"""Host mounts graft makes (the shared directory's binds, its tmpfs), via mount(2)."""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_RELATIME = 0x200000
MNT_DETACH = 0x2
# statvfs f_flag bits (ST_*) that a bind remount must keep, as mount flags.
_KEPT_FLAGS = {os.ST_RDONLY: MS_RDONLY, os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV,
               os.ST_NOEXEC: MS_NOEXEC, os.ST_NOATIME: MS_NOATIME,
               os.ST_NODIRATIME: MS_NODIRATIME, os.ST_RELATIME: MS_RELATIME}

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def mount(source: str | Path, target: Path, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    if _libc.mount(os.fsencode(source), os.fsencode(target),
                   fstype.encode() if fstype else None, flags,
                   data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def bind_mount(source: Path, target: Path, *, readonly: bool = False,
               confined: bool = False) -> None:
    """Bind *source* (recursively) on *target*. confined: nosuid+nodev on the new mount, so
    setuid files or device nodes a guest creates through the share (9p creates them as the
    VMM's user, root) mean nothing through it; readonly: the host side refuses writes too
    (the guest's own `ro` is not enough: root in the VM could undo it)."""
    mount(source, target, None, MS_BIND | MS_REC)
    extra = (MS_RDONLY if readonly else 0) | (MS_NOSUID | MS_NODEV if confined else 0)
    if not extra:
        return
    try:
        # A bind remount sets the mount's flags to exactly those given: keep the source's.
        kept = os.statvfs(target).f_flag
        flags = extra | sum(bit for st, bit in _KEPT_FLAGS.items() if kept & st)
        mount("none", target, None, MS_REMOUNT | MS_BIND | flags)
    except BaseException:
        unmount(target)
        raise


def mount_tmpfs(target: Path, size_bytes: int, mode: int = 0o700) -> None:
    """A nosuid, nodev tmpfs of *size_bytes* on *target*."""
    mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size_bytes},mode={mode:o}")


def umount2(target: Path, flags: int = 0) -> None:
    if _libc.umount2(os.fsencode(target), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unmount {target}: {os.strerror(err)}")


def unmount(target: Path) -> None:
    """Detach *target*; a path that is not mounted is not an error."""
    try:
        umount2(target, MNT_DETACH)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):  # not a mount point; gone
            raise


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

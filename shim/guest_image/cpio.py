"""Writer for cpio "newc" archives, the format the Linux kernel unpacks as initramfs.

Written here rather than by `cpio -o` so the archive is reproducible (fixed
owner, mtime and inode numbers, sorted entries) and can hold device nodes
(/dev/console) without creating them on the host.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterable

from .errors import GuestImageError

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class CpioEntry:
    """One archive member. Exactly one of `source`/`data`/`link_target` for files/links."""

    path: str                       # relative, no leading "/" (e.g. "usr/bin/python3")
    mode: int                       # full st_mode (type bits + permissions)
    source: Path | None = None      # regular file: copy content from here
    data: bytes | None = None       # regular file: literal content
    link_target: str | None = None  # symlink
    rdev: tuple[int, int] = (0, 0)  # character/block device (major, minor)

    @classmethod
    def directory(cls, path: str, perm: int = 0o755) -> "CpioEntry":
        return cls(path, stat.S_IFDIR | perm)

    @classmethod
    def file(cls, path: str, data: bytes, perm: int = 0o644) -> "CpioEntry":
        return cls(path, stat.S_IFREG | perm, data=data)

    @classmethod
    def symlink(cls, path: str, target: str) -> "CpioEntry":
        return cls(path, stat.S_IFLNK | 0o777, link_target=target)

    @classmethod
    def char_device(cls, path: str, major: int, minor: int, perm: int = 0o600) -> "CpioEntry":
        return cls(path, stat.S_IFCHR | perm, rdev=(major, minor))


def entries_from_tree(root: Path) -> list[CpioEntry]:
    """Every directory, regular file and symlink under `root`, as archive entries."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in dirnames + sorted(filenames):
            full = Path(dirpath, name)
            rel = full.relative_to(root).as_posix()
            st = full.lstat()
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                entries.append(CpioEntry.symlink(rel, os.readlink(full)))
            elif stat.S_ISDIR(st.st_mode):
                entries.append(CpioEntry.directory(rel, perm))
            elif stat.S_ISREG(st.st_mode):
                entries.append(CpioEntry(rel, stat.S_IFREG | perm, source=full))
            else:
                raise GuestImageError(f"{full}: unsupported file type in the initramfs tree")
    return entries


def write_cpio(out: BinaryIO, entries: Iterable[CpioEntry], *, mtime: int = 0) -> int:
    """Write `entries` (parents before children, sorted by path) and the trailer; return the size."""
    written = 0
    by_path: dict[str, CpioEntry] = {}
    for entry in entries:
        path = _normalise(entry.path)
        if path in by_path:
            raise GuestImageError(f"initramfs: duplicate entry {path}")
        by_path[path] = entry
    for ino, path in enumerate(sorted(by_path, key=lambda p: PurePosixPath(p).parts), start=1):
        written += _write_entry(out, ino, path, by_path[path], mtime)
    written += _write_header(out, 0, _TRAILER, 0, 0, 0, 1, (0, 0))
    pad = -written % 512  # conventional block padding; the kernel ignores it
    out.write(b"\0" * pad)
    return written + pad


def _normalise(path: str) -> str:
    p = PurePosixPath(path.lstrip("/"))
    if not p.parts or ".." in p.parts:
        raise GuestImageError(f"initramfs: invalid entry path {path!r}")
    return p.as_posix()


def _write_entry(out: BinaryIO, ino: int, path: str, entry: CpioEntry, mtime: int) -> int:
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    if stat.S_ISLNK(entry.mode):
        payload = (entry.link_target or "").encode()
        return _write_header(out, ino, path, entry.mode, len(payload), mtime, nlink, (0, 0)) + _write_padded(out, payload)
    if stat.S_ISREG(entry.mode):
        if entry.data is not None:
            return _write_header(out, ino, path, entry.mode, len(entry.data), mtime, nlink, (0, 0)) + _write_padded(out, entry.data)
        if entry.source is None:
            raise GuestImageError(f"initramfs: file entry {path} has no content")
        size = entry.source.stat().st_size
        n = _write_header(out, ino, path, entry.mode, size, mtime, nlink, (0, 0))
        copied = 0
        with entry.source.open("rb") as f:
            while chunk := f.read(_COPY_CHUNK):
                out.write(chunk)
                copied += len(chunk)
        if copied != size:
            raise GuestImageError(f"initramfs: {entry.source} changed size while being archived")
        out.write(b"\0" * (-size % 4))
        return n + size + (-size % 4)
    return _write_header(out, ino, path, entry.mode, 0, mtime, nlink, entry.rdev)


def _write_header(out: BinaryIO, ino: int, name: str, mode: int, size: int, mtime: int, nlink: int,
                  rdev: tuple[int, int]) -> int:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev[0], rdev[1], len(encoded), 0)
    header = _MAGIC + b"".join(b"%08X" % f for f in fields) + encoded
    return _write_padded(out, header)


def _write_padded(out: BinaryIO, data: bytes) -> int:
    pad = -len(data) % 4
    out.write(data + b"\0" * pad)
    return len(data) + pad

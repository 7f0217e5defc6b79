"""The guest root filesystem being staged on the host before it is archived.

The tree is "merged /usr": /bin, /sbin, /lib and /lib64 are symlinks into /usr,
so every package path lands in one place and the dynamic loader's default
search directories (/lib/x86_64-linux-gnu, /usr/lib/x86_64-linux-gnu) agree.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .errors import GuestImageError

LIB_DIR = "usr/lib/x86_64-linux-gnu"
LOADER = "usr/lib64/ld-linux-x86-64.so.2"
GRAFT_LIB = "usr/lib/graft"
MERGED_DIRS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
EMPTY_DIRS = ("dev", "proc", "sys", "run", "tmp", "root", "mnt", "etc", "var/tmp", "usr/bin", "usr/sbin",
              LIB_DIR, "usr/lib64", GRAFT_LIB)


def merged_path(path: str) -> str:
    """Map a package path onto the merged-/usr tree: "/lib/x/y" -> "usr/lib/x/y"."""
    rel = path.lstrip("/")
    top, _, rest = rel.partition("/")
    if top in MERGED_DIRS:
        return MERGED_DIRS[top] + ("/" + rest if rest else "")
    return rel


class Rootfs:
    def __init__(self, path: Path) -> None:
        self.path = path

    def create_skeleton(self) -> None:
        for rel in EMPTY_DIRS:
            (self.path / rel).mkdir(parents=True, exist_ok=True)
        os.chmod(self.path / "tmp", 0o1777)
        os.chmod(self.path / "var/tmp", 0o1777)
        os.chmod(self.path / "root", 0o700)
        for link, target in MERGED_DIRS.items():
            os.symlink(target, self.path / link)

    def target(self, guest_path: str) -> Path:
        rel = merged_path(guest_path)
        if not rel or ".." in rel.split("/"):
            raise GuestImageError(f"invalid guest path {guest_path!r}")
        return self.path / rel

    def copy_file(self, source: Path, guest_path: str, mode: int | None = None) -> Path:
        """Copy the file `source` resolves to (symlinks followed) to `guest_path`."""
        if not source.is_file():
            raise GuestImageError(f"{source}: missing (needed at /{guest_path.lstrip('/')})")
        dest = self.target(guest_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        shutil.copyfile(source, dest)
        os.chmod(dest, mode if mode is not None else source.stat().st_mode & 0o7777)
        return dest

    def write_file(self, guest_path: str, data: bytes | str, mode: int = 0o644) -> Path:
        dest = self.target(guest_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data.encode() if isinstance(data, str) else data)
        os.chmod(dest, mode)
        return dest

    def symlink(self, guest_path: str, target: str) -> None:
        dest = self.target(guest_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        os.symlink(target, dest)

    def exists(self, guest_path: str) -> bool:
        dest = self.target(guest_path)
        return dest.exists() or dest.is_symlink()

    def copy_tree(self, source: Path, guest_path: str, skip: Callable[[str], bool] = lambda rel: False) -> int:
        """Copy a directory tree (files and symlinks as they are); `skip(rel)` prunes paths. Returns files copied."""
        copied = 0
        dest_root = self.target(guest_path)
        for dirpath, dirnames, filenames in os.walk(source):
            rel_dir = Path(dirpath).relative_to(source).as_posix()
            prefix = "" if rel_dir == "." else rel_dir + "/"
            dirnames[:] = [d for d in dirnames if not skip(prefix + d)]
            (dest_root / prefix).mkdir(parents=True, exist_ok=True)
            # os.walk lists symlinks to directories with the directories but does not enter them.
            linked_dirs = [d for d in dirnames if Path(dirpath, d).is_symlink()]
            dirnames[:] = [d for d in dirnames if d not in linked_dirs]
            for name in linked_dirs + filenames:
                if skip(prefix + name):
                    continue
                src = Path(dirpath, name)
                dest = dest_root / prefix / name
                if src.is_symlink():
                    if dest.is_symlink() or dest.exists():
                        dest.unlink()
                    os.symlink(os.readlink(src), dest)
                else:
                    shutil.copyfile(src, dest)
                    os.chmod(dest, src.stat().st_mode & 0o7777)
                copied += 1
        return copied

    def size(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.path):
            for name in files:
                p = Path(dirpath, name)
                if not p.is_symlink():
                    total += p.stat().st_size
        return total

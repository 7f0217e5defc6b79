"""Unpacking Debian packages and wheels into a work directory (like `dpkg-deb -x`, but selective)."""
from __future__ import annotations

import os
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from .errors import GuestImageError
from .tools import require_tool


def extract_deb(deb: Path, dest: Path, select: Callable[[str], bool] | None = None) -> list[str]:
    """Unpack the data members of `deb` for which `select(path)` is true; return their paths.

    Paths are relative without a leading "./" (e.g. "usr/bin/crun"). Streaming
    through `dpkg-deb --fsys-tarfile` lets the 400 MB kernel package give up only
    the few files the guest needs.
    """
    require_tool("dpkg-deb", "dpkg")
    dest.mkdir(parents=True, exist_ok=True)
    extracted: list[str] = []
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                rel = _safe_relpath(member.name, deb)
                if rel is None or (select is not None and not select(rel)):
                    continue
                _extract_member(tar, member, dest, rel, deb)
                extracted.append(rel)
    except tarfile.TarError as exc:
        raise GuestImageError(f"{deb.name}: corrupt package data: {exc}") from exc
    finally:
        proc.stdout.close()
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        returncode = proc.wait()
    if returncode != 0:
        raise GuestImageError(f"{deb.name}: dpkg-deb --fsys-tarfile failed: {stderr.strip()}")
    return extracted


def extract_wheel(wheel: Path, dest: Path, select: Callable[[str], bool] | None = None) -> list[str]:
    """Unpack a wheel's files (a zip) into `dest`; return the relative paths."""
    dest.mkdir(parents=True, exist_ok=True)
    extracted = []
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                rel = _safe_relpath(info.filename, wheel)
                if rel is None or info.is_dir() or (select is not None and not select(rel)):
                    continue
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(info))
                mode = (info.external_attr >> 16) & 0o777
                os.chmod(target, mode or 0o644)
                extracted.append(rel)
    except zipfile.BadZipFile as exc:
        raise GuestImageError(f"{wheel.name}: corrupt wheel: {exc}") from exc
    return extracted


def _safe_relpath(name: str, archive: Path) -> str | None:
    parts = [p for p in PurePosixPath(name).parts if p not in (".", "/")]
    if not parts:
        return None
    if ".." in parts:
        raise GuestImageError(f"{archive.name}: refusing member with '..' in its path: {name}")
    return "/".join(parts)


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, rel: str, deb: Path) -> None:
    target = dest / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    if member.isdir():
        target.mkdir(exist_ok=True)
        os.chmod(target, member.mode & 0o7777 or 0o755)
    elif member.issym():
        if target.is_symlink() or target.exists():
            target.unlink()
        os.symlink(member.linkname, target)
    elif member.islnk():
        # Hard links inside a package: store a copy (the initramfs has no hard links).
        source = dest / (_safe_relpath(member.linkname, deb) or "")
        if not source.is_file():
            raise GuestImageError(f"{deb.name}: {rel} is a hard link to {member.linkname}, which was not extracted")
        target.write_bytes(source.read_bytes())
        os.chmod(target, member.mode & 0o7777)
    elif member.isfile():
        fileobj = tar.extractfile(member)
        assert fileobj is not None
        with target.open("wb") as out:
            while chunk := fileobj.read(1 << 20):
                out.write(chunk)
        os.chmod(target, member.mode & 0o7777)
    # device nodes, fifos: packages we use carry none, and the guest does not need them

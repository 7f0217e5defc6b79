"""Mounting the rootfs containerd describes (overlay / bind) onto bundle/rootfs."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from shim.mounts import unmount_all_under


@dataclass(frozen=True)
class Mount:
    type: str
    source: str
    target: str
    options: tuple[str, ...]


async def _run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise OSError(f"{' '.join(argv)} failed ({proc.returncode}): {out.decode(errors='replace').strip()}")


async def mount_rootfs(mounts: list[Mount], rootfs: Path) -> None:
    """Mount each entry on *rootfs* in order (containerd sends one overlay or bind usually)."""
    rootfs.mkdir(parents=True, exist_ok=True)
    try:
        for m in mounts:
            # mount(8) wants bind mounts as type "none" with the bind option.
            argv = ["mount", "-t", "none" if m.type in ("", "bind", "rbind") else m.type]
            if m.options:
                argv += ["-o", ",".join(m.options)]
            await _run(*argv, m.source, str(rootfs))
    except BaseException:
        unmount_rootfs(rootfs)
        raise


def unmount_rootfs(rootfs: Path) -> None:
    """Detach everything mounted at or below *rootfs* (idempotent)."""
    if rootfs.exists():
        unmount_all_under(rootfs)

"""The node as the installer sees it: its filesystem (mounted at ``root`` inside the
DaemonSet's container, ``/`` when run on the node itself) and a way to run commands in the
node's own mount namespace (``nsenter --target 1 --mount --`` with hostPID), so that what
they do — containerd restarts, graft's template tmpfs — happens on the node, not in the
container."""
from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


class InstallError(RuntimeError):
    """Install or removal cannot go on; the message says what to do."""


# Variables that would make graft ignore the configuration the installer wrote.
_DROPPED_ENV = ("GRAFT_CONFIG", "GRAFT_GUEST_DIR")


@dataclass(frozen=True)
class Host:
    root: Path = Path("/")
    exec_prefix: tuple[str, ...] = ()

    def path(self, node_path: str | Path) -> Path:
        """Where a path of the node is, from here."""
        node = Path(node_path)
        if not node.is_absolute():
            raise InstallError(f"{node}: node paths must be absolute")
        return self.root / node.relative_to("/")

    def run(self, argv: list[str], what: str, timeout: float = 600,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run *argv* (node paths) on the node; InstallError naming *what* on failure."""
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        try:
            done = subprocess.run([*self.exec_prefix, *argv], capture_output=True, text=True,
                                  timeout=timeout, env=env, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InstallError(f"{what}: {exc}") from exc
        if check and done.returncode != 0:
            detail = (done.stderr.strip() or done.stdout.strip())[-2000:]
            raise InstallError(f"{what} failed (exit {done.returncode}): {detail}")
        return done


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def atomic_write(path: Path, data: bytes, mode: int = 0o644, owner: tuple[int, int] | None = None
                 ) -> None:
    """Replace *path* in one step (a crash leaves the old or the new file, never half)."""
    tmp = path.with_name(f".{path.name}.graft-tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    if owner is not None:
        os.chown(tmp, *owner)
    os.replace(tmp, path)


def write_if_changed(path: Path, data: bytes, mode: int = 0o644) -> bool:
    """Write only when the content or mode differs (re-running changes nothing)."""
    try:
        if path.read_bytes() == data and (path.stat().st_mode & 0o7777) == mode:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, mode)
    return True


def remove_empty_dirs(path: Path, stop: Path) -> None:
    """rmdir *path* and its parents up to (not including) *stop* while they are empty."""
    while path != stop and stop in path.parents:
        try:
            path.rmdir()
        except OSError:  # not empty, or already gone
            if path.exists():
                return
        path = path.parent

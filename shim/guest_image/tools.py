"""Running the host tools the builder depends on, with errors that name them."""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

from .errors import GuestImageError


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise GuestImageError(f"required tool `{name}` is not installed (Debian package: {package})")
    return path


def run(argv: Sequence[str], *, what: str, env: dict[str, str] | None = None, cwd: str | None = None) -> str:
    """Run a command, return its stdout; on failure raise with `what` and the tool's own words."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, env=env, cwd=cwd)
    except OSError as exc:
        raise GuestImageError(f"{what}: cannot run {argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-5:]
        raise GuestImageError(f"{what}: `{' '.join(argv[:3])} ...` exited with {proc.returncode}: "
                              + " | ".join(detail))
    return proc.stdout

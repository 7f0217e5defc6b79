"""Unix-socket file helpers shared by the VMM drivers."""
from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from .base import HypervisorError

# sun_path is 108 bytes including the terminating NUL
MAX_SOCKET_PATH = 107


def remove_stale_socket(path: Path) -> None:
    """Remove a leftover socket file; refuse to delete anything else."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise HypervisorError(f"{path} exists and is not a socket")
    path.unlink(missing_ok=True)


def bind_listener(path: Path, backlog: int = 8) -> socket.socket:
    """A listening unix socket at *path* (inheritable by a VMM via pass_fds)."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise HypervisorError(f"socket path too long ({len(os.fsencode(path))} > "
                              f"{MAX_SOCKET_PATH} bytes): {path}")
    remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise HypervisorError(f"cannot listen on {path}: {exc.strerror}") from exc
    return sock


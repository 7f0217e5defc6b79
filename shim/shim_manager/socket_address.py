"""Shim socket naming and probing."""
from __future__ import annotations

import errno
import hashlib
import os
import socket
from pathlib import Path

SOCKET_DIR = Path("/run/containerd/s")
_MAX_SUN_PATH = 106


def socket_path(containerd_address: str, namespace: str, group_id: str,
                directory: Path = SOCKET_DIR) -> Path:
    """One socket per (containerd, namespace, pod); hashed so the path stays short."""
    digest = hashlib.sha256(os.path.join(containerd_address, namespace, group_id).encode())
    path = directory / digest.hexdigest()
    if len(str(path).encode()) > _MAX_SUN_PATH:
        raise ValueError(f"socket path {path} exceeds {_MAX_SUN_PATH} bytes")
    return path


def to_uri(path: Path) -> str:
    return f"unix://{path}"


def accepts(path: Path, timeout: float = 0.2) -> bool:
    """True if something listens on the unix socket at *path*."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


def bind_listening(path: Path) -> socket.socket:
    """Bind and listen on *path* (mode 0600), replacing a stale socket nobody listens on."""
    path.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)
        try:
            try:
                sock.bind(str(path))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or accepts(path):
                    raise
                path.unlink(missing_ok=True)  # stale: its daemon is gone
                sock.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass

"""sha256 of files, cached by what stat(2) says about them.

Validating a template on every sandbox create must not re-hash a 40 MB
initrd and the VMM binary each time. A file whose (path, size, mtime, ctime,
inode) is unchanged has unchanged content for our purposes (ctime cannot be
set back by user tools, so a rewrite always changes the key). The cache lives
in memory and, optionally, in a JSON file so that every shim process (one per
pod) benefits from the first one's hashing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_MAX_PERSISTED = 64  # keeps the cache file tiny; old keys just fall out


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def stat_key(path: Path) -> str:
    """Raises OSError when *path* cannot be stat'ed."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return f"{real}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"


class DigestCache:
    def __init__(self, persist_to: Path | None = None) -> None:
        self._persist_to = persist_to
        self._known: dict[str, str] = {}
        self._loaded = False

    def _load(self) -> None:
        self._loaded = True
        if self._persist_to is None:
            return
        try:
            data = json.loads(self._persist_to.read_text())
        except (OSError, ValueError):
            return
        if isinstance(data, dict):
            self._known.update({k: v for k, v in data.items()
                                if isinstance(k, str) and isinstance(v, str)})

    def _save(self) -> None:
        if self._persist_to is None:
            return
        keep = dict(list(self._known.items())[-_MAX_PERSISTED:])
        # Per process and thread: sandboxes validate templates in worker threads.
        tmp = self._persist_to.with_name(
            f".{self._persist_to.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(keep, f)
            os.replace(tmp, self._persist_to)
        except OSError as exc:  # a cache: losing it only costs time
            log.debug("cannot persist digest cache %s: %s", self._persist_to, exc)
            tmp.unlink(missing_ok=True)

    def sha256(self, path: Path) -> str:
        """Digest of *path*; raises OSError if it cannot be read."""
        if not self._loaded:
            self._load()
        key = stat_key(path)
        cached = self._known.get(key)
        if cached is not None:
            return cached
        digest = sha256_file(path)
        # Only trust the digest if the file did not change while we read it.
        if stat_key(path) == key:
            self._known[key] = digest
            self._save()
        return digest

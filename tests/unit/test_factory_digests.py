"""File digests are computed once per file version, and never stale."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from shim.factory import digests as digests_mod
from shim.factory.digests import DigestCache


@pytest.fixture
def hash_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = digests_mod.sha256_file

    def counting(path: Path) -> str:
        calls.append(Path(path))
        return real(path)
    monkeypatch.setattr(digests_mod, "sha256_file", counting)
    return calls


def test_cached_until_the_file_changes(tmp_path: Path, hash_calls: list[Path]) -> None:
    f = tmp_path / "kernel"
    f.write_bytes(b"one")
    cache = DigestCache()
    assert cache.sha256(f) == hashlib.sha256(b"one").hexdigest()
    assert cache.sha256(f) == hashlib.sha256(b"one").hexdigest()
    assert len(hash_calls) == 1
    # Same size, mtime forced back: ctime still moves, so the change is seen.
    st = f.stat()
    f.write_bytes(b"two")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.sha256(f) == hashlib.sha256(b"two").hexdigest()
    assert len(hash_calls) == 2


def test_persisted_cache_is_shared_between_instances(tmp_path: Path,
                                                     hash_calls: list[Path]) -> None:
    f = tmp_path / "initrd"
    f.write_bytes(b"x" * 1000)
    store = tmp_path / "digests.json"
    first = DigestCache(store).sha256(f)
    assert store.stat().st_mode & 0o777 == 0o600
    assert DigestCache(store).sha256(f) == first
    assert len(hash_calls) == 1


def test_corrupt_cache_file_is_ignored(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"data")
    store = tmp_path / "digests.json"
    store.write_text("{not json")
    assert DigestCache(store).sha256(f) == hashlib.sha256(b"data").hexdigest()


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        DigestCache().sha256(tmp_path / "absent")

#!/usr/bin/env python3
"""Newer containerd releases for compatibility tests, taken from Debian's archive.

    compat.py fetch SUITE    # prints the directory holding that release's containerd and ctr

Debian trixie ships containerd 1.7, sid 2.x; both run on bookworm (they need only libc). The
.deb is fetched with apt-get against a private sources list, lists and cache (the machine's own
apt configuration stays untouched) and unpacked with dpkg -x under CACHE/SUITE; a second call
reuses it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SUITES = ("trixie", "sid")
CACHE = Path(os.environ.get("GRAFT_COMPAT_CACHE", "/var/cache/graft/containerd-compat"))
MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class FetchError(RuntimeError):
    pass


def bin_dir(suite: str) -> Path:
    return CACHE / suite / "usr" / "bin"


def fetch(suite: str, timeout: float = 600) -> Path:
    """The bin dir of *suite*'s containerd, downloading it first if needed."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r} (one of {', '.join(SUITES)})")
    target = bin_dir(suite)
    if (target / "containerd").is_file() and (target / "ctr").is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"apt-{suite}-", dir=CACHE) as tmp:
        work = Path(tmp)
        for sub in ("lists/partial", "cache/archives/partial"):
            (work / sub).mkdir(parents=True)
        sources = work / "sources.list"
        sources.write_text(f"deb [signed-by={KEYRING}] {MIRROR} {suite} main\n")
        apt = ["-o", f"Dir::Etc::SourceList={sources}", "-o", "Dir::Etc::SourceParts=/dev/null",
               "-o", f"Dir::State::Lists={work / 'lists'}", "-o", f"Dir::Cache={work / 'cache'}",
               "-o", "APT::Sandbox::User=root"]
        _run(["apt-get", *apt, "update"], work, timeout)
        _run(["apt-get", *apt, "download", f"containerd/{suite}"], work, timeout)
        debs = sorted(work.glob("containerd_*.deb"))
        if not debs:
            raise FetchError(f"apt-get download left no containerd .deb for {suite}")
        unpacked = work / "root"
        _run(["dpkg", "-x", str(debs[0]), str(unpacked)], work, timeout)
        (unpacked / "VERSION").write_text(debs[0].name.split("_")[1] + "\n")
        shutil.rmtree(CACHE / suite, ignore_errors=True)
        os.replace(unpacked, CACHE / suite)  # atomic: a half-unpacked tree is never used
    return target


def version(suite: str) -> str:
    return (CACHE / suite / "VERSION").read_text().strip()


def _run(argv: list[str], cwd: Path, timeout: float) -> None:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"{argv[0]} {argv[-1]}: {exc}") from exc
    if done.returncode != 0:
        raise FetchError(f"{' '.join(argv[:1] + argv[-2:])} failed: "
                         f"{(done.stderr or done.stdout).strip()[-500:]}")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "fetch":
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(fetch(argv[1]))
    except (FetchError, ValueError) as exc:
        print(f"compat.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""Newer containerd releases for compatibility tests, taken from Debian's archive.

    compat.py fetch SUITE      # prints the directory holding that release's containerd and ctr
    compat.py fetch-api SUITE  # prints the Go source root of that release's API protos

Debian trixie ships containerd 1.7, sid 2.x; both run on bookworm (they need only libc). The
.deb is fetched with apt-get against a private sources list, lists and cache (the machine's own
apt configuration stays untouched) and unpacked with dpkg -x under CACHE/SUITE; a second call
reuses it. `fetch-api` does the same for golang-github-containerd-containerd-api-dev (the 2.x
API protos, e.g. the Sandbox API, which bookworm's 1.6 sources predate) under CACHE/SUITE-api:
hack/gen_protos.py compiles them.
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
API_PACKAGE = "golang-github-containerd-containerd-api-dev"
API_MARKER = "github.com/containerd/containerd/api/runtime/sandbox/v1/sandbox.proto"


class FetchError(RuntimeError):
    pass


def bin_dir(suite: str) -> Path:
    return CACHE / suite / "usr" / "bin"


def fetch(suite: str, timeout: float = 600) -> Path:
    """The bin dir of *suite*'s containerd, downloading it first if needed."""
    target = bin_dir(suite)
    if not ((target / "containerd").is_file() and (target / "ctr").is_file()):
        _fetch_package(suite, "containerd", CACHE / suite, timeout)
    return target


def api_dir(suite: str) -> Path:
    """Go source root (holding github.com/containerd/containerd/api) of *suite*'s API package."""
    return CACHE / f"{suite}-api" / "usr" / "share" / "gocode" / "src"


def fetch_api(suite: str, timeout: float = 600) -> Path:
    """api_dir(suite), downloading golang-github-containerd-containerd-api-dev first if needed."""
    target = api_dir(suite)
    if not (target / API_MARKER).is_file():
        _fetch_package(suite, API_PACKAGE, CACHE / f"{suite}-api", timeout)
    return target


def _fetch_package(suite: str, package: str, destination: Path, timeout: float) -> None:
    """Download *package* from Debian *suite* and unpack it at *destination* (replaced whole)."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r} (one of {', '.join(SUITES)})")
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
        _run(["apt-get", *apt, "download", f"{package}/{suite}"], work, timeout)
        debs = sorted(work.glob(f"{package}_*.deb"))
        if not debs:
            raise FetchError(f"apt-get download left no {package} .deb for {suite}")
        unpacked = work / "root"
        _run(["dpkg", "-x", str(debs[0]), str(unpacked)], work, timeout)
        (unpacked / "VERSION").write_text(debs[0].name.split("_")[1] + "\n")
        shutil.rmtree(destination, ignore_errors=True)
        os.replace(unpacked, destination)  # atomic: a half-unpacked tree is never used


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
    commands = {"fetch": fetch, "fetch-api": fetch_api}
    if len(argv) != 2 or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(commands[argv[0]](argv[1]))
    except (FetchError, ValueError) as exc:
        print(f"compat.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""Newer containerd releases for compatibility tests, taken from Debian's archive.

    compat.py fetch SUITE      # prints the directory holding that release's containerd and ctr
    compat.py fetch-api SUITE  # prints the Go source root of that release's API protos

Debian trixie ships containerd 1.7, sid 2.x; both run on bookworm (they need only libc). The
.deb is unpacked under CACHE/SUITE (hack/debian_archive.py); a second call reuses it.
`fetch-api` does the same for golang-github-containerd-containerd-api-dev (the 2.x API protos,
e.g. the Sandbox API, which bookworm's 1.6 sources predate) under CACHE/SUITE-api:
hack/gen_protos.py compiles them.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # hack/: debian_archive
from debian_archive import FetchError, unpack, unpacked_version  # noqa: E402

SUITES = ("trixie", "sid")
CACHE = Path(os.environ.get("GRAFT_COMPAT_CACHE", "/var/cache/graft/containerd-compat"))
API_PACKAGE = "golang-github-containerd-containerd-api-dev"
API_MARKER = "github.com/containerd/containerd/api/runtime/sandbox/v1/sandbox.proto"


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
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r} (one of {', '.join(SUITES)})")
    unpack(suite, [package], destination, timeout)


def version(suite: str) -> str:
    return unpacked_version(CACHE / suite)


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

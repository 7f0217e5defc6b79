#!/usr/bin/env python3
"""A newer QEMU than bookworm's 7.2, for the tests of what only it can do.

    qemu_backports.py fetch   # prints the path of its qemu-system-x86_64

QEMU >= 8.2 can open a clone's template memory file read-only and still map it privately
writable (memory-backend-file readonly=on,rom=off); 7.2 cannot. bookworm-backports builds QEMU
10 against bookworm's libraries, so its binary runs here unpacked under CACHE, beside the
machine's QEMU: a relocatable build, it finds its own data files (pvh.bin, option ROMs) under
CACHE/usr/share/qemu and the machine's seabios and iPXE ROMs. A second call reuses it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from debian_archive import FetchError, unpack

SUITE = "bookworm-backports"
PACKAGES = ["qemu-system-x86", "qemu-system-data"]
CACHE = Path(os.environ.get("GRAFT_QEMU_BACKPORTS_CACHE", "/var/cache/graft/qemu-backports"))

def binary() -> Path:
    return CACHE / "usr" / "bin" / "qemu-system-x86_64"


def fetch(timeout: float = 600) -> Path:
    """The path of bookworm-backports' qemu-system-x86_64, downloading it first if needed."""
    if not (binary().is_file() and (CACHE / "usr" / "share" / "qemu" / "pvh.bin").is_file()):
        unpack(SUITE, PACKAGES, CACHE, timeout)
    return binary()


def main(argv: list[str]) -> int:
    if argv != ["fetch"]:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(fetch())
    except FetchError as exc:
        print(f"qemu_backports.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Helpers for tests that drive the private containerd (tests/integration/test_containerd_*.py)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import private_containerd  # noqa: E402

GUEST_DIR = Path(os.environ.get("GRAFT_GUEST_DIR", "/var/lib/graft/guest"))


def containerd_missing() -> str | None:
    if os.geteuid() != 0:
        return "containerd tests need root"
    for tool in ("containerd", "ctr", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path("/usr/lib/cni/bridge").exists():
        return "containernetworking-plugins (bridge) are not installed"
    return None


def vm_missing() -> str | None:
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed"
    for name in ("vmlinux", "initrd.img"):
        if not (GUEST_DIR / name).is_file():
            return f"guest image {GUEST_DIR / name} missing (run `graft guest build`)"
    return None


def skip_or_fail(why: str | None) -> None:
    if why:
        if os.environ.get("GRAFT_REQUIRE_VM") == "1":
            pytest.fail(why)
        pytest.skip(why)


class Containerd:
    def __init__(self, layout: "private_containerd.Layout") -> None:
        self.layout = layout
        self.address = str(layout.socket)

    def ctr(self, *args: str, check: bool = True, timeout: float = 180, input: bytes | None = None,
            namespace: str = "default") -> subprocess.CompletedProcess:
        done = subprocess.run([self.layout.tool("ctr"), "--address", self.address, "-n", namespace,
                               *args],
                              capture_output=True, timeout=timeout, input=input)
        if check and done.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} → {done.returncode}: "
                                 f"{done.stderr.decode(errors='replace')}")
        return done


@pytest.fixture(scope="module")
def containerd():
    skip_or_fail(containerd_missing())
    base = Path(tempfile.mkdtemp(prefix="gctrd-", dir="/tmp"))  # short: socket paths ≤ 108 bytes
    layout = private_containerd.Layout(base)
    try:
        private_containerd.start(layout)
        yield Containerd(layout)
    finally:
        private_containerd.purge(layout)


def shim_sockets() -> set[str]:
    directory = Path("/run/containerd/s")
    return {p.name for p in directory.iterdir()} if directory.is_dir() else set()

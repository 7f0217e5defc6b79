"""Shared fixtures. VM tests need root, qemu-system-x86 and a built guest
image; under hack/test.sh (GRAFT_REQUIRE_VM=1) a missing prerequisite fails
the run instead of skipping it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shim.config import GraftConfig, parse_config  # noqa: E402

DEFAULT_GUEST_DIR = Path(os.environ.get("GRAFT_GUEST_DIR", "/var/lib/graft/guest"))


def vm_prerequisites_missing() -> str | None:
    if os.geteuid() != 0:
        return "VM tests need root"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed"
    for name in ("vmlinux", "initrd.img"):
        if not (DEFAULT_GUEST_DIR / name).is_file():
            return f"guest image {DEFAULT_GUEST_DIR / name} missing (run `graft guest build`)"
    return None


@pytest.fixture(scope="session")
def require_vm() -> None:
    why = vm_prerequisites_missing()
    if why:
        if os.environ.get("GRAFT_REQUIRE_VM") == "1":
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rootfs = tmp_path_factory.mktemp("busybox") / "rootfs"
    subprocess.run([str(ROOT / "hack" / "busybox-rootfs.sh"), str(rootfs)], check=True)
    return rootfs


@pytest.fixture(scope="session")
def vm_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Short path: unix socket paths must stay under 108 bytes.
    path = Path(f"/run/graft-test-{os.getpid()}")
    path.mkdir(mode=0o700, exist_ok=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def graft_config(require_vm: None, vm_state_dir: Path) -> GraftConfig:
    return parse_config({
        "runtime": {"state_dir": str(vm_state_dir)},
        "guest": {"image_dir": str(DEFAULT_GUEST_DIR)},
    })

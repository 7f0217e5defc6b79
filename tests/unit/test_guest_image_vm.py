"""Checks of the image `graft guest build` produced (skipped when it has not been built)."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

GUEST_DIR = Path(os.environ.get("GRAFT_GUEST_DIR", "/var/lib/graft/guest"))

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(not (GUEST_DIR / "initrd.img").is_file(), reason=f"no guest image in {GUEST_DIR}"),
    pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio is not installed"),
]


def _listing(initrd: Path) -> set[str]:
    with initrd.open("rb") as f:
        magic = f.read(2)
    reader = ["zcat", str(initrd)] if magic == b"\x1f\x8b" else ["cat", str(initrd)]
    data = subprocess.run(reader, capture_output=True, check=True).stdout
    out = subprocess.run(["cpio", "-it", "--quiet"], input=data, capture_output=True, check=True).stdout
    return set(out.decode().split())


def _member(initrd: Path, name: str) -> bytes:
    proc = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", name], stdin=initrd.open("rb"),
                          capture_output=True, check=True)
    return proc.stdout


def test_initrd_holds_what_the_agent_needs() -> None:
    initrd = GUEST_DIR / "initrd.img"
    names = _listing(initrd)
    for required in ("init", "usr/bin/python3.11", "usr/bin/python3", "usr/bin/busybox", "usr/bin/sh",
                     "usr/bin/crun", "usr/sbin/runc", "usr/lib64/ld-linux-x86-64.so.2",
                     "usr/lib/x86_64-linux-gnu/libc.so.6", "usr/lib/x86_64-linux-gnu/libseccomp.so.2",
                     "usr/lib/graft/modules.list", "usr/lib/graft/graft_agent/__main__.py",
                     "usr/lib/graft/graft_agent/api/gen/agent_pb2.py", "usr/lib/graft/shim/__init__.py",
                     "usr/lib/graft/shim/ttrpc/__init__.py", "usr/lib/graft/google/protobuf/__init__.pyc",
                     "usr/lib/python3.11/asyncio/__init__.pyc", "usr/lib/python3.11/os.pyc", "dev/console"):
        assert required in names, required
    stdlib = [n for n in names if n.startswith("usr/lib/python3.11/")]
    assert not [n for n in stdlib if n.endswith(".py")], "the stdlib ships sourceless"
    assert not [n for n in stdlib if "/_ssl." in n or "/_hashlib." in n or "/test/" in n]

    modules = _member(initrd, "usr/lib/graft/modules.list").decode().split()
    assert modules and all(m.startswith("/lib/modules/") for m in modules)
    for module in modules:
        assert "usr" + module in names, module
    assert [Path(m).name for m in modules].index("virtio.ko") < [Path(m).name for m in modules].index("virtio_pci.ko")


def test_manifest_describes_the_outputs() -> None:
    manifest = json.loads((GUEST_DIR / "manifest.json").read_text())
    for name in ("vmlinux", "initrd.img"):
        data = (GUEST_DIR / name).read_bytes()
        assert manifest["outputs"][name] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert (GUEST_DIR / "vmlinux").read_bytes()[:4] == b"\x7fELF"
    assert manifest["inputs"]["debs"] and manifest["inputs"]["wheels"] and manifest["inputs"]["agent_sha256"]


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None or os.geteuid() != 0,
                    reason="needs root and qemu-system-x86_64")
def test_image_boots_to_an_answering_agent(tmp_path: Path) -> None:
    """Cold boot under TCG (as the notes' fastest q35 setup) until the agent answers Check."""
    from graft_agent.api import SERVICE_NAME, agent_pb2
    from shim.ttrpc import Client, TtrpcError

    sock = tmp_path / "agent.sock"
    argv = ["qemu-system-x86_64", "-M", "q35,accel=tcg", "-m", "256M", "-smp", "1", "-nodefaults",
            "-no-user-config", "-nographic", "-bios", "/usr/share/qemu/qboot.rom",
            "-kernel", str(GUEST_DIR / "vmlinux"), "-initrd", str(GUEST_DIR / "initrd.img"),
            "-append", "console=ttyS0 quiet panic=-1 graft.agent_port=graft.agent cryptomgr.notests "
                       "tsc=reliable no_timer_check mitigations=off audit=0",
            "-serial", f"file:{tmp_path / 'console.log'}", "-no-reboot", "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=agent,path={sock},server=on,wait=off",
            "-device", "virtserialport,chardev=agent,name=graft.agent", "-device", "virtio-rng-pci"]

    async def check(deadline: float) -> agent_pb2.HealthCheckResponse:
        while True:
            try:
                client = await Client.connect_unix(str(sock))
                break
            except (OSError, TtrpcError):  # QEMU has not created the socket yet
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)
        try:
            return await client.call(SERVICE_NAME, "Check", agent_pb2.CheckRequest(),
                                     agent_pb2.HealthCheckResponse, timeout=deadline - time.monotonic())
        finally:
            await client.close()

    started = time.monotonic()
    qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        response = asyncio.run(check(started + 60))
        assert response.status == agent_pb2.HealthCheckResponse.SERVING
    except BaseException:
        log = tmp_path / "console.log"
        print(log.read_text(errors="replace")[-4000:] if log.exists() else "(no console log)")
        raise
    finally:
        qemu.send_signal(signal.SIGTERM)
        try:
            qemu.wait(10)
        except subprocess.TimeoutExpired:
            qemu.kill()
            qemu.wait()
        qemu.stderr.close()

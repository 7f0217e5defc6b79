"""Packages from other Debian suites, unpacked beside the machine's own (never installed).

apt-get runs against a private sources list, lists and cache, so the machine's apt configuration
stays untouched; each .deb is unpacked with dpkg -x into one tree. Used for the newer containerd
releases of the compatibility tests (containerd/compat.py) and for a newer QEMU
(qemu_backports.py).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
VERSION_FILE = "VERSION"  # in the unpacked tree: the version of its first package


class FetchError(RuntimeError):
    pass


def unpack(suite: str, packages: list[str], destination: Path, timeout: float = 600) -> None:
    """Download *packages* from Debian *suite* and unpack them all at *destination* (replaced
    whole, atomically: a half-unpacked tree is never seen there)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"apt-{suite}-", dir=destination.parent) as tmp:
        work = Path(tmp)
        for sub in ("lists/partial", "cache/archives/partial"):
            (work / sub).mkdir(parents=True)
        sources = work / "sources.list"
        sources.write_text(f"deb [signed-by={KEYRING}] {MIRROR} {suite} main\n")
        apt = ["-o", f"Dir::Etc::SourceList={sources}", "-o", "Dir::Etc::SourceParts=/dev/null",
               "-o", f"Dir::State::Lists={work / 'lists'}", "-o", f"Dir::Cache={work / 'cache'}",
               "-o", "APT::Sandbox::User=root"]
        _run(["apt-get", *apt, "update"], work, timeout)
        wanted = [f"{name}/{suite}" for name in packages]
        _run(["apt-get", *apt, "download", *wanted], work, timeout)
        unpacked = work / "root"
        for index, name in enumerate(packages):
            debs = sorted(work.glob(f"{name}_*.deb"))
            if not debs:
                raise FetchError(f"apt-get download left no {name} .deb for {suite}")
            _run(["dpkg", "-x", str(debs[0]), str(unpacked)], work, timeout)
            if index == 0:
                version = debs[0].name.split("_")[1].replace("%3a", ":")
                (unpacked / VERSION_FILE).write_text(version + "\n")
        shutil.rmtree(destination, ignore_errors=True)
        os.replace(unpacked, destination)


def unpacked_version(destination: Path) -> str:
    return (destination / VERSION_FILE).read_text().strip()


def _run(argv: list[str], cwd: Path, timeout: float) -> None:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"{argv[0]} {argv[-1]}: {exc}") from exc
    if done.returncode != 0:
        raise FetchError(f"{' '.join(argv[:1] + argv[-2:])} failed: "
                         f"{(done.stderr or done.stdout).strip()[-500:]}")

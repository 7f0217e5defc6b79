"""graft's files on the node, all under one prefix (default /opt/graft):

    <prefix>/python/             a relocatable CPython copied from the image (optional)
    <prefix>/lib/python/         graft and its dependencies (pip --target, from wheels)
    <prefix>/bin/graft           wrappers running that interpreter on that directory
    <prefix>/bin/containerd-shim-graft-v2
    <prefix>/share/guest/        the guest kernel and initramfs
    <prefix>/etc/configuration.toml   (unless --graft-config puts it elsewhere)
    <prefix>/install-record.json

plus a symlink to the shim in a directory on containerd's PATH. Every step compares what is
there with what it would write and leaves equal things alone.
"""
from __future__ import annotations

import filecmp
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .host import Host, InstallError, remove_empty_dirs, write_if_changed

SHIM_NAME = "containerd-shim-graft-v2"
WRAPPERS = {SHIM_NAME: "shim.cli.shim_main", "graft": "shim.cli.graft_main"}
# containerd runs the shim for every container: it gets graft's lean launcher (no shell, no
# site), the admin CLI a plain wrapper.
GUEST_FILES = ("vmlinux", "initrd.img", "manifest.json")
# Imported once after install: a wrong interpreter or a missing dependency fails here, not
# in the first pod.
SMOKE_IMPORTS = "import grpc, psutil, pyroute2, qemu.qmp, shim.task_service, shim.cli.shim_main"


@dataclass(frozen=True)
class Prefix:
    root: PurePosixPath  # a node path

    @property
    def bin(self) -> PurePosixPath:
        return self.root / "bin"

    @property
    def lib(self) -> PurePosixPath:
        return self.root / "lib" / "python"

    @property
    def python_home(self) -> PurePosixPath:
        return self.root / "python"

    @property
    def guest(self) -> PurePosixPath:
        return self.root / "share" / "guest"

    @property
    def default_config(self) -> PurePosixPath:
        return self.root / "etc" / "configuration.toml"

    @property
    def record(self) -> PurePosixPath:
        return self.root / "install-record.json"

    def wrapper(self, name: str) -> PurePosixPath:
        return self.bin / name


# -- trees --------------------------------------------------------------------------------------

def sync_tree(src: Path, dst: Path) -> bool:
    """Make *dst* a copy of *src* (files, symlinks, modes); only what differs is written."""
    if not src.is_dir():
        raise InstallError(f"{src} is not a directory")
    changed = False
    wanted: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        wanted.add(rel)
        for name in sorted(filenames) + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            s, d = Path(dirpath) / name, dst / rel / name
            wanted.add(rel / name)
            changed |= _sync_entry(s, d)
    for dirpath, dirnames, filenames in os.walk(dst, topdown=False):
        for name in filenames + dirnames:
            p = Path(dirpath) / name
            if p.relative_to(dst) not in wanted:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                changed = True
    return changed


def _sync_entry(s: Path, d: Path) -> bool:
    if s.is_symlink():
        target = os.readlink(s)
        if d.is_symlink() and os.readlink(d) == target:
            return False
        if d.exists() or d.is_symlink():
            d.unlink()
        d.symlink_to(target)
        return True
    mode = s.stat().st_mode & 0o7777
    if d.is_file() and not d.is_symlink() and filecmp.cmp(s, d, shallow=False):
        if (d.stat().st_mode & 0o7777) != mode:
            os.chmod(d, mode)
            return True
        return False
    tmp = d.with_name(f".{d.name}.graft-tmp")
    shutil.copyfile(s, tmp)
    os.chmod(tmp, mode)
    os.replace(tmp, d)
    return True


def copy_guest_image(host: Host, prefix: Prefix, source: Path) -> bool:
    missing = [n for n in GUEST_FILES if not (source / n).is_file()]
    if missing:
        raise InstallError(f"guest image {source}: missing {', '.join(missing)} "
                           "(build it with `graft guest build --output DIR`)")
    target = host.path(prefix.guest)
    target.mkdir(parents=True, exist_ok=True)
    changed = False
    for name in GUEST_FILES:
        changed |= _sync_entry(source / name, target / name)
    return changed


# -- python ---------------------------------------------------------------------------------

def wheels_digest(wheels: Path) -> str:
    files = sorted(wheels.glob("*.whl"))
    if not any(f.name.startswith("graft-") for f in files):
        raise InstallError(f"{wheels}: no graft-*.whl (build with `pip wheel -w DIR .`)")
    h = hashlib.sha256(f"python {sys.version_info[0]}.{sys.version_info[1]}\n".encode())
    for f in files:
        h.update(f"{f.name} {hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def check_interpreter(host: Host, python: str) -> None:
    """pip runs here with this interpreter: the node's one must be the same Python minor
    (compiled wheels such as grpcio are built for it)."""
    done = host.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                    f"running the node's python {python}")
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if done.stdout.strip() != here:
        raise InstallError(f"{python} is Python {done.stdout.strip()}, the installer runs "
                           f"{here}: the wheels need the same version")


def install_packages(host: Host, prefix: Prefix, wheels: Path) -> None:
    """pip install --target into a fresh directory, then swap it in (a failed install leaves
    the previous one working)."""
    lib = host.path(prefix.lib)
    staging = lib.with_name("python.new")
    shutil.rmtree(staging, ignore_errors=True)
    argv = [sys.executable, "-m", "pip", "install", "--isolated", "--no-index",
            "--find-links", str(wheels), "--target", str(staging), "--no-warn-conflicts",
            "--disable-pip-version-check", "--quiet", "graft"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise InstallError(f"pip install from {wheels} failed: {done.stderr.strip()[-2000:]}")
    shutil.rmtree(staging / "bin", ignore_errors=True)  # pip's scripts name this interpreter
    old = lib.with_name("python.old")
    shutil.rmtree(old, ignore_errors=True)
    if lib.exists():
        os.replace(lib, old)
    os.replace(staging, lib)
    shutil.rmtree(old, ignore_errors=True)


def _environment(prefix: Prefix, config: str) -> str:
    return (f"export PYTHONPATH={shlex.quote(str(prefix.lib))} PYTHONDONTWRITEBYTECODE=1\n"
            f"export GRAFT_CONFIG=\"${{GRAFT_CONFIG:-{config}}}\"\n")


def write_wrappers(host: Host, prefix: Prefix, python: str, config: str) -> bool:
    from shim.cli.launcher import render_launcher

    changed = False
    for name, module in WRAPPERS.items():
        if name == SHIM_NAME:
            text = render_launcher(python, [str(prefix.lib)], {"GRAFT_CONFIG": config})
        else:
            text = (f"#!/bin/sh\n# {name}: installed by graft's node installer, removed with it.\n"
                    f"{_environment(prefix, shlex.quote(config))}"
                    f"exec {shlex.quote(python)} -s -m {module} \"$@\"\n")
        changed |= write_if_changed(host.path(prefix.wrapper(name)), text.encode(), 0o755)
    return changed


def smoke_test(host: Host, prefix: Prefix, python: str) -> None:
    host.run(["env", f"PYTHONPATH={prefix.lib}", "PYTHONDONTWRITEBYTECODE=1", python, "-s",
              "-c", SMOKE_IMPORTS], "importing the installed graft")


# -- containerd's PATH ------------------------------------------------------------------------

def link_shim(host: Host, prefix: Prefix, shim_dir: str) -> tuple[str, bool]:
    """Symlink the shim into *shim_dir* (on containerd's PATH); (node path, changed)."""
    link_node = str(PurePosixPath(shim_dir) / SHIM_NAME)
    link, target = host.path(link_node), str(prefix.wrapper(SHIM_NAME))
    if link.is_symlink() and os.readlink(link) == target:
        return link_node, False
    if link.exists() or link.is_symlink():
        raise InstallError(f"{link_node} exists and is not the installer's link to {target}: "
                           "another graft install? remove it first")
    if not link.parent.is_dir():
        raise InstallError(f"--shim-dir {shim_dir} does not exist on the node")
    link.symlink_to(target)
    return link_node, True


def unlink_shim(host: Host, prefix: Prefix, link_node: str) -> None:
    link = host.path(link_node)
    if link.is_symlink() and os.readlink(link) == str(prefix.wrapper(SHIM_NAME)):
        link.unlink()


def remove_files(host: Host, prefix: Prefix, python_runtime: bool, guest_image: bool) -> None:
    """Everything the installer put under the prefix but the record (the caller removes it
    last, then the prefix itself if the installer created it)."""
    for name in WRAPPERS:
        host.path(prefix.wrapper(name)).unlink(missing_ok=True)
    for tree, ours in ((prefix.lib, True), (prefix.python_home, python_runtime),
                       (prefix.guest, guest_image)):
        if ours:
            shutil.rmtree(host.path(tree), ignore_errors=True)
    for leftover in (prefix.lib.with_name("python.new"), prefix.lib.with_name("python.old")):
        shutil.rmtree(host.path(leftover), ignore_errors=True)
    root = host.path(prefix.root)
    for directory in (prefix.bin, prefix.lib.parent, prefix.guest.parent, prefix.root / "etc"):
        remove_empty_dirs(host.path(directory), root)

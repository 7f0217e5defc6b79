"""`graft factory init` and `destroy`: build and remove the template.

A build boots a VM whose RAM is a shared file on the template tmpfs, waits
until its agent answers a health check, pauses it, saves its device state
next to the RAM file, stops it and writes metadata.json last. It builds into
a fresh tpl-<stamp> directory and then swaps the `current` symlink, so a
reader never sees a half-written template and clones of the previous one keep
their (unlinked) memory file intact.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from shim.agent.client import AgentClient
from shim.config import GraftConfig
from shim.hypervisor.base import FileBackedMemoryConfig, VmPaths
from shim.sandbox.preflight import check_memory

from . import tmpfs
from .boot import _connect, make_hypervisor, template_hypervisor_config
from .boot_nic import open_template_tap
from .clh_snapshot import make_memory_private
from .metadata import (MEMORY_FILE, METADATA_FILE, HypervisorRecord, SavedFile,
                       TemplateMetadata, identity_sha256, write_metadata)
from .template import (CURRENT_LINK, DIGEST_CACHE_FILE, TEMPLATE_DIR_PREFIX, Template,
                       current_facts, current_template_dir, digest_cache, inspect_template)
from .validate import HASHED_FILE_LIMIT

log = logging.getLogger(__name__)

MIB = 1 << 20
TMPFS_HEADROOM = 8 * MIB  # device state, metadata, digest cache
BUILD_VM_PREFIX = "template-"


# Files a build makes on the tmpfs (its directory, memory, state, metadata, temporaries).
BUILD_INODES = 8


class FactoryBusy(RuntimeError):
    """Another `graft factory` command holds the lock."""


class TemplateTmpfsFull(OSError):
    """The template cannot be written: its tmpfs has no room left (it is grown as needed, so
    what is missing is free inodes or space something else took)."""


@dataclass(frozen=True)
class InitResult:
    built: bool  # False: a usable template was already there
    template: Template
    seconds: float
    replaced: tuple[str, ...] = ()  # why an existing template was rebuilt


def memory_bytes(config: GraftConfig) -> int:
    return int(config.get("hypervisor", "memory_mib")) * MIB


@contextlib.contextmanager
def factory_lock(config: GraftConfig) -> Iterator[None]:
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = config.state_dir / "factory.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FactoryBusy(f"another `graft factory` command is running ({path} is locked)") \
                from None
        yield
    finally:
        os.close(fd)


def _mount_tmpfs_once(root: Path, size: int) -> None:
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    fstype = tmpfs.mounted_fstype(root)
    if fstype is None:
        tmpfs.mount_tmpfs(root, size)
        log.info("mounted a %d MiB tmpfs on %s", size // MIB, root)
    elif fstype != "tmpfs":
        raise OSError(f"{root} is a {fstype} mount, not a tmpfs: choose another "
                      f"[factory] template_path")


def _make_room(root: Path, needed: int) -> None:
    """Grow the tmpfs so *needed* more bytes fit: the old template and the
    unlinked memory of clones still running still use space."""
    want = tmpfs.used_bytes(root) + needed
    if tmpfs.size_bytes(root) < want:
        tmpfs.resize_tmpfs(root, want)
        log.info("resized the tmpfs on %s to %d MiB", root, want // MIB)


def _tmpfs_full(root: Path, needed: int, why: str = "") -> TemplateTmpfsFull:
    return TemplateTmpfsFull(
        f"template tmpfs {root} is full{': ' + why if why else ''} "
        f"({tmpfs.free_bytes(root) // MIB} MiB and {tmpfs.free_inodes(root)} inodes free; a "
        f"template needs {needed // MIB} MiB and {BUILD_INODES} inodes): remove what else is "
        f"stored there, or choose another [factory] template_path")


def _check_room(root: Path, needed: int) -> None:
    if tmpfs.free_bytes(root) < needed or tmpfs.free_inodes(root) < BUILD_INODES:
        raise _tmpfs_full(root, needed)


def _create_memory_file(path: Path, size: int) -> None:
    """Allocated in full, not sparse: a clone maps it privately, but a read fault on a hole of
    a tmpfs file allocates a page *in the tmpfs* — on a full tmpfs the clone's VMM then dies
    of SIGBUS, and clones of an older (unlinked) template would keep taking room the rebuild
    counted on. Allocated, the template takes its full size once, here, and clones never
    take any (their writes are copies in their own memory)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def _remove_stale(root: Path, keep: Path | None) -> None:
    """Template dirs other than *keep*, half-made links (interrupted builds)."""
    for entry in root.iterdir():
        if entry == keep:
            continue
        if entry.name.startswith(TEMPLATE_DIR_PREFIX) and entry.is_dir() \
                and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith(f".{CURRENT_LINK}."):
            entry.unlink(missing_ok=True)


def _remove_stale_build_vms(config: GraftConfig) -> None:
    # Run dirs of builds whose process died (their VMM died with it: PDEATHSIG).
    factory_run = config.state_dir / "factory"
    if factory_run.is_dir():
        for entry in factory_run.iterdir():
            if entry.name.startswith(BUILD_VM_PREFIX):
                shutil.rmtree(entry, ignore_errors=True)


def _swap_current(root: Path, directory: Path) -> None:
    tmp_link = root / f".{CURRENT_LINK}.{secrets.token_hex(4)}"
    os.symlink(directory.name, tmp_link)
    os.replace(tmp_link, root / CURRENT_LINK)


def _saved_files(directory: Path) -> tuple[SavedFile, ...]:
    """Record what the VMM's save produced (0600 from now on)."""
    digests = digest_cache(directory.parent)
    saved = []
    for path in sorted(directory.iterdir()):
        if path.name in (MEMORY_FILE, METADATA_FILE) or not path.is_file():
            continue
        os.chmod(path, 0o600)
        size = path.stat().st_size
        saved.append(SavedFile(name=path.name, size=size,
                               sha256=digests.sha256(path) if size <= HASHED_FILE_LIMIT
                               else None))
    return tuple(saved)


async def _boot_and_save(config: GraftConfig, directory: Path, vm_id: str) -> tuple[str, bool]:
    """Cold-boot the template VM, save it into *directory*; returns the VMM
    version and whether it can map the memory read-only for clones. The VM is always
    stopped."""
    memory = directory / MEMORY_FILE
    hv_config = template_hypervisor_config(config, FileBackedMemoryConfig(memory, shared=True))
    run_dir = config.state_dir / "factory" / vm_id
    paths = VmPaths(run_dir=run_dir, shared_dir=run_dir / "shared")
    # The share device must exist in the template (clones use it) but stays
    # unmounted in the guest: no CreateSandbox is ever sent to this VM.
    paths.shared_dir.mkdir(parents=True, mode=0o700)
    vm = make_hypervisor(config, vm_id, hv_config, paths, None)
    agent: AgentClient | None = None
    try:
        started = asyncio.get_running_loop().time()
        if hv_config.boot_nic_mac:
            vm.boot_nic_fd = open_template_tap(vm_id)
        try:
            await vm.start_vm()
        finally:
            if vm.boot_nic_fd is not None:  # QEMU holds its own: the tap ends with it
                os.close(vm.boot_nic_fd)
                vm.boot_nic_fd = None
        agent = await _connect(config, vm, started)
        version = await vm.version()
        # The agent session stays open until the VM is gone. Closing it first
        # would save the agent at a random point of noticing the hang-up;
        # this way every clone starts alike: right after restore its host
        # side is gone, the agent ends that session and serves the clone's
        # shim in a new one. The agent keeps its port open meanwhile, so a
        # request the clone's shim sends early is served, not discarded
        # (boot.restore_clone still reconnects as a safety net).
        await vm.pause_vm()
        await vm.save_vm(directory)
        return version, await vm.private_readonly_memory()
    finally:
        await vm.stop_vm()
        if agent is not None:
            await agent.close()
        shutil.rmtree(run_dir, ignore_errors=True)


async def build_into(config: GraftConfig, directory: Path) -> TemplateMetadata:
    """Build a complete template in the empty *directory* (metadata last)."""
    facts = current_facts(config)  # raises GuestImageMissing before anything starts
    digests = digest_cache(directory.parent)
    kernel_sha256 = digests.sha256(facts.kernel)
    initrd_sha256 = digests.sha256(facts.initrd)
    binary_sha256 = digests.sha256(facts.binary) if facts.binary else None
    size = memory_bytes(config)
    _create_memory_file(directory / MEMORY_FILE, size)
    vm_id = f"{BUILD_VM_PREFIX}{secrets.token_hex(4)}"
    version, readonly_memory = await _boot_and_save(config, directory, vm_id)
    if facts.kind == "clh":
        make_memory_private(directory)
    metadata = TemplateMetadata(
        hypervisor=HypervisorRecord(kind=facts.kind, version=version,
                                    binary=str(facts.binary) if facts.binary else None,
                                    binary_sha256=binary_sha256,
                                    private_readonly_memory=readonly_memory),
        accelerator=facts.accelerator,
        identity=facts.identity,
        identity_sha256=identity_sha256(facts.identity),
        memory_bytes=size,
        kernel_sha256=kernel_sha256,
        initrd_sha256=initrd_sha256,
        files=_saved_files(directory),
    )
    write_metadata(directory, metadata)
    return metadata


async def init_template(config: GraftConfig) -> InitResult:
    """Make sure a usable template exists (idempotent)."""
    root = config.template_path
    started = time.monotonic()
    with factory_lock(config):
        needed = memory_bytes(config) + TMPFS_HEADROOM
        _mount_tmpfs_once(root, needed)
        status = inspect_template(config)
        if status.usable:
            assert status.directory is not None and status.metadata is not None
            return InitResult(False, Template(status.directory, status.metadata), 0.0)
        if status.directory is not None:
            log.info("rebuilding the template: %s", "; ".join(status.problems))
        _remove_stale(root, keep=current_template_dir(root))
        _remove_stale_build_vms(config)
        # The template VM's RAM ends up in the tmpfs: the host must hold it (and the VMM).
        check_memory(memory_bytes(config) // MIB, "the template VM")
        _make_room(root, needed)
        _check_room(root, needed)
        directory = root / f"{TEMPLATE_DIR_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}-" \
                           f"{secrets.token_hex(3)}"
        try:
            directory.mkdir(mode=0o700)
            metadata = await build_into(config, directory)
            _swap_current(root, directory)
        except BaseException as exc:
            shutil.rmtree(directory, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise _tmpfs_full(root, needed, str(exc)) from exc
            raise
        _remove_stale(root, keep=directory)
        replaced = status.problems if status.directory is not None else ()
        return InitResult(True, Template(directory, metadata), time.monotonic() - started,
                          replaced)


def destroy_template(config: GraftConfig) -> list[str]:
    """Remove the template and unmount its tmpfs; what was done, in words.
    Safe when nothing is there."""
    root = config.template_path
    done: list[str] = []
    with factory_lock(config):
        if not root.exists():
            return done
        link = root / CURRENT_LINK
        if link.is_symlink():
            link.unlink()
            done.append(f"removed {link}")
        for entry in list(root.iterdir()):
            if entry.name.startswith(TEMPLATE_DIR_PREFIX) and entry.is_dir():
                shutil.rmtree(entry)
                done.append(f"removed {entry}")
            elif entry.name == DIGEST_CACHE_FILE or entry.name.startswith(f".{CURRENT_LINK}."):
                entry.unlink(missing_ok=True)
        _remove_stale_build_vms(config)
        if tmpfs.unmount_tmpfs(root):
            done.append(f"unmounted the tmpfs on {root}")
        with contextlib.suppress(OSError):
            root.rmdir()  # only if empty: never remove what is not ours
    return done

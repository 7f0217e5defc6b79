"""`graft guest build`: a PVH kernel and an initramfs (busybox, python3.11, protobuf, crun,
runc, kernel modules, the agent) assembled from Debian packages and a PyPI wheel."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import importlib.metadata
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import manifest as manifest_file
from .agent import (AgentSources, ensure_generated, external_imports, locate_sources, sources_digest,
                    stage_agent)
from .config import (BUILDER_VERSION, DLOPEN_LIBRARIES, EARLY_MODULES, KERNEL_METAPACKAGE, KERNEL_MODULES,
                     LIBRARY_PACKAGES, PROGRAM_PACKAGES, PROTOBUF_PROJECT, PYTHON_MODULE_PACKAGES,
                     default_cache_dir)
from .cpio import CpioEntry, entries_from_tree, write_cpio
from .elf import is_elf, read_modinfo
from .errors import GuestImageError
from .extract import extract_deb, extract_wheel
from .init_script import DEFAULT_INIT_MODE, init_script
from .kernel import builtin_module_names, extract_pvh_elf, module_name, order_modules
from .layout import GRAFT_LIB, LIB_DIR, LOADER, Rootfs
from .libraries import index_libraries, resolve_closure
from .manifest import INITRD_NAME, KERNEL_NAME
from .python_runtime import STDLIB, compile_trees, stage_python, verify_imports
from .sources import DebRef, HostPackageSources, PackageSources, sha256_file
from .tools import run

Progress = Callable[[str], None]
COMPRESSIONS = ("none", "gzip")
DEFAULT_COMPRESSION = "none"

# Device nodes present before anything mounts devtmpfs: the kernel opens /dev/console for
# init's stdio, and python falls back to /dev/urandom for its hash seed while the kernel's
# CRNG is not ready yet (getrandom would fail with EAGAIN).
_DEVICE_NODES = [
    CpioEntry.char_device("dev/console", 5, 1),
    CpioEntry.char_device("dev/null", 1, 3, perm=0o666),
    CpioEntry.char_device("dev/zero", 1, 5, perm=0o666),
    CpioEntry.char_device("dev/random", 1, 8, perm=0o666),
    CpioEntry.char_device("dev/urandom", 1, 9, perm=0o666),
]

_STEPS = (
    "resolving packages",
    "fetching packages",
    "checking the cache",
    "unpacking packages",
    "extracting the kernel",
    "staging kernel modules",
    "staging python, protobuf, python3-seccomp and the agent",
    "staging busybox, crun, runc and shared libraries",
    "byte-compiling and checking python imports",
    "writing the initramfs",
    "writing the manifest",
)


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    manifest: Path
    kernel_version: str = ""
    cached: bool = False


def stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def build_guest_image(output_dir: Path, *, force: bool = False, progress: Progress = stderr_progress,
                      cache_dir: Path | None = None, sources: PackageSources | None = None,
                      compression: str = DEFAULT_COMPRESSION, init_mode: str = DEFAULT_INIT_MODE,
                      agent_sources: AgentSources | None = None) -> GuestImage:
    """Build (or reuse, when every input digest is unchanged) the guest image in `output_dir`."""
    if compression not in COMPRESSIONS:
        raise GuestImageError(f"unknown initramfs compression {compression!r} (expected {', '.join(COMPRESSIONS)})")
    init_script(init_mode)  # validates the mode before any work
    output_dir = Path(output_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GuestImageError(f"cannot create {exc.filename}: {exc.strerror}") from exc
    sources = sources or HostPackageSources(resolution_cache=cache_dir / "apt-resolution.json")
    build = _Build(output_dir, cache_dir, sources, progress, compression, init_mode,
                   agent_sources)
    with _exclusive(output_dir):
        return build.run(force)


@contextlib.contextmanager
def _exclusive(output_dir: Path) -> Iterator[None]:
    """One build per output directory at a time."""
    with open(output_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class _Build:
    def __init__(self, output_dir: Path, cache_dir: Path, sources: PackageSources, progress: Progress,
                 compression: str, init_mode: str, agent_sources: AgentSources | None) -> None:
        self.output_dir = output_dir
        self.cache_dir = cache_dir
        self.sources = sources
        self.progress = progress
        self.compression = compression
        self.init_mode = init_mode
        self.agent_sources = agent_sources
        self.step_no = 0
        self.facts: dict[str, Any] = {}

    def step(self, detail: str = "") -> None:
        self.step_no += 1
        text = _STEPS[self.step_no - 1]
        self.progress(f"[{self.step_no}/{len(_STEPS)}] {text}{' ' + detail if detail else ''}")

    def run(self, force: bool) -> GuestImage:
        started = time.monotonic()
        self.step()
        debs, kernel = self.sources.resolve(list(PROGRAM_PACKAGES + PYTHON_MODULE_PACKAGES + LIBRARY_PACKAGES),
                                           KERNEL_METAPACKAGE)
        protobuf_version = _host_protobuf_version()
        agent = self.agent_sources or locate_sources()
        ensure_generated(agent)

        refs = [kernel, *debs]
        missing = [r for r in refs if not (self.cache_dir / "debs" / r.filename).is_file()]
        self.step(f"({len(missing)} of {len(refs)} .deb files to download, protobuf=={protobuf_version})"
                  if missing else f"(all {len(refs)} .deb files in {self.cache_dir / 'debs'})")
        deb_paths = self.sources.fetch_debs(refs, self.cache_dir / "debs")
        wheel = self.sources.fetch_wheel(PROTOBUF_PROJECT, protobuf_version, self.cache_dir / "wheels")

        self.step()
        inputs = {
            "builder": {"version": BUILDER_VERSION, "source_sha256": manifest_file.builder_digest()},
            "debs": {r.filename: r.sha256 or sha256_file(deb_paths[r.name]) for r in refs},
            "wheels": {wheel.name: sha256_file(wheel)},
            "agent_sha256": sources_digest(agent),
            "options": {"compression": self.compression, "init": self.init_mode},
        }
        previous = manifest_file.load(self.output_dir)
        if not force and manifest_file.is_up_to_date(previous, inputs, self.output_dir):
            self.progress(f"guest image in {self.output_dir} is up to date (all input digests match "
                          f"manifest.json); nothing to build")
            return self._image(previous or {}, cached=True)

        with tempfile.TemporaryDirectory(prefix="graft-guest-", dir=self.cache_dir) as work_dir:
            work = Path(work_dir)
            built = self._build(work, kernel, debs, deb_paths, wheel, agent)
            built["inputs"] = inputs
            built["packages"] = {r.name: r.version for r in refs}
            built["protobuf"] = {"version": protobuf_version, "wheel": wheel.name,
                                 "backend": self.facts.get("protobuf_backend")}
            built["build_seconds"] = round(time.monotonic() - started, 1)
            built["built_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            self.step()
            for name in (KERNEL_NAME, INITRD_NAME):
                _install(work / name, self.output_dir / name)
            manifest_file.write(self.output_dir, built)
        self.progress(f"guest image written to {self.output_dir} in {built['build_seconds']} s "
                      f"(initrd {built['outputs'][INITRD_NAME]['size'] / 1e6:.1f} MB)")
        return self._image(built, cached=False)

    def _image(self, manifest: dict[str, Any], cached: bool) -> GuestImage:
        return GuestImage(kernel=self.output_dir / KERNEL_NAME, initrd=self.output_dir / INITRD_NAME,
                          manifest=self.output_dir / manifest_file.MANIFEST_NAME,
                          kernel_version=manifest.get("kernel", {}).get("version", ""), cached=cached)

    # -- the build proper ---------------------------------------------------------------------

    def _build(self, work: Path, kernel: DebRef, debs: list[DebRef], deb_paths: dict[str, Path],
               wheel: Path, agent: AgentSources) -> dict[str, Any]:
        self.step()
        pkg_roots: dict[str, Path] = {}
        for ref in debs:
            pkg_roots[ref.name] = work / "pkgs" / ref.name
            extract_deb(deb_paths[ref.name], pkg_roots[ref.name])
        rootfs = Rootfs(work / "root")
        rootfs.create_skeleton()

        kernel_version = _kernel_version(kernel)
        self.step(f"({kernel.name} {kernel.version})")
        kernel_root = work / "pkgs" / kernel.name
        vmlinuz, module_paths, builtin = self._extract_kernel(deb_paths[kernel.name], kernel_root, kernel_version)
        vmlinux = extract_pvh_elf(vmlinuz.read_bytes(), name=f"{kernel.name}:/boot/{vmlinuz.name}")
        (work / KERNEL_NAME).write_bytes(vmlinux)

        self.step()
        order = order_modules(list(KERNEL_MODULES), module_paths, builtin)
        guest_modules = []
        for path in order.files:
            guest = "/" + path.relative_to(kernel_root).as_posix()
            rootfs.copy_file(path, guest, mode=0o644)
            guest_modules.append(guest)
        rootfs.write_file(f"{GRAFT_LIB}/modules.list", "".join(m + "\n" for m in guest_modules))
        early = order_modules(list(EARLY_MODULES), module_paths, builtin).files
        early_modules = ["/" + path.relative_to(kernel_root).as_posix() for path in early]

        self.step()
        stage_python(rootfs, [pkg_roots[n] for n in PROGRAM_PACKAGES if "python" in n])
        extract_wheel(wheel, rootfs.path / GRAFT_LIB, select=_is_protobuf_runtime_file)
        for name in PYTHON_MODULE_PACKAGES:
            _stage_dist_packages(rootfs, pkg_roots[name], name)
        agent_dirs = stage_agent(rootfs, agent)

        self.step()
        applets = self._stage_programs(rootfs, pkg_roots)
        closure = resolve_closure(_elf_files(rootfs), index_libraries(list(pkg_roots.values())), DLOPEN_LIBRARIES)
        for soname, path in sorted(closure.libraries.items()):
            rootfs.copy_file(path, f"{LIB_DIR}/{soname}")
        for interpreter in closure.interpreters:
            if interpreter.lstrip("/") != "lib64/ld-linux-x86-64.so.2":
                raise GuestImageError(f"unexpected program interpreter {interpreter}")
        rootfs.symlink(LOADER, "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")

        self.step()
        compile_trees(rootfs, [(STDLIB, True), (f"{GRAFT_LIB}/google", True)]
                      + [(d, False) for d in agent_dirs])
        self.facts["protobuf_backend"] = verify_imports(
            rootfs, GRAFT_LIB, ["graft_agent.api", "shim.ttrpc", *external_imports(agent)])
        self._stage_etc_and_init(rootfs, early_modules)

        self.step(f"({self.compression})")
        entries = entries_from_tree(rootfs.path) + _DEVICE_NODES
        uncompressed = self._write_initrd(work / INITRD_NAME, entries)

        return {
            "builder_version": BUILDER_VERSION,
            "kernel": {"package": kernel.name, "package_version": kernel.version, "version": kernel_version,
                       "pvh": True},
            "modules": guest_modules,
            "modules_added_as_dependencies": list(order.added_dependencies),
            "libraries": sorted(closure.libraries),
            "busybox_applets": applets,
            "init": {"mode": self.init_mode, "early_modules": early_modules,
                     "command": init_script(self.init_mode).splitlines()[-1]},
            "initrd": {"compression": self.compression, "entries": len(entries),
                       "uncompressed_size": uncompressed},
            "outputs": {name: {"size": (work / name).stat().st_size, "sha256": sha256_file(work / name)}
                        for name in (KERNEL_NAME, INITRD_NAME)},
        }

    def _extract_kernel(self, deb: Path, root: Path, version: str) -> tuple[Path, dict[str, Path], set[str]]:
        vmlinuz_rel = f"boot/vmlinuz-{version}"
        moddir = f"lib/modules/{version}/"
        wanted = {module_name(m) for m in KERNEL_MODULES}

        def select(rel: str) -> bool:
            return (rel == vmlinuz_rel or rel == moddir + "modules.builtin"
                    or (rel.startswith(moddir + "kernel/") and module_name(rel) in wanted and rel.endswith(".ko")))

        # A module may depend on one not asked for: extract again until the set is closed.
        for _ in range(4):
            extract_deb(deb, root, select)
            vmlinuz = root / vmlinuz_rel
            if not vmlinuz.is_file():
                raise GuestImageError(f"kernel image /{vmlinuz_rel} is missing from {deb.name}")
            builtin_file = root / moddir / "modules.builtin"
            builtin = builtin_module_names(builtin_file.read_text()) if builtin_file.is_file() else set()
            modules = {module_name(p): p for p in (root / moddir / "kernel").rglob("*.ko")}
            deps = {module_name(d) for p in modules.values()
                    for d in read_modinfo(p).get("depends", [""])[0].split(",") if d}
            extra = deps - set(modules) - builtin
            if not extra or extra <= wanted:
                return vmlinuz, modules, builtin
            wanted |= extra
        return vmlinuz, modules, builtin

    def _stage_programs(self, rootfs: Rootfs, pkg_roots: dict[str, Path]) -> int:
        busybox = rootfs.copy_file(pkg_roots["busybox-static"] / "bin/busybox", "/usr/bin/busybox", mode=0o755)
        rootfs.copy_file(pkg_roots["crun"] / "usr/bin/crun", "/usr/bin/crun", mode=0o755)
        rootfs.copy_file(pkg_roots["runc"] / "usr/sbin/runc", "/usr/sbin/runc", mode=0o755)
        rootfs.symlink("/usr/bin/runc", "../sbin/runc")
        # busybox is static, so the host can ask it for its applet list.
        applets = run([str(busybox), "--list-full"], what="listing busybox applets").split()
        count = 0
        for applet in applets:
            if not rootfs.exists("/" + applet):
                rootfs.symlink("/" + applet, "/usr/bin/busybox")
                count += 1
        return count

    def _stage_etc_and_init(self, rootfs: Rootfs, early_modules: list[str]) -> None:
        rootfs.write_file("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        rootfs.write_file("/etc/group", "root:x:0:\nnogroup:x:65534:\n")
        rootfs.write_file("/etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n")
        (rootfs.path / "newroot").mkdir(exist_ok=True)
        rootfs.write_file("/init", init_script(self.init_mode, early_modules), mode=0o755)

    def _write_initrd(self, target: Path, entries: list[CpioEntry]) -> int:
        with target.open("wb") as raw:
            if self.compression == "gzip":
                with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
                    return write_cpio(gz, entries)
            return write_cpio(raw, entries)


def _install(built: Path, target: Path) -> None:
    """Move a finished output into place atomically, also across filesystems."""
    try:
        os.replace(built, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise GuestImageError(f"cannot write {target}: {exc.strerror}") from exc
        staging = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(built, staging)
        os.replace(staging, target)


def _stage_dist_packages(rootfs: Rootfs, package_root: Path, name: str) -> None:
    """A Debian python3-* package's modules, next to the agent (on the guest's PYTHONPATH)."""
    dist = package_root / "usr/lib/python3/dist-packages"
    files = [p for p in dist.rglob("*") if p.is_file()] if dist.is_dir() else []
    if not files:
        raise GuestImageError(f"{name} has no /usr/lib/python3/dist-packages files")
    for path in files:
        rootfs.copy_file(path, f"{GRAFT_LIB}/{path.relative_to(dist).as_posix()}", mode=0o644)


def _is_protobuf_runtime_file(rel: str) -> bool:
    """From the protobuf wheel: the google.protobuf package minus type stubs and test helpers."""
    return rel.startswith("google/") and not rel.endswith(".pyi") and "/testdata/" not in rel


def _elf_files(rootfs: Rootfs) -> dict[str, Path]:
    """Guest path -> host file for every ELF program or extension module outside the library dir."""
    found = {}
    for dirpath, _dirs, files in os.walk(rootfs.path):
        for name in files:
            path = Path(dirpath, name)
            rel = path.relative_to(rootfs.path).as_posix()
            if not rel.startswith(("usr/lib/modules/", LIB_DIR + "/")) and not path.is_symlink() and is_elf(path):
                found["/" + rel] = path
    return found


def _kernel_version(kernel: DebRef) -> str:
    prefix = "linux-image-"
    if not kernel.name.startswith(prefix):
        raise GuestImageError(f"{kernel.name} is not a linux-image package")
    return kernel.name[len(prefix):]


def _host_protobuf_version() -> str:
    try:
        return importlib.metadata.version("protobuf")
    except importlib.metadata.PackageNotFoundError as exc:
        raise GuestImageError("the host has no protobuf installed; the guest gets the same version "
                              "(pip install protobuf)") from exc

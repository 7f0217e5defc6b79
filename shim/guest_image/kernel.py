"""Kernel side of the guest image: the PVH ELF inside a bzImage, and module load order."""
from __future__ import annotations

import lzma
from dataclasses import dataclass
from pathlib import Path

from .elf import ELF_MAGIC, has_pvh_entry, read_modinfo
from .errors import GuestImageError

XZ_MAGIC = b"\xfd7zXZ\x00"


def extract_pvh_elf(bzimage: bytes, *, name: str = "bzImage") -> bytes:
    """Return the uncompressed vmlinux ELF embedded in an xz-compressed bzImage.

    The bzImage is a real-mode setup + decompressor stub + an xz stream +
    trailing data (the decompressor's relocation info etc.). The first xz
    stream that decodes to an ELF is the kernel; anything after the stream's
    end is ignored. QEMU boots that ELF through its PVH note, skipping the
    in-guest decompression (seconds under TCG).
    """
    start = bzimage.find(XZ_MAGIC)
    if start < 0:
        raise GuestImageError(f"{name}: no xz stream found (is the kernel xz-compressed?)")
    last_error = ""
    while start >= 0:
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        try:
            elf = decompressor.decompress(bzimage[start:])
        except lzma.LZMAError as exc:
            last_error = str(exc)
        else:
            if decompressor.eof and elf[:4] == ELF_MAGIC:
                if not has_pvh_entry(elf):
                    raise GuestImageError(f"{name}: the kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")
                return elf
            last_error = "stream is truncated" if not decompressor.eof else "stream does not hold an ELF"
        start = bzimage.find(XZ_MAGIC, start + 1)
    raise GuestImageError(f"{name}: could not extract the kernel ELF from its xz stream: {last_error}")


def module_name(path: Path | str) -> str:
    """The kernel's name for a module file: virtio-rng.ko -> virtio_rng."""
    base = Path(path).name
    for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


@dataclass(frozen=True)
class ModuleOrder:
    files: tuple[Path, ...]          # load order, dependencies first
    added_dependencies: tuple[str, ...]  # modules pulled in that were not asked for


def order_modules(requested: list[str], available: dict[str, Path], builtin: set[str]) -> ModuleOrder:
    """Order `requested` modules (and their `depends=`) so each loads after its dependencies.

    `available` maps module name -> .ko file; `builtin` are names compiled into
    the kernel (listed in modules.builtin), which need no file.
    """
    ordered: list[Path] = []
    done: set[str] = set()
    added: list[str] = []
    wanted = {module_name(r) for r in requested}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in done or name in builtin:
            return
        if name in chain:
            raise GuestImageError(f"kernel module dependency cycle: {' -> '.join(chain + (name,))}")
        path = available.get(name)
        if path is None:
            needed_by = f" (needed by {chain[-1]})" if chain else ""
            raise GuestImageError(f"kernel module {name}{needed_by} is not in the kernel package")
        depends = read_modinfo(path).get("depends", [""])[0]
        for dep in filter(None, depends.split(",")):
            visit(module_name(dep), chain + (name,))
        done.add(name)
        ordered.append(path)
        if name not in wanted:
            added.append(name)

    for name in requested:
        visit(module_name(name), ())
    return ModuleOrder(tuple(ordered), tuple(added))


def builtin_module_names(modules_builtin: str) -> set[str]:
    """Names from a modules.builtin file (one kernel/.../x.ko path per line)."""
    return {module_name(line.strip()) for line in modules_builtin.splitlines() if line.strip()}

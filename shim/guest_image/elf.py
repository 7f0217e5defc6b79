"""A small reader for the parts of 64-bit little-endian ELF files the builder needs.

DT_NEEDED / PT_INTERP to compute the shared-library closure of the guest's
binaries, the `.modinfo` section to order kernel modules by their `depends=`,
and ELF notes to check that a kernel has a PVH entry point.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import GuestImageError

ELF_MAGIC = b"\x7fELF"
_ELFCLASS64 = 2
_ELFDATA2LSB = 1

_PT_LOAD = 1
_PT_DYNAMIC = 2
_PT_INTERP = 3
_PT_NOTE = 4

_DT_NULL = 0
_DT_NEEDED = 1
_DT_STRTAB = 5
_DT_SONAME = 14

# Xen ELF note announcing the 32-bit PVH entry point (what QEMU's -kernel uses).
_XEN_ELFNOTE_PHYS32_ENTRY = 18


@dataclass(frozen=True)
class ElfDynamicInfo:
    needed: tuple[str, ...]
    interpreter: str | None
    soname: str | None


@dataclass(frozen=True)
class _Segment:
    type: int
    offset: int
    vaddr: int
    filesz: int


class _Elf:
    def __init__(self, data: bytes, name: str) -> None:
        if data[:4] != ELF_MAGIC:
            raise GuestImageError(f"{name}: not an ELF file")
        if data[4] != _ELFCLASS64 or data[5] != _ELFDATA2LSB:
            raise GuestImageError(f"{name}: only 64-bit little-endian ELF is supported")
        self.data = data
        self.name = name
        try:
            (self.phoff, self.shoff) = struct.unpack_from("<QQ", data, 0x20)
            (self.phentsize, self.phnum, self.shentsize, self.shnum, self.shstrndx) = (
                struct.unpack_from("<HHHHH", data, 0x36)
            )
        except struct.error as exc:
            raise GuestImageError(f"{name}: truncated ELF header") from exc

    def segments(self) -> list[_Segment]:
        out = []
        for i in range(self.phnum):
            base = self.phoff + i * self.phentsize
            p_type, _flags, offset, vaddr, _paddr, filesz = struct.unpack_from("<IIQQQQ", self.data, base)
            out.append(_Segment(p_type, offset, vaddr, filesz))
        return out

    def vaddr_to_offset(self, vaddr: int) -> int:
        for seg in self.segments():
            if seg.type == _PT_LOAD and seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                return seg.offset + (vaddr - seg.vaddr)
        raise GuestImageError(f"{self.name}: address {vaddr:#x} is not in any loaded segment")

    def cstring(self, offset: int) -> str:
        end = self.data.index(b"\0", offset)
        return self.data[offset:end].decode("utf-8", "surrogateescape")

    def sections(self) -> dict[str, tuple[int, int]]:
        """Section name -> (file offset, size)."""
        if self.shoff == 0 or self.shnum == 0:
            return {}
        headers = []
        for i in range(self.shnum):
            base = self.shoff + i * self.shentsize
            name_off, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", self.data, base)
            headers.append((name_off, offset, size))
        _n, strtab_off, _s = headers[self.shstrndx]
        return {self.cstring(strtab_off + name_off): (offset, size) for name_off, offset, size in headers}


def read_dynamic_info(path: Path) -> ElfDynamicInfo:
    """DT_NEEDED entries, DT_SONAME and the PT_INTERP program interpreter."""
    elf = _Elf(path.read_bytes(), str(path))
    interpreter = None
    dynamic = None
    for seg in elf.segments():
        if seg.type == _PT_INTERP:
            interpreter = elf.data[seg.offset : seg.offset + seg.filesz].rstrip(b"\0").decode()
        elif seg.type == _PT_DYNAMIC:
            dynamic = seg
    if dynamic is None:
        return ElfDynamicInfo((), interpreter, None)  # statically linked
    entries: list[tuple[int, int]] = []
    strtab_vaddr = None
    for pos in range(dynamic.offset, dynamic.offset + dynamic.filesz, 16):
        tag, value = struct.unpack_from("<qQ", elf.data, pos)
        if tag == _DT_NULL:
            break
        if tag == _DT_STRTAB:
            strtab_vaddr = value
        entries.append((tag, value))
    if strtab_vaddr is None:
        raise GuestImageError(f"{path}: dynamic section without a string table")
    strtab = elf.vaddr_to_offset(strtab_vaddr)
    needed = tuple(elf.cstring(strtab + v) for t, v in entries if t == _DT_NEEDED)
    sonames = [elf.cstring(strtab + v) for t, v in entries if t == _DT_SONAME]
    return ElfDynamicInfo(needed, interpreter, sonames[0] if sonames else None)


def read_modinfo(path: Path) -> dict[str, list[str]]:
    """The key=value strings of a kernel module's .modinfo section."""
    elf = _Elf(path.read_bytes(), str(path))
    section = elf.sections().get(".modinfo")
    if section is None:
        raise GuestImageError(f"{path}: kernel module without a .modinfo section")
    offset, size = section
    info: dict[str, list[str]] = {}
    for item in elf.data[offset : offset + size].split(b"\0"):
        if b"=" in item:
            key, _, value = item.decode("utf-8", "replace").partition("=")
            info.setdefault(key, []).append(value)
    return info


def has_pvh_entry(data: bytes) -> bool:
    """True if the ELF image carries the Xen PHYS32_ENTRY note QEMU needs for PVH boot."""
    elf = _Elf(data, "kernel")
    for seg in elf.segments():
        if seg.type != _PT_NOTE:
            continue
        pos, end = seg.offset, seg.offset + seg.filesz
        while pos + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", data, pos)
            name = data[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and note_type == _XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + _align4(namesz) + _align4(descsz)
    return False


def is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def _align4(n: int) -> int:
    return (n + 3) & ~3

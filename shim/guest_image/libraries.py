"""Shared-library closure of the guest's binaries, resolved against unpacked Debian packages
(never against the host's own /lib)."""
from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from .elf import is_elf, read_dynamic_info
from .errors import GuestImageError

# Where Debian packages put shared objects, in the loader's search order.
_LIB_SUBDIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "usr/lib64", "lib", "usr/lib")


@dataclass(frozen=True)
class LibraryClosure:
    libraries: dict[str, Path]   # soname -> file in an unpacked package that provides it
    interpreters: set[str]       # PT_INTERP paths the binaries ask for


def index_libraries(package_roots: list[Path]) -> dict[str, Path]:
    """File name -> path of every shared object in the packages' library directories."""
    index: dict[str, Path] = {}
    for root in package_roots:
        for sub in _LIB_SUBDIRS:
            directory = root / sub
            if not directory.is_dir():
                continue
            for name in sorted(os.listdir(directory)):
                path = directory / name
                if ".so" in name and name not in index and path.is_file():
                    index[name] = path
    return index


def resolve_closure(binaries: dict[str, Path], index: dict[str, Path], extra: tuple[str, ...] = ()) -> LibraryClosure:
    """Follow DT_NEEDED from `binaries` (guest path -> host file) through `index`.

    `extra` are sonames to ship although nothing links them (dlopen()ed).
    A missing library raises naming the soname and who needs it.
    """
    libraries: dict[str, Path] = {}
    interpreters: set[str] = set()
    queue: deque[tuple[str, Path]] = deque(binaries.items())
    for soname in extra:
        queue.append((f"(dlopen) {soname}", _lookup(soname, "dlopen list", index)))
        libraries[soname] = index[soname]
    while queue:
        who, path = queue.popleft()
        if not is_elf(path):
            continue
        info = read_dynamic_info(path)
        if info.interpreter:
            interpreters.add(info.interpreter)
        for soname in info.needed:
            if soname in libraries:
                continue
            libraries[soname] = _lookup(soname, who, index)
            queue.append((soname, libraries[soname]))
    for interpreter in interpreters:
        name = Path(interpreter).name
        if name not in libraries:
            libraries[name] = _lookup(name, f"program interpreter {interpreter}", index)
    return LibraryClosure(libraries, interpreters)


def _lookup(soname: str, who: str, index: dict[str, Path]) -> Path:
    path = index.get(soname)
    if path is None:
        raise GuestImageError(
            f"shared library {soname} (needed by {who}) is in none of the downloaded Debian packages; "
            f"add the package that ships it to LIBRARY_PACKAGES in shim/guest_image/config.py")
    return path

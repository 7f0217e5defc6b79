"""The guest's Python: a trimmed Debian python3.11, precompiled so the guest never compiles.

Bytecode is produced by the *guest's own* interpreter (run on the host through
the staged dynamic loader), so the magic number always matches; pyc files use
unchecked-hash invalidation, so the guest never stats sources for mtimes.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .config import EXTENSION_EXCLUDES, PYC_OPTIMIZE, PYTHON_VERSION, STDLIB_EXCLUDES
from .errors import GuestImageError
from .layout import LIB_DIR, LOADER, Rootfs
from .tools import run

STDLIB = f"usr/lib/python{PYTHON_VERSION}"
INTERPRETER = f"usr/bin/python{PYTHON_VERSION}"


def stage_python(rootfs: Rootfs, package_roots: list[Path]) -> None:
    """Copy the interpreter and the trimmed stdlib of the python packages into the rootfs."""
    for pkg in package_roots:
        binary = pkg / INTERPRETER
        if binary.is_file():
            rootfs.copy_file(binary, INTERPRETER)
            rootfs.symlink("usr/bin/python3", f"python{PYTHON_VERSION}")
        stdlib = pkg / STDLIB
        if stdlib.is_dir():
            rootfs.copy_tree(stdlib, STDLIB, skip=_stdlib_skip)
    if not (rootfs.path / INTERPRETER).is_file():
        raise GuestImageError(f"no /{INTERPRETER} in the python packages")
    if not (rootfs.path / STDLIB / "os.py").is_file():
        raise GuestImageError(f"no /{STDLIB}/os.py in the python packages")


def _stdlib_skip(rel: str) -> bool:
    parts = rel.split("/")
    if parts[0] in STDLIB_EXCLUDES or rel in STDLIB_EXCLUDES or "__pycache__" in parts:
        return True
    if parts[0] == "lib-dynload" and len(parts) == 2:
        return parts[1].split(".", 1)[0] in EXTENSION_EXCLUDES
    return False


def guest_python_argv(rootfs: Rootfs) -> tuple[list[str], dict[str, str]]:
    """argv prefix and environment to run the staged guest interpreter on the host."""
    argv = [str(rootfs.path / LOADER), "--library-path", str(rootfs.path / LIB_DIR),
            str(rootfs.path / INTERPRETER), "-S"]
    env = {"PYTHONHOME": str(rootfs.path / "usr"), "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
    return argv, env


_COMPILE = r"""
import compileall, json, py_compile, sys
spec = json.loads(sys.argv[1])
mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
ok = True
for host_dir, guest_dir, sourceless in spec["trees"]:
    ok &= compileall.compile_dir(host_dir, ddir=guest_dir, quiet=1, legacy=sourceless,
                                 optimize=spec["optimize"] if sourceless else 0,
                                 invalidation_mode=mode, workers=1)
sys.exit(0 if ok else 1)
"""


def compile_trees(rootfs: Rootfs, trees: list[tuple[str, bool]]) -> None:
    """Byte-compile each rootfs directory; `sourceless` trees keep only the .pyc files.

    Sourceless trees get legacy `module.pyc` files next to where the source was
    (the only layout Python imports without a source) at PYC_OPTIMIZE; the
    others keep their sources and get `__pycache__/*.cpython-311.pyc` at level 0
    (what a plain `python3` loads).
    """
    argv, env = guest_python_argv(rootfs)
    spec = {"optimize": PYC_OPTIMIZE,
            "trees": [[str(rootfs.path / rel), "/" + rel, sourceless] for rel, sourceless in trees]}
    run(argv + ["-c", _COMPILE, json.dumps(spec)], what="byte-compiling the guest's python code", env=env)
    for rel, sourceless in trees:
        if sourceless:
            _drop_compiled_sources(rootfs.path / rel)


def _drop_compiled_sources(tree: Path) -> None:
    for source in tree.rglob("*.py"):
        if source.with_suffix(".pyc").is_file():
            source.unlink()
        else:
            raise GuestImageError(f"{source} was not byte-compiled (syntax the guest python rejects?)")
    for cache in list(tree.rglob("__pycache__")):
        shutil.rmtree(cache)


_VERIFY = r"""
import sys
import asyncio, hashlib, json, socket, subprocess, signal
import google.protobuf
from google.protobuf.internal import api_implementation
hashlib.sha256(b"")
bad = sorted(m for m in ("_ssl", "_hashlib", "ssl") if m in sys.modules)
if bad:
    sys.exit("modules that pull in OpenSSL were imported: %s" % bad)
missing = []
for module in sys.argv[1:]:
    try:
        __import__(module)
    except ImportError as exc:
        missing.append("%s (%s)" % (module, exc))
if missing:
    sys.exit("the guest python cannot import: " + ", ".join(missing))
print(api_implementation.Type())
"""


def verify_imports(rootfs: Rootfs, pythonpath: str, modules: list[str]) -> str:
    """Import asyncio, protobuf and `modules` with the staged interpreter; return protobuf's backend."""
    argv, env = guest_python_argv(rootfs)
    env = dict(env, PYTHONPATH=str(rootfs.path / pythonpath.lstrip("/")), PYTHONDONTWRITEBYTECODE="1")
    out = run(argv + ["-c", _VERIFY, *modules], what="checking that the guest python imports asyncio and protobuf",
              env=env)
    return out.strip()

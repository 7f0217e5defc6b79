"""What goes into the guest image, and where it is built. Changing anything here changes
the builder digest recorded in manifest.json, so the next build is not a cache hit."""
from __future__ import annotations

import os
from pathlib import Path

BUILDER_VERSION = "1"

ENV_OUTPUT_DIR = "GRAFT_GUEST_DIR"
ENV_CACHE_DIR = "GRAFT_CACHE_DIR"
DEFAULT_OUTPUT_DIR = Path("/var/lib/graft/guest")
DEFAULT_CACHE_DIR = Path("/var/cache/graft")

KERNEL_METAPACKAGE = "linux-image-amd64"

# Debian packages whose programs the guest runs.
PROGRAM_PACKAGES = (
    "busybox-static",
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "crun",
    "runc",
)

# Debian packages of Python modules the agent imports (their dist-packages files are staged
# next to the agent): libseccomp's binding compiles seccomp profiles for native containers.
PYTHON_MODULE_PACKAGES = (
    "python3-seccomp",
)

# Debian packages providing the shared libraries of the programs above (the builder resolves the
# DT_NEEDED closure against them and fails naming any library it cannot find here).
LIBRARY_PACKAGES = (
    "libc6",
    "libgcc-s1",      # dlopen()ed by glibc for pthread_exit/cancellation unwinding
    "libstdc++6",     # listed (though no symbol is used) by protobuf's upb extension
    "zlib1g",
    "libexpat1",
    "libffi8",        # _ctypes
    "liblzma5",
    "libuuid1",       # _uuid
    "libseccomp2",
    "libcap2",
    "libyajl2",
    "libsystemd0",
    "libgcrypt20",
    "libgpg-error0",
    "liblz4-1",
    "libzstd1",
)

# Libraries shipped although no ELF lists them in DT_NEEDED (they are dlopen()ed).
DLOPEN_LIBRARIES = ("libgcc_s.so.1",)

PYTHON_VERSION = "3.11"
PROTOBUF_PROJECT = "protobuf"

# Kernel modules the agent loads at boot, in load order (dependencies are added automatically).
KERNEL_MODULES = (
    "virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
    "virtio_mmio", "virtio_console", "9pnet", "9pnet_virtio", "netfs", "fscache", "9p",
    "failover", "net_failover", "virtio_net", "overlay", "virtio-rng",
)

# Loaded by /init before python starts (with their dependencies): virtio-rng initialises the
# kernel CRNG, without which python's hash-seed read blocks ~1.1 s under TCG.
EARLY_MODULES = ("virtio_pci", "virtio-rng")

# Standard-library parts the agent never needs (packages or single modules, relative to the stdlib).
STDLIB_EXCLUDES = (
    "test", "idlelib", "tkinter", "turtledemo", "turtle.py", "ensurepip", "lib2to3", "pydoc_data",
    "pydoc.py", "distutils", "sqlite3", "curses", "dbm", "venv", "unittest", "doctest.py",
    "pdb.py", "lib2to3", "_distutils_system_mod.py", "sitecustomize.py", "EXTERNALLY-MANAGED",
    "LICENSE.txt", "config-3.11-x86_64-linux-gnu", "__phello__", "__hello__.py", "antigravity.py",
    "this.py", "_aix_support.py", "_osx_support.py",
    # network-protocol clients/servers, mail and media formats the agent has no use for
    "xmlrpc", "wsgiref", "smtpd.py", "smtplib.py", "imaplib.py", "nntplib.py", "poplib.py", "ftplib.py",
    "telnetlib.py", "mailbox.py", "cgi.py", "cgitb.py", "aifc.py", "sunau.py", "wave.py", "sndhdr.py",
    "imghdr.py", "chunk.py",
    # CJK codecs (their C halves are dropped below)
    "encodings/big5.py", "encodings/big5hkscs.py", "encodings/cp932.py", "encodings/cp949.py",
    "encodings/cp950.py", "encodings/euc_jis_2004.py", "encodings/euc_jisx0213.py", "encodings/euc_jp.py",
    "encodings/euc_kr.py", "encodings/gb18030.py", "encodings/gb2312.py", "encodings/gbk.py",
    "encodings/hz.py", "encodings/iso2022_jp.py", "encodings/iso2022_jp_1.py", "encodings/iso2022_jp_2.py",
    "encodings/iso2022_jp_2004.py", "encodings/iso2022_jp_3.py", "encodings/iso2022_jp_ext.py",
    "encodings/iso2022_kr.py", "encodings/johab.py", "encodings/shift_jis.py",
    "encodings/shift_jis_2004.py", "encodings/shift_jisx0213.py",
)

# C extensions that are dropped: TLS/hash ones (so `import asyncio` never maps libssl/libcrypto),
# and those needing libraries the guest does not ship.
EXTENSION_EXCLUDES = (
    "_ssl", "_hashlib", "_sqlite3", "_curses", "_curses_panel", "_dbm", "_gdbm", "_tkinter",
    "readline", "nis", "_crypt", "_bz2", "ossaudiodev", "audioop", "xxlimited", "xxlimited_35",
    "_xxsubinterpreters", "_xxtestfuzz", "_ctypes_test", "_testbuffer", "_testcapi", "_testclinic",
    "_testimportmultiple", "_testinternalcapi", "_testmultiphase",
    "_codecs_cn", "_codecs_hk", "_codecs_iso2022", "_codecs_jp", "_codecs_kr", "_codecs_tw", "_multibytecodec",
)

# Bytecode optimisation level for the sourceless stdlib and protobuf (2 strips docstrings too).
PYC_OPTIMIZE = 2


def default_output_dir() -> Path:
    return Path(os.environ.get(ENV_OUTPUT_DIR) or DEFAULT_OUTPUT_DIR)


def default_cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE_DIR) or DEFAULT_CACHE_DIR)

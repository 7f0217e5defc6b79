"""The Linux syscalls the native runtime makes, as thin ctypes wrappers (x86-64 numbers).

Everything a container's child process does between clone and exec goes through here or
through `os`: no helper binary, no interpreter-heavy work. Calls that affect credentials use
the raw syscalls (not glibc's wrappers, which would broadcast to threads the forked child
does not have).
"""

from __future__ import annotations

import ctypes
import os
import struct

if os.uname().machine != "x86_64":  # pragma: no cover - the guest is x86-64
    raise ImportError(f"the native runtime knows x86-64 syscall numbers only, not {os.uname().machine}")

# asm/unistd_64.h
SYS_SETGROUPS = 116
SYS_SETRESUID = 117
SYS_SETRESGID = 119
SYS_CAPSET = 126
SYS_PERSONALITY = 135
SYS_PIVOT_ROOT = 155
SYS_PRLIMIT64 = 302
SYS_SETNS = 308
SYS_SECCOMP = 317
SYS_BPF = 321
SYS_PIDFD_OPEN = 434
SYS_CLONE3 = 435
SYS_CLOSE_RANGE = 436
SYS_OPENAT2 = 437

# sched.h
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_INTO_CGROUP = 0x200000000

# mount.h
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_I_VERSION = 1 << 23
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
MNT_DETACH = 0x2
PROPAGATION_FLAGS = MS_SHARED | MS_PRIVATE | MS_SLAVE | MS_UNBINDABLE

# prctl.h
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

# seccomp.h
SECCOMP_SET_MODE_FILTER = 1

# openat2: linux/openat2.h
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_IN_ROOT = 0x10

CLOSE_RANGE_CLOEXEC = 1 << 2

_libc = ctypes.CDLL(None, use_errno=True)
# clone3 must not drop the GIL: the child would return into an interpreter whose GIL it may
# not hold. PyDLL keeps it across the call (the agent has no other threads anyway).
_libc_gil = ctypes.PyDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc_gil.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def _check(result: int, what: str) -> int:
    if result < 0:
        raise _fail(what)
    return result


def _syscall(number: int, *args, what: str) -> int:
    return _check(_libc.syscall(ctypes.c_long(number), *args), what)


def _path(path: str | bytes | None) -> bytes | None:
    if path is None:
        return None
    return path if isinstance(path, bytes) else path.encode()


# -- processes and namespaces -----------------------------------------------------------------

def clone3(flags: int, cgroup_fd: int = -1, exit_signal: int = 17) -> int:
    """fork()-like clone3: 0 in the child, the child's pid in the parent. With `cgroup_fd`
    the child starts in that cgroup (CLONE_INTO_CGROUP)."""
    if cgroup_fd >= 0:
        flags |= CLONE_INTO_CGROUP
    # struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size,
    # tls, set_tid, set_tid_size, cgroup
    args = struct.pack("<11Q", flags, 0, 0, 0, exit_signal, 0, 0, 0, 0, 0, max(cgroup_fd, 0))
    buf = ctypes.create_string_buffer(args, len(args))
    result = _libc_gil.syscall(ctypes.c_long(SYS_CLONE3), buf, ctypes.c_size_t(len(args)))
    return _check(result, "clone3")


def setns(fd: int, nstype: int = 0) -> None:
    _syscall(SYS_SETNS, ctypes.c_int(fd), ctypes.c_int(nstype), what="setns")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def pidfd_open(pid: int) -> int:
    return _syscall(SYS_PIDFD_OPEN, ctypes.c_int(pid), ctypes.c_uint(0), what="pidfd_open")


def prctl(option: int, arg2: int = 0, arg3: int = 0, what: str = "prctl") -> int:
    return _check(_libc.prctl(option, arg2, arg3, 0, 0), what)


def close_range_cloexec(first: int) -> None:
    """Mark every fd >= first close-on-exec (one syscall instead of a walk of /proc/self/fd)."""
    _syscall(SYS_CLOSE_RANGE, ctypes.c_uint(first), ctypes.c_uint(0xFFFFFFFF),
             ctypes.c_uint(CLOSE_RANGE_CLOEXEC), what="close_range")


def setrlimit(resource: int, soft: int, hard: int) -> None:
    limits = struct.pack("<QQ", soft, hard)
    _syscall(SYS_PRLIMIT64, ctypes.c_int(0), ctypes.c_int(resource), ctypes.c_char_p(limits),
             ctypes.c_void_p(0), what=f"setrlimit {resource}")


def personality(persona: int) -> None:
    _syscall(SYS_PERSONALITY, ctypes.c_ulong(persona), what="personality")


# -- credentials ------------------------------------------------------------------------------

def setgroups(gids: list[int]) -> None:
    array = (ctypes.c_uint * max(len(gids), 1))(*gids)
    _syscall(SYS_SETGROUPS, ctypes.c_size_t(len(gids)), array, what="setgroups")


def setresgid(gid: int) -> None:
    _syscall(SYS_SETRESGID, ctypes.c_uint(gid), ctypes.c_uint(gid), ctypes.c_uint(gid),
             what=f"setresgid {gid}")


def setresuid(uid: int) -> None:
    _syscall(SYS_SETRESUID, ctypes.c_uint(uid), ctypes.c_uint(uid), ctypes.c_uint(uid),
             what=f"setresuid {uid}")


_CAP_VERSION_3 = 0x20080522


def capset(effective: int, permitted: int, inheritable: int) -> None:
    header = struct.pack("<Ii", _CAP_VERSION_3, 0)
    data = struct.pack("<6I", effective & 0xFFFFFFFF, permitted & 0xFFFFFFFF,
                       inheritable & 0xFFFFFFFF, effective >> 32, permitted >> 32, inheritable >> 32)
    _syscall(SYS_CAPSET, ctypes.c_char_p(header), ctypes.c_char_p(data), what="capset")


def load_seccomp(program: bytes, flags: int) -> None:
    """Install a classic-BPF seccomp filter (`program`: struct sock_filter[])."""
    count = len(program) // 8
    code = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("<HxxxxxxQ", count, ctypes.addressof(code))
    _syscall(SYS_SECCOMP, ctypes.c_uint(SECCOMP_SET_MODE_FILTER), ctypes.c_uint(flags),
             ctypes.c_char_p(fprog), what="seccomp(SECCOMP_SET_MODE_FILTER)")


# -- filesystems ------------------------------------------------------------------------------

def mount(source: str | bytes | None, target: str | bytes, fstype: str | bytes | None,
          flags: int, data: str | bytes | None = None) -> None:
    result = _libc.mount(_path(source), _path(target), _path(fstype), flags,
                         _path(data) if data else None)
    if result < 0:
        kind = (_path(fstype) or b"").decode() or ("bind" if flags & MS_BIND else "remount")
        raise _fail(f"mount {kind} on {_path(target).decode(errors='replace')}")


def umount2(target: str | bytes, flags: int = 0) -> None:
    _check(_libc.umount2(_path(target), flags), "umount")


def pivot_root(new_root: str, put_old: str) -> None:
    _syscall(SYS_PIVOT_ROOT, _path(new_root), _path(put_old), what="pivot_root")


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    how = struct.pack("<QQQ", flags, mode, resolve)
    return _syscall(SYS_OPENAT2, ctypes.c_int(dirfd), _path(path), ctypes.c_char_p(how),
                    ctypes.c_size_t(len(how)), what=f"open {path}")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, len(raw)), "setdomainname")


# -- eBPF -------------------------------------------------------------------------------------

def bpf(command: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr, len(attr))
    return _syscall(SYS_BPF, ctypes.c_int(command), buf, ctypes.c_uint(len(attr)), what="bpf")


def address_of(buffer: ctypes.Array) -> int:
    return ctypes.addressof(buffer)

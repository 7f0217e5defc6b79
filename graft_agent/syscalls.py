"""Thin wrappers over the few Linux syscalls the standard library lacks.

ctypes is imported on first use only: a plain `--no-init` agent never pays for it.
"""

from __future__ import annotations

import os

# Flags (include/uapi/linux/mount.h, sched.h, reboot.h, prctl.h).
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
RB_POWER_OFF = 0x4321FEDC
RB_AUTOBOOT = 0x01234567
PR_SET_CHILD_SUBREAPER = 36
_SYS_FINIT_MODULE = 313  # x86-64

_libc = None


def _c():
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(result: int, what: str) -> int:
    if result < 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    _check(_c().mount(source.encode(), target.encode(), fstype.encode(), flags,
                      data.encode() if data else None), f"mount {fstype} on {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(_c().umount2(target.encode(), flags), f"umount {target}")


def unshare(flags: int) -> None:
    _check(_c().unshare(flags), "unshare")


def finit_module(fd: int, params: str = "") -> None:
    _check(_c().syscall(_SYS_FINIT_MODULE, fd, params.encode(), 0), "finit_module")


def set_child_subreaper() -> None:
    _check(_c().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")


def reboot(command: int) -> None:
    _check(_c().reboot(command), "reboot")

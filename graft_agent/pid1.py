"""What the agent does as the VM's init (PID 1) before it serves anything.

Everything here is syscalls (mount, finit_module, ioctl): no helper process is spawned on the
boot path.
"""

from __future__ import annotations

import errno
import logging
import os

from . import syscalls
from .fsutil import read_text

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_NOSUID, _NODEV, _NOEXEC = syscalls.MS_NOSUID, syscalls.MS_NODEV, syscalls.MS_NOEXEC
# (source, target, fstype, flags, data), in mount order.
_MOUNTS = [
    ("proc", "/proc", "proc", _NOSUID | _NODEV | _NOEXEC, ""),
    ("sysfs", "/sys", "sysfs", _NOSUID | _NODEV | _NOEXEC, ""),
    ("devtmpfs", "/dev", "devtmpfs", _NOSUID, "mode=0755"),
    ("devpts", "/dev/pts", "devpts", _NOSUID | _NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"),
    ("tmpfs", "/dev/shm", "tmpfs", _NOSUID | _NODEV, "mode=1777"),
    ("tmpfs", "/run", "tmpfs", _NOSUID | _NODEV, "mode=0755"),
    ("cgroup2", "/sys/fs/cgroup", "cgroup2", _NOSUID | _NODEV | _NOEXEC, "nsdelegate"),
]
_DEV_LINKS = {"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0",
              "/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2"}


def mounted_types() -> dict[str, str]:
    """Mount point -> filesystem type of its topmost mount."""
    types = {}
    for line in read_text("/proc/self/mountinfo").splitlines():
        fields = line.split()
        if len(fields) > 4 and " - " in line:
            types[fields[4]] = line.split(" - ", 1)[1].split()[0]
    return types


def mount_type(point: str) -> str:
    """Filesystem type of the topmost mount on `point` ("" if nothing is mounted there)."""
    return mounted_types().get(point, "")


def root_is_initramfs() -> bool:
    """pivot_root cannot leave the initial rootfs; OCI runtimes then need --no-pivot.

    The guest image's /init bind-mounts the initramfs over itself (type still
    "rootfs", but now a mount with a parent, which pivot_root accepts) and says
    so with GRAFT_ROOT_PIVOTABLE=1."""
    if os.environ.get("GRAFT_ROOT_PIVOTABLE") == "1":
        return False
    return mount_type("/") == "rootfs"


def mount_filesystems() -> None:
    mounted = mounted_types()
    for source, target, fstype, flags, data in _MOUNTS:
        if mounted.get(target) == fstype:  # e.g. moved over by a switch_root launcher
            continue
        os.makedirs(target, exist_ok=True)
        try:
            syscalls.mount(source, target, fstype, flags, data)
        except OSError as exc:
            if exc.errno == errno.EINVAL and data:
                try:  # e.g. an older kernel without nsdelegate: a plain mount still works
                    syscalls.mount(source, target, fstype, flags)
                    continue
                except OSError:
                    pass
            if exc.errno != errno.EBUSY:  # EBUSY: already there (e.g. devtmpfs automount)
                log.error("%s", exc)
        if target == "/proc":
            mounted = mounted_types()
    for link, target in _DEV_LINKS.items():
        try:
            os.symlink(target, link)
        except OSError:
            pass


def ensure_stdio() -> None:
    """fds 0-2 must be open (else pipes could land there); the kernel console logs for us."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            path = "/dev/null" if fd == 0 else "/dev/console"
            try:
                opened = os.open(path, os.O_RDWR | os.O_NOCTTY)
            except OSError:
                opened = os.open("/dev/null", os.O_RDWR)
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)


def load_modules(list_path: str) -> None:
    """finit_module() every .ko named in the list, in order; missing or loaded ones are skipped."""
    for line in read_text(list_path).splitlines():
        path = line.strip()
        if not path or path.startswith("#"):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            log.warning("module %s: not in the image, skipped", path)
            continue
        try:
            syscalls.finit_module(fd)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                log.error("module %s: %s", path, exc.strerror)
        finally:
            os.close(fd)


def enable_cgroup_controllers(root: str = "/sys/fs/cgroup") -> None:
    """Delegate every available controller to child cgroups (the agent stays in the root)."""
    for controller in read_text(f"{root}/cgroup.controllers").split():
        try:
            with open(f"{root}/cgroup.subtree_control", "w") as f:
                f.write(f"+{controller}")
        except OSError as exc:
            log.warning("cannot enable cgroup controller %s: %s", controller, exc.strerror)


def loopback_up() -> None:
    import fcntl
    import socket
    import struct

    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def early_init(modules_list: str) -> None:
    os.environ.setdefault("PATH", DEFAULT_PATH)
    if os.environ["PATH"] in ("", "/bin:/sbin", "/sbin:/bin"):  # the kernel's bare default
        os.environ["PATH"] = DEFAULT_PATH
    os.umask(0o022)
    mount_filesystems()
    ensure_stdio()
    load_modules(modules_list)
    enable_cgroup_controllers()
    try:
        loopback_up()
    except OSError as exc:
        log.error("cannot bring lo up: %s", exc)


def power_off() -> None:
    """The agent is the VM: when it cannot serve any more, the VM ends (PID 1 must not exit)."""
    os.sync()
    try:
        syscalls.reboot(syscalls.RB_POWER_OFF)
    except OSError as exc:
        log.critical("poweroff failed: %s", exc)

"""Child side: the container's filesystem view, in the new mount namespace.

The order and the mount calls are crun's (1.8): make / private, bind the rootfs onto itself,
mount every spec mount inside it, create the device nodes, mask and write-protect paths, apply
the deferred read-only remounts, then pivot_root. Paths inside the rootfs are resolved with
openat2(RESOLVE_IN_ROOT), so a symlink in the image can never lead a mount outside it; mount
targets are then named through /proc/self/fd.

Over 9p every path component looked up costs a round trip to the host (two: walk and
getattr), and a dentry nobody holds is dropped at once (cache=none/mmap), so the same paths
are not looked up twice where an fd can name them: a bind source is opened once (its type
and the mount both come from that fd), a file made as a mount target is mounted on through
the fd that created it.
"""

from __future__ import annotations

import errno
import os
import stat

from ..cgroup import CGROUP_ROOT
from . import linux as L
from .mount_plan import MountPlan
from .spec import ContainerPlan, DeviceNode

_O_PATH = os.O_PATH | os.O_CLOEXEC
_DIR_MODE = 0o1755    # crun's mode for directories it creates as mount targets
_FILE_MODE = 0o755
_DEFAULT_DEVICES = [DeviceNode(f"/dev/{name}", stat.S_IFCHR, major, minor, 0o666, 0, 0)
                    for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7),
                                               ("tty", 5, 0), ("random", 1, 8), ("urandom", 1, 9))]
_DEV_SYMLINKS = (("/proc/self/fd", "fd", False), ("/proc/self/fd/0", "stdin", False),
                 ("/proc/self/fd/1", "stdout", False), ("/proc/self/fd/2", "stderr", False),
                 ("/proc/kcore", "core", False), ("pts/ptmx", "ptmx", True))
_ST_LOCKED = L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC   # statvfs ST_* bits equal the MS_* ones


def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


class Rootfs:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self._remounts: list[tuple[int, int]] = []   # deferred read-only remounts (fd, flags)

    # -- resolving inside the rootfs -----------------------------------------------------------

    def open(self, rel: str, flags: int = _O_PATH) -> int:
        return L.openat2(self.fd, rel or ".", flags | os.O_CLOEXEC,
                         L.RESOLVE_IN_ROOT | L.RESOLVE_NO_MAGICLINKS)

    def ensure(self, rel: str, is_dir: bool, mode: int) -> int:
        """An fd of rel (O_PATH, or the O_WRONLY one of a file it created), creating it (and
        missing parents) when absent."""
        try:
            return self.open(rel)
        except FileNotFoundError:
            pass
        parent, _, name = rel.rstrip("/").rpartition("/")
        parent_fd = self.ensure(parent, True, _DIR_MODE) if parent else self.open("")
        try:
            try:
                if not is_dir:   # the new, empty file's own fd names it well enough
                    return os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC,
                                   mode, dir_fd=parent_fd)
                os.mkdir(name, mode, dir_fd=parent_fd)
            except FileExistsError:
                return self.open(rel)   # appeared meanwhile (maybe as a symlink): resolve it fully
            # Just created by us, so no symlink: open it where it is.
            return L.openat2(parent_fd, name, _O_PATH | os.O_NOFOLLOW, L.RESOLVE_NO_SYMLINKS)
        finally:
            os.close(parent_fd)

    # -- crun's do_mount -----------------------------------------------------------------------

    def mount_at(self, source: str | None, target_fd: int, rel: str, fstype: str | None,
                 flags: int, data: str | None) -> None:
        """Mount onto target_fd (rel names it again afterwards); takes ownership of target_fd."""
        fd = target_fd
        propagation = flags & L.PROPAGATION_FLAGS
        single_instance = bool(data) and fstype == "proc"
        needs_remount = bool(flags & (L.MS_BIND | L.MS_RDONLY)) or single_instance
        try:
            if fstype or flags & L.MS_BIND:
                L.mount(source, fd_path(fd), fstype, flags & ~(L.PROPAGATION_FLAGS | L.MS_RDONLY), data)
                os.close(fd)
                fd = -1
                if not (propagation or needs_remount):
                    return
                fd = self.open(rel)  # the old fd is underneath the new mount
            if propagation:
                L.mount(None, fd_path(fd), None, (flags & L.MS_REC) | propagation)
            if needs_remount:
                remount = (L.MS_REMOUNT | (0 if single_instance else L.MS_BIND)
                           | (flags & ~(L.PROPAGATION_FLAGS | L.MS_REC)))
                if remount & L.MS_RDONLY:
                    self._remounts.append((fd, remount))
                    fd = -1
                else:
                    remount_fd(fd, remount)
        finally:
            if fd >= 0:
                os.close(fd)

    def finalize(self) -> None:
        """The deferred read-only remounts, last registered first."""
        while self._remounts:
            fd, flags = self._remounts.pop()
            try:
                remount_fd(fd, flags)
            finally:
                os.close(fd)


def remount_fd(fd: int, flags: int) -> None:
    target = fd_path(fd)
    try:
        L.mount(None, target, None, flags)
        return
    except OSError as first:
        error = first
    # Flags locked by the mount we bind from (e.g. nosuid) must be repeated in a remount.
    current = os.statvfs(target).f_flag
    for extra in (current & _ST_LOCKED, current & (_ST_LOCKED | L.MS_RDONLY)):
        if flags | extra != flags:
            try:
                L.mount(None, target, None, flags | extra)
                return
            except OSError as exc:
                error = exc
    raise error


# -- the whole sequence -------------------------------------------------------------------------

def prepare_rootfs(plan: ContainerPlan, agent_dev_null: str = "/dev/null") -> Rootfs:
    """Everything before pivot_root (crun's libcrun_set_mounts). Runs with umask 0, so nodes
    get their modes at creation (the process's umask is set later)."""
    os.umask(0)
    root = Rootfs(plan.rootfs)
    L.mount(None, "/", None, plan.root_propagation)
    all_private = plan.root_propagation == L.MS_REC | L.MS_PRIVATE
    if not all_private:   # (when everything just became private, both calls change nothing)
        _make_parent_private(plan.rootfs)
    L.mount(plan.rootfs, plan.rootfs, None, L.MS_BIND | L.MS_REC)
    root.fd = os.open(plan.rootfs, _O_PATH)
    if not all_private:
        L.mount(None, fd_path(root.fd), None, L.MS_REC | L.MS_PRIVATE)
    remount_fd(root.fd, L.MS_REMOUNT | L.MS_BIND)
    if plan.readonly_root:
        root._remounts.append((os.dup(root.fd), L.MS_REMOUNT | L.MS_BIND | L.MS_RDONLY))
    dev_from_host = False
    for mount in plan.mounts:
        _do_mount(root, mount)
        dev_from_host |= mount.is_bind and mount.destination == "/dev"
    if not dev_from_host:
        create_devices(root, plan.devices, plan.process.terminal)
    try:
        os.close(root.ensure(plan.process.cwd.lstrip("/"), True, 0o755))
    except OSError:
        pass  # reported, if it matters, by the chdir later
    for rel in plan.masked_paths:
        _mask(root, rel.lstrip("/"), agent_dev_null)
    for rel in plan.readonly_paths:
        _readonly(root, rel.lstrip("/"))
    root.finalize()
    return root


def _make_parent_private(path: str) -> None:
    """The mount holding the rootfs must not propagate into the container (nor back)."""
    while True:
        try:
            L.mount(None, path, None, L.MS_PRIVATE)
            return
        except OSError as exc:
            if exc.errno != errno.EINVAL or path == "/":  # EINVAL: not a mount point
                raise
        path = os.path.dirname(path) or "/"


def _do_mount(root: Rootfs, mount: MountPlan) -> None:
    rel = mount.relative
    if mount.fstype in ("proc", "sysfs"):
        try:
            target = root.open(rel, _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
        except FileNotFoundError:
            os.mkdir(rel, 0o755, dir_fd=root.fd)
            target = root.open(rel, _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    elif mount.is_bind:
        _bind_mount(root, mount, rel)
        return
    else:
        target = root.ensure(rel, True, _DIR_MODE)
    if mount.fstype == "cgroup":
        _mount_cgroup2(root, target, rel, mount.flags)
    else:
        root.mount_at(mount.source, target, rel, mount.fstype, mount.flags, mount.data or None)


def _bind_mount(root: Rootfs, mount: MountPlan, rel: str) -> None:
    """The source is looked up once (mount(2) follows its symlinks the same way)."""
    try:
        source_fd = os.open(mount.source, _O_PATH)
    except OSError:   # mount(2) reports it, as for crun
        source_fd = -1
    try:
        is_dir = source_fd >= 0 and stat.S_ISDIR(os.fstat(source_fd).st_mode)
        target = root.ensure(rel, is_dir, _DIR_MODE if is_dir else _FILE_MODE)
        source = fd_path(source_fd) if source_fd >= 0 else mount.source
        root.mount_at(source, target, rel, None, mount.flags, None)
    finally:
        if source_fd >= 0:
            os.close(source_fd)


def _mount_cgroup2(root: Rootfs, target: int, rel: str, flags: int) -> None:
    try:
        root.mount_at("cgroup2", os.dup(target), rel, "cgroup2", flags, None)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EBUSY):
            os.close(target)
            raise
        root.mount_at(CGROUP_ROOT, target, rel, None, L.MS_BIND | flags, None)
        return
    os.close(target)


def create_devices(root: Rootfs, devices: list[DeviceNode], terminal: bool) -> None:
    devfd = root.open("dev", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for device in devices:
            _make_node(root, devfd, device)
        for device in _DEFAULT_DEVICES:
            _make_node(root, devfd, device)
        for target, name, force in _DEV_SYMLINKS:
            try:
                os.symlink(target, name, dir_fd=devfd)
            except FileExistsError:
                if force:
                    _replace_with_symlink(devfd, target, name)
        if terminal:
            try:   # 0620 under crun's umask 022
                os.close(os.open("console", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=devfd))
            except FileExistsError:
                pass
    finally:
        os.close(devfd)


def _replace_with_symlink(devfd: int, target: str, name: str) -> None:
    try:
        os.unlink(name, dir_fd=devfd)
    except IsADirectoryError:
        os.rmdir(name, dir_fd=devfd)
    os.symlink(target, name, dir_fd=devfd)


def _make_node(root: Rootfs, devfd: int, device: DeviceNode) -> None:
    parent, _, name = device.path.rpartition("/")
    if parent == "/dev":
        dirfd, rel = devfd, name
        close_dir = False
    else:
        dirfd = root.ensure(parent.lstrip("/"), True, 0o755) if parent else root.open("")
        rel, close_dir = name, True
    try:
        try:   # umask is 0: the mode is exact (setuid/setgid/sticky bits too)
            os.mknod(rel, device.mode | device.kind, os.makedev(device.major, device.minor),
                     dir_fd=dirfd)
        except FileExistsError:
            return
        if device.uid or device.gid:
            os.chown(rel, device.uid, device.gid, dir_fd=dirfd, follow_symlinks=False)
    finally:
        if close_dir:
            os.close(dirfd)


def _mask(root: Rootfs, rel: str, dev_null: str) -> None:
    try:
        target = root.open(rel)
    except (FileNotFoundError, PermissionError):
        return
    if stat.S_ISDIR(os.stat(fd_path(target)).st_mode):
        root.mount_at("tmpfs", target, rel, "tmpfs", L.MS_RDONLY, "size=0k")
    else:
        root.mount_at(dev_null, target, rel, None, L.MS_BIND | L.MS_RDONLY, None)


def _readonly(root: Rootfs, rel: str) -> None:
    try:
        source = root.open(rel)
    except (FileNotFoundError, PermissionError):
        return
    try:
        root.mount_at(fd_path(source), os.dup(source), rel, None,
                      L.MS_BIND | L.MS_PRIVATE | L.MS_RDONLY | L.MS_REC, None)
    finally:
        os.close(source)


def pivot(plan: ContainerPlan, root: Rootfs, no_pivot: bool) -> None:
    """crun's libcrun_do_pivot_root: the rootfs becomes /, the old root is detached."""
    if no_pivot:
        os.chdir(plan.rootfs)
        for path in ("/sys", "/proc"):
            try:
                L.umount2(path, L.MNT_DETACH)
            except OSError:
                L.mount(None, path, "tmpfs", 0, "size=0k")  # locked: hide it instead
        L.mount(plan.rootfs, "/", "", L.MS_MOVE)
        os.chroot(".")
    else:
        old_root = os.open("/", os.O_DIRECTORY | _O_PATH)
        new_root = os.open(plan.rootfs, os.O_DIRECTORY | _O_PATH)   # (fchdir takes O_PATH)
        try:
            os.fchdir(new_root)
            L.pivot_root(".", ".")
            os.fchdir(old_root)
        finally:
            os.close(new_root)
            os.close(old_root)
        all_private = plan.root_propagation == L.MS_REC | L.MS_PRIVATE   # then already so
        if not all_private:
            L.mount(None, ".", None, L.MS_REC | L.MS_PRIVATE)
        L.umount2(".", L.MNT_DETACH)
        while True:
            try:
                L.umount2(".", L.MNT_DETACH)
            except OSError as exc:
                if exc.errno == errno.EINVAL:
                    break
                raise
        os.chdir("/")
        if not all_private:
            L.mount(None, "/", None, plan.root_propagation)
    os.chdir("/")
    if root.fd >= 0:
        os.close(root.fd)
        root.fd = -1

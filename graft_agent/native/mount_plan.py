"""OCI `mounts`, `linux.maskedPaths` and `linux.readonlyPaths` → what the child mounts (pure).

Options mean what they mean to crun (flags from the same table; anything else is passed on as
filesystem data), and the ones the native runtime does not implement (idmapped mounts, the
recursive mount_setattr flags, crun's tmpcopyup) are refused instead of ignored.
"""

from __future__ import annotations

import posixpath
from typing import NamedTuple

from ..errors import InvalidArgument
from . import linux as L
from .fields import UNSUPPORTED, objects, only_known

# option → (flags to set, flags to clear)
_FLAG_OPTIONS = {
    "defaults": (0, 0),
    "bind": (L.MS_BIND, 0), "rbind": (L.MS_BIND | L.MS_REC, 0),
    "ro": (L.MS_RDONLY, 0), "rw": (0, L.MS_RDONLY),
    "suid": (0, L.MS_NOSUID), "nosuid": (L.MS_NOSUID, 0),
    "dev": (0, L.MS_NODEV), "nodev": (L.MS_NODEV, 0),
    "exec": (0, L.MS_NOEXEC), "noexec": (L.MS_NOEXEC, 0),
    "sync": (L.MS_SYNCHRONOUS, 0), "async": (0, L.MS_SYNCHRONOUS),
    "dirsync": (L.MS_DIRSYNC, 0), "remount": (L.MS_REMOUNT, 0),
    "mand": (L.MS_MANDLOCK, 0), "nomand": (0, L.MS_MANDLOCK),
    "atime": (0, L.MS_NOATIME), "noatime": (L.MS_NOATIME, 0),
    "diratime": (0, L.MS_NODIRATIME), "nodiratime": (L.MS_NODIRATIME, 0),
    "relatime": (L.MS_RELATIME, 0), "norelatime": (0, L.MS_RELATIME),
    "strictatime": (L.MS_STRICTATIME, 0), "nostrictatime": (0, L.MS_STRICTATIME),
    "silent": (L.MS_SILENT, 0), "loud": (0, L.MS_SILENT),
    "iversion": (L.MS_I_VERSION, 0), "noiversion": (0, L.MS_I_VERSION),
    "lazytime": (L.MS_LAZYTIME, 0), "nolazytime": (0, L.MS_LAZYTIME),
    "nosymfollow": (L.MS_NOSYMFOLLOW, 0), "symfollow": (0, L.MS_NOSYMFOLLOW),
    "shared": (L.MS_SHARED, 0), "rshared": (L.MS_SHARED | L.MS_REC, 0),
    "slave": (L.MS_SLAVE, 0), "rslave": (L.MS_SLAVE | L.MS_REC, 0),
    "private": (L.MS_PRIVATE, 0), "rprivate": (L.MS_PRIVATE | L.MS_REC, 0),
    "unbindable": (L.MS_UNBINDABLE, 0), "runbindable": (L.MS_UNBINDABLE | L.MS_REC, 0),
}
_REFUSED_OPTIONS = {
    "idmap": "idmapped mounts", "ridmap": "idmapped mounts",
    "tmpcopyup": "tmpcopyup", "notmpcopyup": "tmpcopyup", "copy-symlink": "copy-symlink",
    **{name: "recursive mount attributes (mount_setattr)" for name in (
        "rro", "rrw", "rnosuid", "rsuid", "rnodev", "rdev", "rnoexec", "rexec", "rnodiratime",
        "rdiratime", "rrelatime", "rnorelatime", "rnoatime", "ratime", "rstrictatime",
        "rnostrictatime", "rnosymfollow", "rsymfollow")},
}
_ROOT_PROPAGATION = {"private": L.MS_PRIVATE, "rprivate": L.MS_PRIVATE | L.MS_REC,
                     "slave": L.MS_SLAVE, "rslave": L.MS_SLAVE | L.MS_REC,
                     "shared": L.MS_SHARED, "rshared": L.MS_SHARED | L.MS_REC,
                     "unbindable": L.MS_UNBINDABLE, "runbindable": L.MS_UNBINDABLE | L.MS_REC}

# crun's defaults for a mount given without any options.
_DEFAULT_FLAGS = {
    "/proc": (0, ""),
    "/sys/fs/cgroup": (L.MS_NOEXEC | L.MS_NOSUID | L.MS_STRICTATIME, "none,name="),
    "/dev/cgroup": (L.MS_NOEXEC | L.MS_NOSUID | L.MS_STRICTATIME, "none,name="),
    "/dev": (L.MS_NOEXEC | L.MS_STRICTATIME, "mode=755"),
    "/dev/shm": (L.MS_NOEXEC | L.MS_NOSUID | L.MS_NODEV, "mode=1777,size=65536k"),
    "/dev/mqueue": (L.MS_NOEXEC | L.MS_NOSUID | L.MS_NODEV, ""),
    "/dev/pts": (L.MS_NOEXEC | L.MS_NOSUID, "newinstance,ptmxmode=0666,mode=620,gid=5"),
    "/sys": (L.MS_NOEXEC | L.MS_NOSUID | L.MS_NODEV, ""),
}


class MountPlan(NamedTuple):
    destination: str   # absolute, normalised, inside the container
    fstype: str        # "bind" for bind mounts; "cgroup" means the v2 hierarchy
    source: str
    flags: int         # MS_* as crun computes them (MS_RDONLY included; the child defers it)
    data: str

    @property
    def is_bind(self) -> bool:
        return bool(self.flags & L.MS_BIND)

    @property
    def relative(self) -> str:
        return self.destination.lstrip("/")


def _destination(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise InvalidArgument(f"{field} must be an absolute path, not {value!r}")
    path = posixpath.normpath(value)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    return path


def parse_options(options: list, field: str) -> tuple[int, str]:
    flags = 0
    data = []
    for option in options:
        if not isinstance(option, str):
            raise InvalidArgument(f"{field}: options must be strings")
        if option in _REFUSED_OPTIONS:
            raise InvalidArgument(f"{field}: option {option!r} ({_REFUSED_OPTIONS[option]}) is "
                                  "not supported by the native runtime")
        if option in _FLAG_OPTIONS:
            set_, clear = _FLAG_OPTIONS[option]
            flags = (flags | set_) & ~clear
        else:
            data.append(option)
    return flags, ",".join(data)


def parse_mounts(mounts: object) -> list[MountPlan]:
    plans = []
    for field, mount in objects(mounts, "mounts"):
        only_known(mount, field, ("destination", "type", "source", "options"),
                   {key: f"idmapped mounts {UNSUPPORTED}" for key in ("uidMappings", "gidMappings")})
        destination = _destination(mount.get("destination"), f"{field}.destination")
        options = mount.get("options")
        if options is None:
            flags, data = _DEFAULT_FLAGS.get(destination, (0, ""))
        else:
            if not isinstance(options, list):
                raise InvalidArgument(f"{field}.options must be a list")
            flags, data = parse_options(options, f"{field}.options")
        fstype = mount.get("type") or ""
        source = mount.get("source") or ""
        if not isinstance(fstype, str) or not isinstance(source, str):
            raise InvalidArgument(f"{field}: type and source must be strings")
        if flags & L.MS_BIND:
            fstype = "bind"
            if not source.startswith("/"):
                raise InvalidArgument(f"{field}.source must be an absolute guest path for a bind mount")
        elif not fstype:
            raise InvalidArgument(f"{field}.type is required (or a bind option)")
        if fstype in ("proc", "sysfs") and "/" in destination.strip("/"):
            raise InvalidArgument(f"{field}: {fstype} must be mounted directly under / "
                                  f"(not {destination})")
        if destination == "/":
            raise InvalidArgument(f"{field}.destination: mounting over / is not supported")
        plans.append(MountPlan(destination, fstype, source or fstype, flags, data))
    return plans


def parse_paths(paths: object, field: str) -> list[str]:
    if paths is None:
        return []
    if not isinstance(paths, list):
        raise InvalidArgument(f"{field} must be a list of absolute paths")
    return [_destination(path, f"{field}[{i}]") for i, path in enumerate(paths)]


def root_propagation(value: object) -> int:
    """`linux.rootfsPropagation`; crun's default is rprivate."""
    if value in (None, ""):
        return L.MS_PRIVATE | L.MS_REC
    if value not in _ROOT_PROPAGATION:
        raise InvalidArgument(f"linux.rootfsPropagation: unknown propagation {value!r}")
    return _ROOT_PROPAGATION[value]

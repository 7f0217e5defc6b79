"""An OCI `process` (a container's init, or an exec) → what the child applies (pure)."""

from __future__ import annotations

from typing import NamedTuple

from ..errors import InvalidArgument
from .capabilities import CapabilitySets, parse_capabilities
from .fields import UNSUPPORTED, objects, only_known

RLIMITS = {"RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3,
           "RLIMIT_CORE": 4, "RLIMIT_RSS": 5, "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7,
           "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9, "RLIMIT_LOCKS": 10, "RLIMIT_SIGPENDING": 11,
           "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13, "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15}
DEFAULT_UMASK = 0o022

# Fields that are the host's business: the shim drops them before the guest sees the spec
# (shim/task/guest_spec.py); one that still arrives is refused, never ignored.
HOST_LSM_FIELDS = ("apparmorProfile", "selinuxLabel")
_SUPPORTED = {"terminal", "consoleSize", "user", "args", "env", "cwd", "capabilities", "rlimits",
              "noNewPrivileges", "oomScoreAdj"}


class ProcessPlan(NamedTuple):
    args: list[str]
    env: list[str]
    cwd: str
    terminal: bool
    console_size: tuple[int, int] | None    # (rows, cols)
    uid: int
    gid: int
    additional_gids: list[int]
    umask: int | None                       # None: not given
    capabilities: CapabilitySets | None     # None: not given (an exec inherits the init's)
    rlimits: list[tuple[int, int, int]]     # (resource, soft, hard)
    no_new_privileges: bool
    oom_score_adj: int | None

    def env_value(self, name: str) -> str | None:
        prefix = name + "="
        for entry in self.env:
            if entry.startswith(prefix):
                return entry[len(prefix):]
        return None


def _uint32(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 32:
        raise InvalidArgument(f"{field} must be an unsigned 32-bit integer")
    return value


def _strings(value: object, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{field} must be a list of strings")
    return list(value)


def plan_process(process: object, field: str = "process") -> ProcessPlan:
    only_known(process, field, _SUPPORTED,
               {key: f"host LSM labels mean nothing in the guest; {UNSUPPORTED}" for key in HOST_LSM_FIELDS})
    args = _strings(process.get("args"), f"{field}.args")
    if not args or not args[0]:
        raise InvalidArgument(f"{field}.args must name a program")
    if any("\0" in a for a in args):
        raise InvalidArgument(f"{field}.args must not contain NUL bytes")
    env = _strings(process.get("env"), f"{field}.env")
    if any("=" not in entry or "\0" in entry for entry in env):
        raise InvalidArgument(f"{field}.env entries must look like NAME=value")
    cwd = process.get("cwd", "/")
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise InvalidArgument(f"{field}.cwd must be an absolute path")
    user = only_known(process.get("user") or {}, f"{field}.user", ("uid", "gid", "umask", "additionalGids"))
    umask = user.get("umask")
    if umask is not None and (not isinstance(umask, int) or not 0 <= umask <= 0o777):
        raise InvalidArgument(f"{field}.user.umask must be 0-0777")
    size = process.get("consoleSize")
    console_size = None
    if size is not None:
        if not isinstance(size, dict):
            raise InvalidArgument(f"{field}.consoleSize must be an object")
        console_size = (_uint32(size.get("height", 0), f"{field}.consoleSize.height") & 0xFFFF,
                        _uint32(size.get("width", 0), f"{field}.consoleSize.width") & 0xFFFF)
    oom = process.get("oomScoreAdj")
    if oom is not None and (not isinstance(oom, int) or not -1000 <= oom <= 1000):
        raise InvalidArgument(f"{field}.oomScoreAdj must be -1000..1000")
    no_new_privileges = process.get("noNewPrivileges", False)
    if not isinstance(no_new_privileges, bool):
        raise InvalidArgument(f"{field}.noNewPrivileges must be true or false")
    return ProcessPlan(
        args=args, env=env, cwd=cwd, terminal=bool(process.get("terminal")),
        console_size=console_size,
        uid=_uint32(user.get("uid", 0), f"{field}.user.uid"),
        gid=_uint32(user.get("gid", 0), f"{field}.user.gid"),
        additional_gids=[_uint32(g, f"{field}.user.additionalGids") for g in
                         (user.get("additionalGids") or [])],
        umask=umask,
        capabilities=(parse_capabilities(process["capabilities"], f"{field}.capabilities")
                      if "capabilities" in process else None),
        rlimits=_rlimits(process.get("rlimits"), f"{field}.rlimits"),
        no_new_privileges=no_new_privileges,
        oom_score_adj=oom)


def _rlimits(rlimits: object, field: str) -> list[tuple[int, int, int]]:
    out = []
    seen = set()
    for where, limit in objects(rlimits, field):
        kind = limit.get("type")
        if kind not in RLIMITS:
            raise InvalidArgument(f"{where}.type: unknown rlimit {kind!r}")
        if kind in seen:
            raise InvalidArgument(f"{where}.type: {kind} given twice")
        seen.add(kind)
        values = []
        for key in ("soft", "hard"):
            value = limit.get(key)
            if not isinstance(value, int) or not 0 <= value < 1 << 64:
                raise InvalidArgument(f"{where}.{key} must be an unsigned 64-bit integer")
            values.append(value)
        if values[0] > values[1]:
            raise InvalidArgument(f"{where}: soft limit above the hard limit")
        out.append((RLIMITS[kind], values[0], values[1]))
    return out


def home_from_passwd(text: str | None, uid: int) -> str | None:
    """HOME for `uid` as crun sets it: the passwd entry's directory; "/" when the container
    has no /etc/passwd; unset (None) when the file does not list the uid."""
    if text is None:
        return "/"
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and fields[2].isdigit() and int(fields[2]) == uid:
            return fields[5]
    return None

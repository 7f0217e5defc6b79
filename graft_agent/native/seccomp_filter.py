"""`linux.seccomp` → a compiled seccomp BPF program, through libseccomp (Debian's python3-seccomp).

The program is compiled in the agent (and cached: every container of a pod usually carries the
same profile) and the child only installs the bytes with seccomp(2) right before exec. The
translation follows the OCI runtime spec the way crun does (rules whose action equals the
default action are skipped; several conditions on one argument become separate rules), except
that nothing is dropped silently: an unknown syscall name is refused unless leaving it out can
only deny more (an allow rule under a denying default).
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

from ..errors import FailedPrecondition, InvalidArgument
from .fields import UNSUPPORTED, objects, only_known

_FLAGS = {"SECCOMP_FILTER_FLAG_TSYNC": 1, "SECCOMP_FILTER_FLAG_LOG": 2,
          "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4}
_OPERATORS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
              "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ")
_ERRNO_ACTIONS = ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE")
_PERMISSIVE = ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG")
_KNOWN_KEYS = {"defaultAction", "defaultErrnoRet", "architectures", "flags", "syscalls"}
_UNSUPPORTED_KEYS = {key: f"seccomp user notification {UNSUPPORTED}"
                     for key in ("listenerPath", "listenerMetadata")}
_RULE_KEYS = {"names", "action", "errnoRet", "args", "comment", "includes", "excludes"}
_CACHE_SIZE = 8


class SeccompProgram(NamedTuple):
    bpf: bytes      # struct sock_filter[]
    flags: int      # seccomp(2) SECCOMP_FILTER_FLAG_*


class Rule(NamedTuple):
    action: str
    errno_ret: int | None
    name: str
    args: tuple[tuple[int, str, int, int], ...]  # (index, op, value, valueTwo)


class Profile(NamedTuple):
    """A validated `linux.seccomp` (pure data; compiled by `compile_profile`)."""
    default_action: str
    default_errno: int | None
    architectures: tuple[str, ...]
    flags: int
    rules: tuple[Rule, ...]


def parse_profile(doc: object, field: str = "linux.seccomp") -> Profile:
    only_known(doc, field, _KNOWN_KEYS, _UNSUPPORTED_KEYS)
    assert isinstance(doc, dict)
    default = _action(doc.get("defaultAction"), f"{field}.defaultAction")
    default_errno = _errno(doc, "defaultErrnoRet", default, field)
    flags = 0
    for flag in doc.get("flags") or []:
        if flag not in _FLAGS:
            raise InvalidArgument(f"{field}.flags: {flag!r} is not supported by the native runtime")
        flags |= _FLAGS[flag]
    arches = []
    for arch in doc.get("architectures") or []:
        if not isinstance(arch, str) or not arch.startswith("SCMP_ARCH_"):
            raise InvalidArgument(f"{field}.architectures: unknown architecture {arch!r}")
        arches.append(arch[len("SCMP_ARCH_"):].lower())
    rules = []
    for where, entry in objects(doc.get("syscalls"), f"{field}.syscalls"):
        only_known(entry, where, _RULE_KEYS, {key: UNSUPPORTED for key in ("includes", "excludes")
                                              if entry.get(key)})
        action = _action(entry.get("action"), f"{where}.action")
        errno_ret = _errno(entry, "errnoRet", action, where)
        args = tuple(_argument(arg, name) for name, arg in objects(entry.get("args"), f"{where}.args"))
        names = entry.get("names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InvalidArgument(f"{where}.names must be a list of syscall names")
        rules += [Rule(action, errno_ret, name, args) for name in names]
    return Profile(default, default_errno, tuple(arches), flags, tuple(rules))


def _action(value: object, field: str) -> str:
    actions = ("SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
               "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG")
    if value == "SCMP_ACT_NOTIFY":
        raise InvalidArgument(f"{field}: SCMP_ACT_NOTIFY is not supported by the native runtime")
    if value not in actions:
        raise InvalidArgument(f"{field}: unknown seccomp action {value!r}")
    return str(value)


def _errno(doc: dict, key: str, action: str, field: str) -> int | None:
    if key not in doc:
        return None
    if action not in _ERRNO_ACTIONS:
        raise InvalidArgument(f"{field}.{key} is only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE")
    value = doc[key]
    if not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{field}.{key} must be a non-negative integer")
    return value


def _argument(arg: dict, field: str) -> tuple[int, str, int, int]:
    index, op = arg.get("index"), arg.get("op")
    if not isinstance(index, int) or not 0 <= index < 6:
        raise InvalidArgument(f"{field}.index must be 0-5")
    if op not in _OPERATORS:
        raise InvalidArgument(f"{field}.op: unknown operator {op!r}")
    value, value_two = arg.get("value", 0), arg.get("valueTwo", 0)
    for name, number in (("value", value), ("valueTwo", value_two)):
        if not isinstance(number, int) or not 0 <= number < 1 << 64:
            raise InvalidArgument(f"{field}.{name} must be an unsigned 64-bit integer")
    return index, str(op), value, value_two


# -- compiling ----------------------------------------------------------------------------------

def _libseccomp():
    try:
        import seccomp  # Debian's python3-seccomp (libseccomp linked in)
    except ImportError as exc:
        raise FailedPrecondition("linux.seccomp: the guest has no libseccomp binding "
                                 f"(python3-seccomp): {exc}") from None
    return seccomp


def _scmp_action(lib, action: str, errno_ret: int | None):
    if action == "SCMP_ACT_ERRNO":
        return lib.ERRNO(1 if errno_ret is None else errno_ret)   # EPERM, as crun
    if action == "SCMP_ACT_TRACE":
        return lib.TRACE(1 if errno_ret is None else errno_ret)
    return {"SCMP_ACT_KILL": lib.KILL, "SCMP_ACT_KILL_THREAD": lib.KILL,
            "SCMP_ACT_KILL_PROCESS": lib.KILL_PROCESS, "SCMP_ACT_TRAP": lib.TRAP,
            "SCMP_ACT_ALLOW": lib.ALLOW, "SCMP_ACT_LOG": lib.LOG}[action]


def compile_profile(profile: Profile) -> SeccompProgram:
    lib = _libseccomp()
    default = _scmp_action(lib, profile.default_action, profile.default_errno)
    filt = lib.SyscallFilter(default)
    for arch in profile.architectures:
        try:
            token = lib.Arch(arch)
        except Exception:
            raise InvalidArgument(f"linux.seccomp.architectures: unknown architecture {arch!r}") from None
        if not filt.exist_arch(token):
            filt.add_arch(token)
    operators = {name: getattr(lib, name[len("SCMP_CMP_"):]) for name in _OPERATORS}
    for rule in profile.rules:
        action = _scmp_action(lib, rule.action, rule.errno_ret)
        if action == default:
            continue
        if lib.resolve_syscall(lib.Arch.NATIVE, rule.name) == -1:
            if rule.action in _PERMISSIVE and profile.default_action not in _PERMISSIVE:
                continue  # unknown to libseccomp: it stays denied, which is what a deny-by-default wants
            raise InvalidArgument(f"linux.seccomp.syscalls: unknown syscall {rule.name!r} "
                                  f"(libseccomp {lib.get_api()} cannot resolve it)")
        conditions = [lib.Arg(index, operators[op], value, value_two)
                      for index, op, value, value_two in rule.args]
        indexes = [c[0] for c in rule.args]
        try:
            if len(set(indexes)) == len(indexes):
                filt.add_rule(action, rule.name, *conditions)
            else:  # several conditions on one argument: one rule each (they OR)
                for condition in conditions:
                    filt.add_rule(action, rule.name, condition)
        except (RuntimeError, ValueError) as exc:
            raise InvalidArgument(f"linux.seccomp: rule for {rule.name!r} rejected by libseccomp: "
                                  f"{exc}") from None
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    try:
        with open(fd, "w+b", closefd=False) as out:
            filt.export_bpf(out)
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return SeccompProgram(b"".join(chunks), profile.flags)


class SeccompCompiler:
    """Compiles profiles once per distinct document."""

    def __init__(self) -> None:
        self._cache: dict[str, SeccompProgram] = {}
        try:   # imported now (agent warm-up, so also in a template), not by the first profile
            _libseccomp()
        except FailedPrecondition:
            pass

    def program(self, doc: dict) -> SeccompProgram:
        key = json.dumps(doc, sort_keys=True)
        program = self._cache.get(key)
        if program is None:
            program = compile_profile(parse_profile(doc))
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = program
        return program

"""The cgroup v2 device allow-list: `linux.resources.devices` as a BPF_PROG_TYPE_CGROUP_DEVICE
program, assembled here and loaded/attached with bpf(2).

Rule order (the same as crun's, so both runtimes allow exactly the same devices): the runtime's
default devices are checked first (always allowed), then the spec's rules from last to first
(the last matching rule wins, as with cgroup v1's devices.allow/deny); anything unmatched is
denied. A rule that matches every device ends the program there.
"""

from __future__ import annotations

import ctypes
import struct
from typing import NamedTuple

from ..errors import InvalidArgument
from . import linux
from .fields import objects, only_known

# linux/bpf.h
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
BPF_DEVCG_ACC_MKNOD, BPF_DEVCG_ACC_READ, BPF_DEVCG_ACC_WRITE = 1, 2, 4
BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR = 1, 2
_ACCESS = {"m": BPF_DEVCG_ACC_MKNOD, "r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE}
_ALL_ACCESS = BPF_DEVCG_ACC_MKNOD | BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE

# eBPF opcodes (linux/bpf_common.h, linux/bpf.h)
_LDX_W = 0x61       # BPF_LDX | BPF_W | BPF_MEM
_AND32_K = 0x54     # BPF_ALU | BPF_AND | BPF_K
_RSH32_K = 0x74     # BPF_ALU | BPF_RSH | BPF_K
_MOV32_X = 0xBC     # BPF_ALU | BPF_MOV | BPF_X
_MOV64_K = 0xB7     # BPF_ALU64 | BPF_MOV | BPF_K
_JNE_K = 0x55       # BPF_JMP | BPF_JNE | BPF_K
_JNE_X = 0x5D       # BPF_JMP | BPF_JNE | BPF_X
_EXIT = 0x95        # BPF_JMP | BPF_EXIT


class DeviceRule(NamedTuple):
    allow: bool
    type: str           # "a", "c" or "b"
    major: int | None   # None: any
    minor: int | None
    access: int         # BPF_DEVCG_ACC_* bits


# What every container may use whatever its rules say (crun's list: mknod of any node, and
# null, random, full, tty, zero, urandom, console, pts/*, ptmx).
DEFAULT_RULES = (
    DeviceRule(True, "c", None, None, BPF_DEVCG_ACC_MKNOD),
    DeviceRule(True, "b", None, None, BPF_DEVCG_ACC_MKNOD),
    *(DeviceRule(True, "c", major, minor, _ALL_ACCESS)
      for major, minor in ((1, 3), (1, 8), (1, 7), (5, 0), (1, 5), (1, 9), (5, 1), (136, None),
                           (5, 2))),
)


def parse_rules(rules: object, field: str = "linux.resources.devices") -> list[DeviceRule]:
    parsed = []
    for where, rule in objects(rules, field):
        only_known(rule, where, ("allow", "type", "major", "minor", "access"))
        if not isinstance(rule.get("allow"), bool):
            raise InvalidArgument(f"{where}.allow must be true or false")
        kind = rule.get("type") or "a"
        if kind not in ("a", "c", "b"):
            raise InvalidArgument(f"{where}.type must be a, c or b, not {kind!r}")
        access_text = rule.get("access") or "rwm"
        if not isinstance(access_text, str) or set(access_text) - set(_ACCESS):
            raise InvalidArgument(f"{where}.access must be made of r, w and m, not {access_text!r}")
        access = 0
        for letter in access_text:
            access |= _ACCESS[letter]
        numbers = []
        for key in ("major", "minor"):
            value = rule.get(key)
            if value is not None and (not isinstance(value, int) or value < -1 or value >= 1 << 32):
                raise InvalidArgument(f"{where}.{key} must be a device number or -1 (any)")
            numbers.append(None if value in (None, -1) else value)
        parsed.append(DeviceRule(rule["allow"], kind, numbers[0], numbers[1], access))
    return parsed


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _matches_all(rule: DeviceRule) -> bool:
    return rule.type == "a" and rule.major is None and rule.minor is None and rule.access == _ALL_ACCESS


def assemble(rules: list[DeviceRule]) -> bytes:
    """The program for `rules` (spec order) behind the default devices."""
    # r1 = struct bpf_cgroup_dev_ctx {u32 access_type (access << 16 | type); u32 major, minor}
    program = [
        _insn(_LDX_W, dst=2, src=1, off=0), _insn(_AND32_K, dst=2, imm=0xFFFF),   # r2 = type
        _insn(_LDX_W, dst=3, src=1, off=0), _insn(_RSH32_K, dst=3, imm=16),       # r3 = access
        _insn(_LDX_W, dst=4, src=1, off=4),                                       # r4 = major
        _insn(_LDX_W, dst=5, src=1, off=8),                                       # r5 = minor
    ]
    for rule in (*reversed(DEFAULT_RULES), *reversed(rules)):
        tests: list[tuple[int, int, int, int]] = []   # (code, dst, src, imm) of "skip if" jumps
        if rule.type != "a":
            tests.append((_JNE_K, 2, 0, BPF_DEVCG_DEV_BLOCK if rule.type == "b" else BPF_DEVCG_DEV_CHAR))
        check_access = rule.access != _ALL_ACCESS
        if rule.major is not None:
            tests.append((_JNE_K, 4, 0, rule.major))
        if rule.minor is not None:
            tests.append((_JNE_K, 5, 0, rule.minor))
        # Instructions after each jump up to the end of this rule's block.
        remaining = len(tests) + (3 if check_access else 0) + 2
        block = []
        for code, dst, src, imm in tests[:1]:
            remaining -= 1
            block.append(_insn(code, dst=dst, src=src, off=remaining, imm=imm))
        if check_access:  # (request & rule) must equal request
            block += [_insn(_MOV32_X, dst=1, src=3), _insn(_AND32_K, dst=1, imm=rule.access)]
            remaining -= 3
            block.append(_insn(_JNE_X, dst=1, src=3, off=remaining))
        for code, dst, src, imm in tests[1:]:
            remaining -= 1
            block.append(_insn(code, dst=dst, src=src, off=remaining, imm=imm))
        block += [_insn(_MOV64_K, dst=0, imm=int(rule.allow)), _insn(_EXIT)]
        program += block
        if _matches_all(rule):
            return b"".join(program)
    program += [_insn(_MOV64_K, dst=0, imm=0), _insn(_EXIT)]
    return b"".join(program)


def load(program: bytes) -> int:
    """BPF_PROG_LOAD; returns the program fd (the verifier's log is in the error)."""
    insns = ctypes.create_string_buffer(program, len(program))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 16)

    def attr(log_level: int) -> bytes:
        return struct.pack("<IIQQIIQII16sII", BPF_PROG_TYPE_CGROUP_DEVICE, len(program) // 8,
                           linux.address_of(insns), linux.address_of(license_), log_level,
                           len(log) if log_level else 0, linux.address_of(log) if log_level else 0,
                           0, 0, b"graft_devices", 0, 0)
    try:
        return linux.bpf(BPF_PROG_LOAD, attr(0))
    except OSError:
        try:
            return linux.bpf(BPF_PROG_LOAD, attr(1))
        except OSError as exc:
            text = log.value.decode(errors="replace").strip()
            raise OSError(exc.errno, f"loading the device filter: {exc.strerror}"
                          + (f" ({text[-500:]})" if text else "")) from None


def attach(program_fd: int, cgroup_fd: int) -> None:
    linux.bpf(BPF_PROG_ATTACH, struct.pack("<IIIII", cgroup_fd, program_fd, BPF_CGROUP_DEVICE,
                                           BPF_F_ALLOW_MULTI, 0))


def detach(program_fd: int, cgroup_fd: int) -> None:
    linux.bpf(BPF_PROG_DETACH, struct.pack("<IIIII", cgroup_fd, program_fd, BPF_CGROUP_DEVICE, 0, 0))

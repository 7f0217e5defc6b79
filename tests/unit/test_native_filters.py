"""The native runtime's filters against the real kernel of this host: seccomp programs built with
libseccomp (python3-seccomp) and installed with seccomp(2), and the cgroup v2 device filter
assembled here, checked by an interpreter of its instructions and by the kernel's verifier
and cgroup hook."""
from __future__ import annotations

import errno
import os
import struct
import sys
from pathlib import Path

import pytest

from agent_harness import host_cgroup2_root, seccomp_binding_dir
from graft_agent.errors import InvalidArgument
from graft_agent.native import device_filter as D
from graft_agent.native import linux as L


@pytest.fixture(scope="module")
def seccomp_lib(tmp_path_factory: pytest.TempPathFactory):
    binding = seccomp_binding_dir(tmp_path_factory.mktemp("seccomp"))
    if binding is None:
        pytest.skip("python3-seccomp is not installed (apt-get install python3-seccomp)")
    sys.path.insert(0, str(binding))
    try:
        import seccomp
    finally:
        sys.path.remove(str(binding))
    return seccomp


def _in_child(body) -> int:
    """Run body() in a forked child; its return value is the exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(body())
        except BaseException:
            os._exit(99)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


PROFILE = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
    "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES},
        {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 2, "value": 0o777, "op": "SCMP_CMP_EQ"}]},
        {"names": ["chmod"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 1, "value": 0o777, "op": "SCMP_CMP_EQ"}]},
        {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},   # same as the default: skipped
    ],
}


def test_seccomp_program_is_enforced_by_the_kernel(seccomp_lib, tmp_path: Path) -> None:
    from graft_agent.native.seccomp_filter import SeccompCompiler

    compiler = SeccompCompiler()
    program = compiler.program(PROFILE)
    assert program is compiler.program(dict(PROFILE))   # compiled once per document
    assert len(program.bpf) % 8 == 0 and program.flags == 0
    target = tmp_path / "f"
    target.write_text("")

    def body() -> int:
        L.prctl(L.PR_SET_NO_NEW_PRIVS, 1)
        L.load_seccomp(program.bpf, program.flags)
        try:
            os.mkdir(tmp_path / "d")
            return 1
        except PermissionError as exc:
            if exc.errno != errno.EACCES:
                return 2
        os.chmod(target, 0o755)                 # another mode: allowed
        try:
            os.chmod(target, 0o777)
            return 3
        except PermissionError as exc:
            return 0 if exc.errno == errno.EPERM else 4   # errnoRet defaults to EPERM
    assert _in_child(body) == 0
    assert not (tmp_path / "d").exists()


def test_seccomp_unknown_syscalls(seccomp_lib) -> None:
    from graft_agent.native.seccomp_filter import compile_profile, parse_profile

    allowlist = {"defaultAction": "SCMP_ACT_ERRNO",
                 "syscalls": [{"names": ["read", "no_such_call"], "action": "SCMP_ACT_ALLOW"}]}
    assert compile_profile(parse_profile(allowlist)).bpf   # left out: it stays denied
    denylist = {"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["no_such_call"], "action": "SCMP_ACT_KILL"}]}
    with pytest.raises(InvalidArgument, match="unknown syscall 'no_such_call'"):
        compile_profile(parse_profile(denylist))
    with pytest.raises(InvalidArgument, match="unknown architecture"):
        compile_profile(parse_profile({"defaultAction": "SCMP_ACT_ALLOW",
                                       "architectures": ["SCMP_ARCH_VAX"]}))


# -- the device filter --------------------------------------------------------------------------

def run_program(program: bytes, kind: int, major: int, minor: int, access: int) -> int:
    """Interpret the subset of eBPF the assembler emits (and fail on anything else)."""
    regs = [0] * 11
    ctx = struct.pack("<III", (access << 16) | kind, major, minor)
    insns = [struct.unpack("<BBhi", program[i:i + 8]) for i in range(0, len(program), 8)]
    pc, steps = 0, 0
    while True:
        steps += 1
        assert steps < 10_000
        code, regs_byte, off, imm = insns[pc]
        dst, src = regs_byte & 0xF, regs_byte >> 4
        pc += 1
        if code == 0x61:
            assert src == 1
            regs[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif code == 0x54:
            regs[dst] = regs[dst] & imm & 0xFFFFFFFF
        elif code == 0x74:
            regs[dst] = (regs[dst] & 0xFFFFFFFF) >> imm
        elif code == 0xBC:
            regs[dst] = regs[src] & 0xFFFFFFFF
        elif code == 0xB7:
            regs[dst] = imm
        elif code == 0x55:
            pc += off if regs[dst] != imm else 0
        elif code == 0x5D:
            pc += off if regs[dst] != regs[src] else 0
        elif code == 0x95:
            return regs[0]
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def reference(rules: list[D.DeviceRule], kind: int, major: int, minor: int, access: int) -> int:
    """The intended semantics: default devices allowed; else the last matching rule decides."""
    def matches(rule: D.DeviceRule) -> bool:
        type_ok = rule.type == "a" or (rule.type == "b") == (kind == D.BPF_DEVCG_DEV_BLOCK)
        return (type_ok and rule.major in (None, major) and rule.minor in (None, minor)
                and access & rule.access == access)
    if any(matches(r) for r in D.DEFAULT_RULES):
        return 1
    for rule in reversed(rules):
        if matches(rule):
            return int(rule.allow)
    return 0


RULE_SETS = [
    [{"allow": False, "access": "rwm"}],
    [{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rw"}],
    [{"allow": True, "access": "rwm"}],
    [{"allow": True, "type": "b", "major": 8, "access": "r"}, {"allow": False, "type": "b", "major": 8, "minor": 1}],
    [{"allow": True, "type": "c", "minor": 5, "access": "m"}, {"allow": False, "type": "a", "access": "w"}],
    [],
]


@pytest.mark.parametrize("rules", RULE_SETS)
def test_device_program_semantics(rules: list[dict]) -> None:
    parsed = D.parse_rules(rules)
    program = D.assemble(parsed)
    for kind in (D.BPF_DEVCG_DEV_CHAR, D.BPF_DEVCG_DEV_BLOCK):
        for major, minor in ((1, 3), (1, 5), (1, 11), (5, 2), (10, 200), (8, 0), (8, 1), (136, 7), (4, 5)):
            for access in range(1, 8):
                assert run_program(program, kind, major, minor, access) == \
                    reference(parsed, kind, major, minor, access), (kind, major, minor, access)


def _kmsg_writable_in(cgroup: Path) -> int:
    def body() -> int:
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))
        try:
            os.close(os.open("/dev/kmsg", os.O_WRONLY))
            return 0
        except PermissionError:
            return 1
    return _in_child(body)


def test_device_filter_in_a_real_cgroup(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    try:
        cgroup = host_cgroup2_root() / f"graft-devtest-{os.getpid()}"
    except RuntimeError as exc:
        pytest.skip(str(exc))
    cgroup.mkdir()
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    programs = []
    try:
        deny = D.load(D.assemble(D.parse_rules(RULE_SETS[0])))
        programs.append(deny)
        D.attach(deny, fd)
        assert _kmsg_writable_in(cgroup) == 1          # c 1:11 is not a default device
        allow = D.load(D.assemble(D.parse_rules(
            [*RULE_SETS[0], {"allow": True, "type": "c", "major": 1, "minor": 11, "access": "w"}])))
        programs.append(allow)
        D.attach(allow, fd)
        D.detach(deny, fd)
        assert _kmsg_writable_in(cgroup) == 0
    finally:
        for program in programs:
            os.close(program)
        os.close(fd)
        cgroup.rmdir()

"""What a container's process does between clone and exec (it runs in the forked child).

The agent prepared everything (plan, compiled seccomp program, fds); the child only makes
syscalls. It talks to the agent over one SOCK_SEQPACKET socket (close-on-exec):
  child → agent  b"T" + the pty master (SCM_RIGHTS)   its terminal, when it has one
                 b"R"                                  set up, waiting (init only)
                 b"E" + message                        failed; the child then exits
  agent → child  b"S"                                  start: exec now (init only)
The agent sees end-of-file once the exec happened (or the child died).
The sequence follows crun's, so both runtimes give a container the same view.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
from typing import NamedTuple, NoReturn

from ..fsutil import write_raw
from . import capabilities, linux as L
from .executable import find_executable
from .process_spec import ProcessPlan, home_from_passwd
from .rootfs import pivot, prepare_rootfs
from .seccomp_filter import SeccompProgram
from .spec import ContainerPlan

READY, START, ERROR, TERMINAL = b"R", b"S", b"E", b"T"
_TIOCGPTN = 0x80045430
_TIOCSPTLCK = 0x40045431
_TIOCSCTTY = 0x540E
_TIOCSWINSZ = 0x5414
_DEV_NULL_RDEV = os.makedev(1, 3)
_EXIT_SETUP_FAILED = 127
_READ_CHUNK = 65536


class ChildSetup(NamedTuple):
    control: socket.socket           # the child's end of the control socket
    stdio: tuple[int, int, int] | None   # fds for 0, 1, 2 (None: the process gets a terminal)
    seccomp: SeccompProgram | None
    last_cap: int
    handled_signals: list[int]       # signals the agent handles or ignores (reset to default)


class InitSetup(NamedTuple):
    common: ChildSetup
    plan: ContainerPlan
    join: list[tuple[int, int]]      # (namespace fd, CLONE_NEW*) to setns into
    no_pivot: bool


class ExecSetup(NamedTuple):
    common: ChildSetup
    process: ProcessPlan
    container: ContainerPlan          # the init's plan (env, caps and personality fall back to it)
    init_pidfd: int
    namespace_flags: int              # CLONE_NEW* of the init's namespaces to join (not pid)


def run(body, setup) -> NoReturn:
    """Child entry point: never returns into the agent's code."""
    control = setup.common.control.fileno()
    try:
        body(setup)
        message = "exec returned"
    except BaseException as exc:  # noqa: BLE001 - everything is reported, nothing escapes
        message = _describe(exc)
    try:
        os.write(control, ERROR + message.encode(errors="replace")[:32768])
    finally:
        os._exit(_EXIT_SETUP_FAILED)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename is None and exc.args[1:]:
        return str(exc.args[1])
    return str(exc) or type(exc).__name__


# -- shared steps ---------------------------------------------------------------------------------

def _detach_from_agent(common: ChildSetup) -> None:
    """First thing: nobody may ptrace or read /proc of this still-privileged process, and the
    agent's signal handlers (and their wakeup fd) must not run here."""
    L.prctl(L.PR_SET_DUMPABLE, 0, what="prctl(PR_SET_DUMPABLE)")
    signal.set_wakeup_fd(-1)
    for sig in common.handled_signals:   # also undoes Python's SIG_IGN of SIGPIPE/SIGXFSZ
        signal.signal(sig, signal.SIG_DFL)
    if common.stdio is not None:
        for target, fd in enumerate(common.stdio):
            os.dup2(fd, target)


def _reopen_dev_null() -> None:
    """fds on the agent's /dev/null move to the container's (crun does the same)."""
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    try:
        for fd in (0, 1, 2):
            if os.fstat(fd).st_rdev == _DEV_NULL_RDEV:
                os.dup2(null, fd)
    finally:
        os.close(null)


def _chown_std_streams(uid: int, gid: int) -> None:
    for fd in (0, 1, 2):
        if not os.isatty(fd):
            try:
                os.fchown(fd, uid, gid)
            except OSError as exc:
                if exc.errno not in (22, 1, 30):  # EINVAL, EPERM, EROFS: left to the payload
                    raise


def _read_file(path: str) -> str | None:
    """A small file's text (os-level: no io objects in the child); None if it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, _READ_CHUNK):
            chunks.append(chunk)
            if len(chunk) < _READ_CHUNK:
                break   # a regular file's end (over 9p, reading on costs another round trip)
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def _environment(env: list[str], uid: int) -> dict[str, str]:
    values: dict[str, str] = {}
    for entry in env:
        name, _, value = entry.partition("=")
        values[name] = value
    if "HOME" not in values:
        home = home_from_passwd(_read_file("/etc/passwd"), uid)
        if home is not None:
            values["HOME"] = home
    return values


def _terminal(common: ChildSetup, process: ProcessPlan, console: bool) -> None:
    """A pty from the container's own devpts: the slave becomes 0-2 and the controlling
    terminal (and /dev/console for an init), the master goes to the agent."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, b"\0" * 4))[0]
        fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
        pty = f"/dev/pts/{number}"
        slave = os.open(pty, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        os.close(slave)
        fcntl.ioctl(0, _TIOCSCTTY, 0)
        if process.uid:
            os.chown(pty, process.uid, -1)
        if process.console_size is not None:
            rows, cols = process.console_size
            fcntl.ioctl(0, _TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        if console:
            L.mount(pty, "/dev/console", None, L.MS_BIND)
            L.mount(None, "/dev/console", None, L.MS_REMOUNT | L.MS_BIND)
        socket.send_fds(common.control, [TERMINAL], [master])
    finally:
        os.close(master)


def _credentials(common: ChildSetup, process: ProcessPlan, caps: capabilities.CapabilitySets) -> None:
    """crun's set_required_caps: bounding set, uid/gid with the caps kept, then the sets."""
    capabilities.drop_bounding(caps.bounding, common.last_cap)
    L.prctl(L.PR_SET_KEEPCAPS, 1, what="prctl(PR_SET_KEEPCAPS)")
    L.setresgid(process.gid)
    L.setresuid(process.uid)
    capabilities.apply_sets(caps, common.last_cap)
    if process.no_new_privileges:
        L.prctl(L.PR_SET_NO_NEW_PRIVS, 1, what="prctl(PR_SET_NO_NEW_PRIVS)")


def _rlimits(process: ProcessPlan) -> None:
    for resource, soft, hard in process.rlimits:
        L.setrlimit(resource, soft, hard)


def _exec(common: ChildSetup, executable: str, args: list[str], env: dict[str, str],
          late_seccomp: bool) -> None:
    if late_seccomp and common.seccomp is not None:
        L.load_seccomp(common.seccomp.bpf, common.seccomp.flags)
    L.close_range_cloexec(3)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    os.execve(executable, args, env)


# -- a container's init -----------------------------------------------------------------------------

def init_body(setup: InitSetup) -> None:
    common, plan = setup.common, setup.plan
    process = plan.process
    _detach_from_agent(common)
    for fd, nstype in setup.join:
        L.setns(fd, nstype)
        os.close(fd)
    if process.oom_score_adj:
        write_raw("/proc/self/oom_score_adj", str(process.oom_score_adj))
    if plan.namespaces.new_cgroup:
        L.unshare(L.CLONE_NEWCGROUP)   # now, so its root is the container's own cgroup
    L.setgroups(process.additional_gids)
    for name, value in plan.sysctls:
        write_raw(f"/proc/sys/{name}", value)
    root = prepare_rootfs(plan)
    pivot(plan, root, setup.no_pivot)
    _reopen_dev_null()
    _chown_std_streams(process.uid, process.gid)
    env = _environment(process.env, process.uid)
    chdir_done = _try_chdir(process.cwd)
    executable = find_executable(process.args[0], env.get("PATH"), process.cwd,
                                 pins=[])   # held until the exec closes them
    os.setsid()
    if process.terminal:
        _terminal(common, process, console=True)
    if plan.hostname:
        L.sethostname(plan.hostname)
    if plan.domainname:
        L.setdomainname(plan.domainname)
    if plan.personality is not None:
        L.personality(plan.personality)
    os.umask(process.umask if process.umask is not None else 0o022)
    _rlimits(process)
    if common.seccomp is not None and not process.no_new_privileges:
        L.load_seccomp(common.seccomp.bpf, common.seccomp.flags)  # needs CAP_SYS_ADMIN: before the drop
    _credentials(common, process, process.capabilities or capabilities.CapabilitySets(0, 0, 0, 0, 0))
    if not chdir_done:
        os.chdir(process.cwd)
    control = common.control.fileno()
    os.write(control, READY)
    if os.read(control, 16) != START:
        os._exit(0)   # the agent gave up on this container
    _exec(common, executable, process.args, env, late_seccomp=process.no_new_privileges)


def _try_chdir(path: str) -> bool:
    try:
        os.chdir(path)
        return True
    except OSError:
        return False   # tried again as the container's user


# -- a process exec'd into a running container ---------------------------------------------------

def exec_body(setup: ExecSetup) -> None:
    common, process, container = setup.common, setup.process, setup.container
    _detach_from_agent(common)
    L.setns(setup.init_pidfd, setup.namespace_flags)   # mount ns: root and cwd are the container's
    os.close(setup.init_pidfd)
    if process.oom_score_adj is not None:
        write_raw("/proc/self/oom_score_adj", str(process.oom_score_adj))
    chdir_done = _try_chdir(process.cwd)
    env = _environment(process.env or container.process.env, process.uid)
    executable = find_executable(process.args[0], env.get("PATH"), process.cwd,
                                 pins=[])   # held until the exec closes them
    if container.personality is not None:
        L.personality(container.personality)
    _rlimits(process)
    if process.umask is not None:
        os.umask(process.umask)
    if common.seccomp is not None and not process.no_new_privileges:
        L.load_seccomp(common.seccomp.bpf, common.seccomp.flags)
    L.setgroups(process.additional_gids)
    os.setsid()
    if process.terminal:
        _terminal(common, process, console=False)
    _chown_std_streams(process.uid, process.gid)
    caps = process.capabilities or container.process.capabilities or capabilities.CapabilitySets(0, 0, 0, 0, 0)
    _credentials(common, process, caps)
    if not chdir_done:
        os.chdir(process.cwd)
    _exec(common, executable, process.args, env, late_seccomp=process.no_new_privileges)

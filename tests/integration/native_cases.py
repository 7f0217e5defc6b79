"""OCI spec cases for the crun-vs-native differential test, and how a container's view of
itself is probed and normalised for comparison.

Each case is a CRI-like spec (what containerd's CRI plugin writes, as the shim hands it to the
guest) changed in one respect. The container runs PROBE (busybox sh), which prints what it
observes: /proc/self/status lines, ids, limits, mounts, devices, cgroup files, environment...
Things that differ between any two runs (container ids, pids outside the container, mount ids,
pipe inodes) are normalised away; everything else must be identical under both runtimes.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from graft_agent.pod_paths import POD_NAMESPACES, POD_SHM

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
# kubelet's defaults (securitycontext.defaultMaskedPaths / defaultReadonlyPaths)
MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"]
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

PROBE = r"""
s() { echo "== $1"; }
s status; grep -E '^(Uid|Gid|Groups|Umask|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp|Seccomp_filters|NSpid|NSpgid|NSsid):' /proc/self/status
s id; id
s uts; hostname; cat /proc/sys/kernel/domainname; uname -m
s cwd; pwd
s env; env | sort
s limits; cat /proc/self/limits
s oom; cat /proc/self/oom_score_adj
s cgroup; cat /proc/self/cgroup
cg=$(sed -n 's/^0:://p' /proc/self/cgroup)
for f in cgroup.controllers memory.max memory.swap.max memory.low cpu.max cpu.weight cpu.idle pids.max cpuset.cpus io.weight; do echo "$f=$(cat /sys/fs/cgroup$cg/$f 2>&1)"; done
s mounts; cat /proc/self/mountinfo
s dev; for f in /dev/* /dev/pts/* /dev/mqueue /dev/shm; do stat -c '%n %A %u %g %t:%T %F' "$f"; done
ls -l /dev | grep -- '->' | awk '{print $9, $10, $11}'
s fds; for fd in 0 1 2; do echo "$fd $(readlink /proc/self/fd/$fd) $(stat -L -c '%u:%g' /proc/self/fd/$fd)"; done
s tty; tty; stty size 2>&1
s devices; head -c 1 /dev/zero | wc -c
if mknod /dev/.tun c 10 200 2>/dev/null; then echo "tun: $(head -c 1 /dev/.tun 2>&1 >/dev/null | sed 's/.*: //')"; rm -f /dev/.tun; else echo "mknod refused"; fi
s writes; touch /.probe 2>&1; echo "touch / $?"; rm -f /.probe
echo 1 2>&1 >/proc/sys/kernel/ns_last_pid; echo "write /proc/sys $?"
cat /proc/kcore 2>&1 | head -c 1 | wc -c
s syscalls; mkdir /tmp/.d 2>&1; echo "mkdir $?"; rmdir /tmp/.d 2>/dev/null
touch /tmp/.f; chmod 777 /tmp/.f 2>&1; echo "chmod 777 $?"; chmod 755 /tmp/.f 2>&1; echo "chmod 755 $?"; rm -f /tmp/.f
s ps; ps -o pid,user,args
"""


@dataclass
class Case:
    name: str
    change: Callable[[dict], None] = lambda spec: None
    expect: list[str] = field(default_factory=list)   # lines (substrings) the probe must show
    reject: list[str] = field(default_factory=list)   # ... and must not show
    exec_process: Callable[[dict], dict] | None = None  # run PROBE as an exec, not as the init
    probe_extra: str = ""
    exit_status: int = 0


def base_spec(rootfs_guest: str) -> dict[str, Any]:
    caps = list(DEFAULT_CAPS)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0, "additionalGids": [0]},
            "args": ["sh", "-c", PROBE],
            "env": [f"PATH={PATH}", "HOSTNAME=pod"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "oomScoreAdj": 0,
        },
        "root": {"path": "rootfs"},
        "hostname": "pod",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": "/etc/hostname", "type": "bind", "source": f"{rootfs_guest}/etc/passwd",
             "options": ["rbind", "rprivate", "rw"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}],
                          "cpu": {"shares": 2}},
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
            "maskedPaths": list(MASKED),
            "readonlyPaths": list(READONLY),
        },
    }


def syscall_names() -> list[str]:
    """Every x86-64 syscall the build host's headers know (for a deny-by-default profile)."""
    header = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h").read_text()
    return re.findall(r"#define __NR_(\w+) \d+", header)


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def change(spec: dict) -> None:
        *parents, last = path.split(".")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return change


def _all(*changes: Callable[[dict], None]) -> Callable[[dict], None]:
    def change(spec: dict) -> None:
        for one in changes:
            one(spec)
    return change


def _add_mounts(*mounts: dict) -> Callable[[dict], None]:
    return lambda spec: spec["mounts"].extend(mounts)


def _add_namespace(kind: str) -> Callable[[dict], None]:
    return lambda spec: spec["linux"]["namespaces"].append({"type": kind})


def _exec_as(**process: Any) -> Callable[[dict], dict]:
    def build(spec: dict) -> dict:
        proc = copy.deepcopy(spec["process"])
        proc.pop("oomScoreAdj", None)
        proc.update(process)
        return proc
    return build


_DENY_MKDIR = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                            {"names": ["fchmodat", "chmod"], "action": "SCMP_ACT_ERRNO",
                             "args": [{"index": 1, "value": 0o777, "op": "SCMP_CMP_EQ"}]},
                            {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO",
                             "args": [{"index": 2, "value": 0o777, "op": "SCMP_CMP_EQ"}]}]}


def _allowlist_profile() -> dict:
    denied = {"mkdir", "mkdirat", "reboot", "kexec_load", "init_module", "mount", "umount2"}
    return {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": [n for n in syscall_names() if n not in denied], "action": "SCMP_ACT_ALLOW"},
                         {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
                         {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}]}]}


def cases(rootfs_guest: str) -> list[Case]:
    return [
        Case("cri-default", expect=["Uid:\t0\t0\t0\t0", "CapBnd:\t00000000a80425fb", "NoNewPrivs:\t0",
                                    "/proc/kcore", "write /proc/sys 1", "tun: Operation not permitted"]),
        Case("user-and-groups", _set("process.user", {"uid": 1000, "gid": 1000, "additionalGids": [10, 20, 1000]}),
             expect=["Uid:\t1000\t1000\t1000\t1000", "Groups:\t10 20 1000", "CapEff:\t0000000000000000"]),
        Case("umask", _set("process.user", {"uid": 0, "gid": 0, "umask": 0o027}), expect=["Umask:\t0027"]),
        Case("capabilities-ambient", _all(
            _set("process.user", {"uid": 1000, "gid": 1000}),
            _set("process.capabilities", {c: ["CAP_NET_BIND_SERVICE", "CAP_KILL"] for c in
                                           ("bounding", "effective", "permitted", "inheritable")}
                 | {"ambient": ["CAP_NET_BIND_SERVICE"]})),
             expect=["CapAmb:\t0000000000000400", "CapBnd:\t0000000000000420"]),
        Case("no-capabilities-no-new-privs", _all(_set("process.capabilities", {}),
                                                  _set("process.noNewPrivileges", True)),
             expect=["CapBnd:\t0000000000000000", "NoNewPrivs:\t1", "mknod refused"]),
        Case("readonly-rootfs", _set("root.readonly", True), expect=["Read-only file system", "touch / 1"]),
        Case("masked-and-readonly-paths", _all(
            _set("linux.maskedPaths", MASKED + ["/etc/group", "/bin/../root"]),
            _set("linux.readonlyPaths", READONLY + ["/tmp", "/no/such/path"])),
             expect=["mkdir: can't create directory '/tmp/.d': Read-only file system"]),
        Case("env-and-cwd", _all(
            _set("process.env", [f"PATH={PATH}", "A=1", "B=two words", "A=3", "EMPTY="]),
            _set("process.cwd", "/var/lib/new/dir")),
             expect=["A=3", "HOME=/root", "/var/lib/new/dir"]),
        Case("rlimits", _set("process.rlimits", [
            {"type": "RLIMIT_NOFILE", "soft": 1000, "hard": 2000},
            {"type": "RLIMIT_NPROC", "soft": 500, "hard": 600},
            {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
            {"type": "RLIMIT_STACK", "soft": 4194304, "hard": 8388608}]),
             expect=["Max open files            1000                 2000"]),
        Case("seccomp-errno-rules", _set("linux.seccomp", _DENY_MKDIR),
             expect=["Seccomp:\t2", "Permission denied", "chmod 777 1", "chmod 755 0"]),
        Case("seccomp-allowlist-nnp", _all(_set("linux.seccomp", _allowlist_profile()),
                                           _set("process.noNewPrivileges", True)),
             expect=["Seccomp:\t2", "NoNewPrivs:\t1", "mkdir 1"]),
        Case("seccomp-non-root-no-nnp", _all(_set("linux.seccomp", _DENY_MKDIR),
                                             _set("process.user", {"uid": 1000, "gid": 1000})),
             expect=["Seccomp:\t2", "NoNewPrivs:\t0", "Uid:\t1000"]),
        Case("terminal", _all(_set("process.terminal", True),
                              _set("process.consoleSize", {"height": 40, "width": 120})),
             expect=["/dev/pts/0", "40 120", "/dev/console"]),
        Case("hostname-domainname", _all(_set("hostname", "native-host"), _set("domainname", "example.org")),
             expect=["native-host", "example.org"]),
        Case("cgroup-memory", _set("linux.resources", {
            "devices": [{"allow": False, "access": "rwm"}],
            "memory": {"limit": 67108864, "swap": 100663296, "reservation": 33554432}}),
             expect=["memory.max=67108864", "memory.low=33554432"]),
        Case("cgroup-cpu-pids", _set("linux.resources", {
            "devices": [{"allow": False, "access": "rwm"}],
            "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
            "pids": {"limit": 64}}),
             expect=["cpu.max=50000 100000", "cpu.weight=20", "pids.max=64", "cpuset.cpus=0"]),
        Case("devices", _all(
            _set("linux.devices", [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
                                    "fileMode": 0o640, "uid": 0, "gid": 0},
                                   {"path": "/dev/extra/kmsg", "type": "c", "major": 1, "minor": 11}]),
            _set("linux.resources.devices", [{"allow": False, "access": "rwm"},
                                             {"allow": True, "type": "c", "major": 10, "minor": 200,
                                              "access": "r"}])),
             expect=["/dev/fuse crw-r-----", "/dev/extra drwx", "tun: "],
             reject=["tun: Operation not permitted"]),   # allowed: the tun driver answers
        Case("devices-allow-all", _set("linux.resources.devices", [{"allow": True, "access": "rwm"}]),
             expect=["tun: "], reject=["tun: Operation not permitted"]),
        Case("sysctl-oom", _all(_set("linux.sysctl", {"kernel.shm_rmid_forced": "1",
                                                       "net.ipv4.ip_unprivileged_port_start": "80"}),
                                _add_namespace("network"), _set("process.oomScoreAdj", 500)),
             probe_extra="cat /proc/sys/kernel/shm_rmid_forced /proc/sys/net/ipv4/ip_unprivileged_port_start",
             expect=["500"]),
        Case("bind-and-tmpfs-mounts", _add_mounts(
            {"destination": "/mnt/etc", "type": "bind", "source": f"{rootfs_guest}/etc",
             "options": ["rbind", "ro", "nosuid"]},
            {"destination": "/mnt/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["noexec", "nodev", "size=1m", "mode=700", "uid=5"]},
            {"destination": "/mnt/plain", "type": "tmpfs", "source": "tmpfs"}),
             expect=["/mnt/etc", "/mnt/tmp"]),
        Case("cgroup-namespace", _add_namespace("cgroup"), expect=["0::/\n"]),
        Case("network-namespace-personality", _all(_add_namespace("network"),
                                                   _set("linux.personality", {"domain": "LINUX32"})),
             probe_extra="cat /proc/net/dev | wc -l", expect=["i686"]),
        Case("rootfs-propagation-slave", _set("linux.rootfsPropagation", "rslave")),
        Case("pod-namespaces", _all(
            _set("linux.namespaces", [{"type": "pid"},   # (a shared one: pids differ per run)
                                      {"type": "ipc", "path": f"{POD_NAMESPACES}/ipc"},
                                      {"type": "uts", "path": f"{POD_NAMESPACES}/uts"},
                                      {"type": "mount"}]),
            lambda spec: spec.pop("hostname"),
            lambda spec: spec["mounts"].__setitem__(-1, {"destination": "/dev/shm", "type": "bind",
                                                         "source": POD_SHM,
                                                         "options": ["rbind", "rprivate", "rw", "nosuid",
                                                                     "nodev", "noexec"]})),
             probe_extra="for n in ipc uts; do readlink /proc/self/ns/$n; done",
             expect=["/dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm"]),
        Case("exec-root", _set("process.args", ["sleep", "1000"]), exec_process=_exec_as(args=["sh", "-c", PROBE]),
             expect=["Uid:\t0", "sleep 1000"]),
        Case("exec-user-env-caps-rlimits", _all(_set("process.args", ["sleep", "1000"]),
                                                _set("linux.seccomp", _DENY_MKDIR)),
             exec_process=_exec_as(args=["sh", "-c", PROBE], user={"uid": 1000, "gid": 1000, "additionalGids": [7]},
                                   env=[f"PATH={PATH}", "EXEC=1"], cwd="/tmp",
                                   capabilities={c: ["CAP_KILL"] for c in ("bounding", "effective", "permitted")},
                                   rlimits=[{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200}],
                                   noNewPrivileges=True),
             expect=["EXEC=1", "Groups:\t7", "Seccomp:\t2", "NoNewPrivs:\t1", "/tmp"]),
        Case("exec-terminal", _set("process.args", ["sleep", "1000"]),
             exec_process=_exec_as(args=["sh", "-c", PROBE], terminal=True, env=[f"PATH={PATH}", "TERM=xterm"]),
             expect=["/dev/pts/0"]),
    ]


# -- normalising what a probe printed ------------------------------------------------------------

def normalise(text: str, container_id: str, rootfs_guest: str) -> str:
    text = text.replace(rootfs_guest, "<ROOTFS>").replace(container_id, "<ID>")
    out = []
    for line in text.splitlines():
        if re.match(r"^NS(pid|pgid|sid):", line):   # the agent-side pid differs per run
            line = re.sub(r"^(NS\w+:)\t\d+", r"\1\t<PID>", line)
        elif re.match(r"^\d+ \d+ \d+:\d+ ", line):    # mountinfo
            line = _mountinfo(line)
        line = re.sub(r"(pipe|socket):\[\d+\]", r"\1:[<INODE>]", line)
        out.append(line)
    return "\n".join(out)


def _mountinfo(line: str) -> str:
    left, _, right = line.partition(" - ")
    fields = left.split()
    tags = [re.sub(r":\d+$", "", tag) for tag in fields[6:]]  # shared:N / master:N → kind only
    fstype, source, options = (right.split() + ["", "", ""])[:3]
    return " ".join([fields[3], fields[4], fields[5], *tags, "-", fstype, source, options])


def sections(text: str) -> dict[str, str]:
    result: dict[str, list[str]] = {}
    current = "(start)"
    for line in text.splitlines():
        if line.startswith("== "):
            current = line[3:]
            continue
        result.setdefault(current, []).append(line)
    return {name: "\n".join(lines) for name, lines in result.items()}

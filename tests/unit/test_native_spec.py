"""The native runtime's pure parts: spec validation and refusals, process plans, mount plans,
resource conversions, capability masks."""
from __future__ import annotations

import copy
import stat

import pytest

from graft_agent.errors import InvalidArgument
from graft_agent.native import linux as L
from graft_agent.native.capabilities import CAPABILITIES, parse_capabilities
from graft_agent.native.mount_plan import parse_mounts, parse_options, root_propagation
from graft_agent.native.process_spec import home_from_passwd, plan_process
from graft_agent.native.resources import plan_resources
from graft_agent.native.spec import plan_container

BASE = {
    "ociVersion": "1.0.2",
    "process": {"args": ["sh"], "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}},
    "root": {"path": "/run/graft/shared/c1/rootfs"},
    "hostname": "pod",
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
    "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
              "cgroupsPath": "/graft/c1"},
}


def spec_with(change) -> dict:
    spec = copy.deepcopy(BASE)
    change(spec)
    return spec


def test_a_cri_like_spec_is_planned() -> None:
    plan = plan_container(spec_with(lambda s: s["linux"].update(
        resources={"devices": [{"allow": False, "access": "rwm"}], "memory": {"limit": 1 << 26}},
        maskedPaths=["/proc/kcore"], readonlyPaths=["/proc/sys"],
        sysctl={"kernel.shm_rmid_forced": "1"})))
    assert plan.namespaces.clone_flags == L.CLONE_NEWPID | L.CLONE_NEWIPC | L.CLONE_NEWUTS | L.CLONE_NEWNS
    assert not plan.namespaces.new_cgroup and plan.namespaces.join == []
    assert plan.masked_paths == ["/proc/kcore"] and plan.readonly_paths == ["/proc/sys"]
    assert plan.sysctls == [("kernel/shm_rmid_forced", "1")]
    assert plan.root_propagation == L.MS_REC | L.MS_PRIVATE
    assert [w.file for w in plan.resources.writes] == ["memory.max"]
    assert plan.resources.devices and not plan.resources.devices[0].allow


def test_namespace_paths_are_joined_and_cgroup_is_unshared_later() -> None:
    plan = plan_container(spec_with(lambda s: s["linux"].update(namespaces=[
        {"type": "mount"}, {"type": "ipc", "path": "/proc/7/ns/ipc"}, {"type": "cgroup"},
        {"type": "pid", "path": "/proc/7/ns/pid"}, {"type": "uts"}])))
    assert plan.namespaces.join == [("pid", "/proc/7/ns/pid"), ("ipc", "/proc/7/ns/ipc")]
    assert plan.namespaces.new_cgroup
    assert plan.namespaces.clone_flags == L.CLONE_NEWNS | L.CLONE_NEWUTS
    assert plan.namespaces.types == {"mount", "ipc", "cgroup", "pid", "uts"}


@pytest.mark.parametrize("change, field", [
    (lambda s: s.update(hooks={"prestart": []}), "hooks is not supported"),
    (lambda s: s.update(windows={}), "windows is not supported"),
    (lambda s: s["linux"]["namespaces"].append({"type": "user"}), "linux.namespaces[4]: user namespaces"),
    (lambda s: s["linux"]["namespaces"].append({"type": "time"}), "time namespaces"),
    (lambda s: s["linux"]["namespaces"].append({"type": "pid"}), "namespace pid given twice"),
    (lambda s: s["linux"]["namespaces"].append({"type": "bogus"}), "unknown namespace type 'bogus'"),
    (lambda s: s["linux"].update(namespaces=[{"type": "pid"}]), "needs a mount namespace"),
    (lambda s: s["linux"]["namespaces"][3].update(path="/proc/1/ns/mnt"), "joining an existing mount"),
    (lambda s: s["linux"].update(uidMappings=[{"containerID": 0, "hostID": 1000, "size": 1}]),
     "linux.uidMappings is not supported"),
    (lambda s: s["linux"].update(intelRdt={"closID": "x"}), "linux.intelRdt"),
    (lambda s: s["linux"].update(mountLabel="system_u:object_r:x"), "linux.mountLabel: host LSM"),
    (lambda s: s["process"].update(apparmorProfile="p"), "process.apparmorProfile: host LSM"),
    (lambda s: s["process"].update(selinuxLabel="l"), "process.selinuxLabel: host LSM"),
    (lambda s: s["process"].update(ioPriority={"class": "IOPRIO_CLASS_RT"}), "process.ioPriority"),
    (lambda s: s["process"]["user"].update(username="bob"), "process.user.username"),
    (lambda s: s["process"].update(args=[]), "process.args must name a program"),
    (lambda s: s["process"].update(cwd="relative"), "process.cwd must be an absolute path"),
    (lambda s: s["process"].update(env=["NOEQUALS"]), "process.env entries"),
    (lambda s: s["process"].update(rlimits=[{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]),
     "unknown rlimit 'RLIMIT_BOGUS'"),
    (lambda s: s["process"].update(rlimits=[{"type": "RLIMIT_NOFILE", "soft": 9, "hard": 1}]),
     "soft limit above the hard limit"),
    (lambda s: s["process"].update(capabilities={"bounding": ["CAP_FLY"]}), "unknown capability 'CAP_FLY'"),
    (lambda s: s["process"].update(capabilities={"ambient": ["CAP_KILL"], "permitted": ["CAP_KILL"]}),
     "CAP_KILL must also be in permitted and inheritable"),
    (lambda s: s["process"].update(oomScoreAdj=5000), "process.oomScoreAdj"),
    (lambda s: s["linux"]["namespaces"].pop(2), "hostname needs a new UTS namespace"),
    (lambda s: s["linux"].update(sysctl={"net.ipv4.ip_forward": "1"}), "needs a network namespace"),
    (lambda s: s["linux"].update(sysctl={"vm.swappiness": "1"}), "the sysctl is not namespaced"),
    (lambda s: s["linux"].update(sysctl={"kernel.hostname": "x"}), "conflicts with the hostname"),
    (lambda s: s["linux"].update(personality={"domain": "LINUX", "flags": ["x"]}), "personality.flags is not"),
    (lambda s: s["linux"].update(devices=[{"path": "/dev/x", "type": "z", "major": 1, "minor": 1}]),
     "linux.devices[0].type"),
    (lambda s: s["linux"].update(devices=[{"path": "/dev/x", "type": "c"}]), "linux.devices[0].major is required"),
    (lambda s: s["linux"].update(seccomp={"defaultAction": "SCMP_ACT_NOTIFY"}), "SCMP_ACT_NOTIFY"),
    (lambda s: s["linux"].update(seccomp={"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/x"}),
     "linux.seccomp.listenerPath: seccomp user notification"),
    (lambda s: s["linux"].update(seccomp={"defaultAction": "SCMP_ACT_ALLOW", "flags": ["BOGUS"]}),
     "linux.seccomp.flags"),
    (lambda s: s["linux"].update(seccomp={"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 7, "op": "SCMP_CMP_EQ"}]}]}),
     "linux.seccomp.syscalls[0].args[0].index"),
    (lambda s: s["linux"].update(rootfsPropagation="sideways"), "linux.rootfsPropagation"),
    (lambda s: s["linux"].update(cgroupsPath="relative"), "linux.cgroupsPath"),
    (lambda s: s["mounts"].append({"destination": "/x", "type": "bind", "source": "/y",
                                   "options": ["rbind", "idmap"]}), "mounts[1].options: option 'idmap'"),
    (lambda s: s["mounts"].append({"destination": "/x", "type": "tmpfs", "options": ["rro"]}),
     "recursive mount attributes"),
    (lambda s: s["mounts"].append({"destination": "/x", "type": "bind", "source": "rel",
                                   "options": ["bind"]}), "mounts[1].source must be an absolute"),
    (lambda s: s["mounts"].append({"destination": "x"}), "mounts[1].destination must be an absolute"),
    (lambda s: s["mounts"].append({"destination": "/a/proc", "type": "proc"}), "directly under /"),
    (lambda s: s["mounts"].append({"destination": "/x", "type": "tmpfs", "uidMappings": []}),
     "mounts[1].uidMappings"),
])
def test_unsupported_fields_are_refused_by_name(change, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        plan_container(spec_with(change))
    assert field in str(err.value)


def test_empty_id_mappings_and_unset_options_are_fine() -> None:
    plan = plan_container(spec_with(lambda s: s["linux"].update(uidMappings=[], gidMappings=[])))
    assert plan.process.args == ["sh"]


def test_process_plan() -> None:
    plan = plan_process({"args": ["x"], "cwd": "/w", "terminal": True,
                         "consoleSize": {"height": 40, "width": 100},
                         "user": {"uid": 5, "gid": 6, "umask": 0o27, "additionalGids": [7, 8]},
                         "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 20}],
                         "noNewPrivileges": True, "oomScoreAdj": -10,
                         "env": ["A=1", "HOME=/h"]})
    assert (plan.uid, plan.gid, plan.additional_gids, plan.umask) == (5, 6, [7, 8], 0o27)
    assert plan.console_size == (40, 100) and plan.terminal and plan.no_new_privileges
    assert plan.rlimits == [(7, 10, 20)] and plan.oom_score_adj == -10
    assert plan.env_value("HOME") == "/h" and plan.capabilities is None


def test_capability_masks() -> None:
    caps = parse_capabilities({"bounding": ["CAP_KILL", "cap_chown"], "effective": ["CAP_KILL"],
                               "permitted": ["CAP_KILL", "CAP_BPF"], "inheritable": ["CAP_BPF"],
                               "ambient": ["CAP_BPF"]}, "process.capabilities")
    assert caps.bounding == (1 << CAPABILITIES["CAP_KILL"]) | 1
    assert caps.permitted == (1 << 5) | (1 << 39) and caps.ambient == 1 << 39
    assert parse_capabilities({}, "x") == (0, 0, 0, 0, 0)


def test_home_like_crun() -> None:
    passwd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/false\n"
    assert home_from_passwd(passwd, 0) == "/root"
    assert home_from_passwd(passwd, 65534) == "/nonexistent"
    assert home_from_passwd(passwd, 1000) is None     # not listed: HOME stays unset
    assert home_from_passwd(None, 1000) == "/"        # no /etc/passwd at all


# -- mounts -------------------------------------------------------------------------------------

def test_mount_options_become_flags_and_data() -> None:
    flags, data = parse_options(["nosuid", "noexec", "rw", "mode=755", "size=65536k", "ro"], "m")
    assert flags == L.MS_NOSUID | L.MS_NOEXEC | L.MS_RDONLY and data == "mode=755,size=65536k"
    flags, _ = parse_options(["ro", "rw", "rbind", "rprivate"], "m")
    assert flags == L.MS_BIND | L.MS_REC | L.MS_PRIVATE


def test_mount_plan() -> None:
    mounts = parse_mounts([
        {"destination": "/dev//shm/", "type": "tmpfs", "source": "shm", "options": ["nodev"]},
        {"destination": "/etc/hosts", "type": "bind", "source": "/share/hosts", "options": ["rbind", "ro"]},
        {"destination": "/dev", "type": "tmpfs"},   # no options: crun's defaults
        {"destination": "/x", "type": "none", "source": "/y", "options": ["bind"]},
    ])
    assert mounts[0].destination == "/dev/shm" and mounts[0].relative == "dev/shm"
    assert mounts[1].is_bind and mounts[1].fstype == "bind" and mounts[1].flags & L.MS_RDONLY
    assert mounts[2].flags == L.MS_NOEXEC | L.MS_STRICTATIME and mounts[2].data == "mode=755"
    assert mounts[3].fstype == "bind" and mounts[3].source == "/y"
    assert root_propagation("rslave") == L.MS_SLAVE | L.MS_REC
    assert root_propagation(None) == L.MS_PRIVATE | L.MS_REC


def test_device_nodes() -> None:
    plan = plan_container(spec_with(lambda s: s["linux"].update(devices=[
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o640, "uid": 1},
        {"path": "/dev/fifo", "type": "p"}])))
    fuse, fifo = plan.devices
    assert (fuse.kind, fuse.major, fuse.minor, fuse.mode, fuse.uid) == (stat.S_IFCHR, 10, 229, 0o640, 1)
    assert fifo.kind == stat.S_IFIFO and fifo.mode == 0o666


# -- resources ----------------------------------------------------------------------------------

def writes(resources: dict) -> dict[str, str]:
    return {w.file: w.value for w in plan_resources(resources).writes}


def test_resources_convert_like_crun() -> None:
    assert writes({"cpu": {"shares": 1024, "quota": 50000, "period": 100000}}) == {
        "cpu.weight": "39", "cpu.max": "50000 100000"}
    assert writes({"cpu": {"shares": 2}})["cpu.weight"] == "1"
    assert writes({"cpu": {"quota": -1, "period": 50000}})["cpu.max"] == "max 50000"
    assert writes({"cpu": {"quota": 20000}})["cpu.max"] == "20000 100000"
    assert "cpu.max" not in writes({"cpu": {"quota": 0, "period": 0}})
    assert writes({"memory": {"limit": 100, "swap": 150, "reservation": 50}}) == {
        "memory.max": "100", "memory.swap.max": "50", "memory.low": "50"}
    assert writes({"memory": {"limit": -1, "swap": -1}}) == {"memory.max": "max", "memory.swap.max": "max"}
    assert writes({"pids": {"limit": -1}}) == {"pids.max": "max"}
    assert writes({"pids": {"limit": 0}}) == {}
    assert writes({"hugepageLimits": [{"pageSize": "2MB", "limit": 4}]}) == {"hugetlb.2MB.max": "4"}
    assert writes({"unified": {"memory.high": "1G"}}) == {"memory.high": "1G"}
    weight = plan_resources({"blockIO": {"weight": 500}}).writes[0]
    assert (weight.file, weight.value) == ("io.bfq.weight", "500")
    assert (weight.fallback.file, weight.fallback.value) == ("io.weight", "4950")
    assert writes({"blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 99}]}}) == {
        "io.max": "8:0 rbps=99"}
    assert plan_resources({"devices": []}).devices is None   # crun: no rules, no filter


@pytest.mark.parametrize("resources, field", [
    ({"memory": {"kernel": 1}}, "memory.kernel: kernel memory"),
    ({"memory": {"swappiness": 10}}, "memory.swappiness"),
    ({"memory": {"disableOOMKiller": True}}, "disableOOMKiller"),
    ({"memory": {"swap": 10}}, "swap needs"),
    ({"memory": {"limit": 10, "swap": 5}}, "cannot be less"),
    ({"cpu": {"realtimeRuntime": 5}}, "realtime"),
    ({"cpu": {"shares": 1}}, "shares must be 2-262144"),
    ({"blockIO": {"leafWeight": 10}}, "leaf"),
    ({"blockIO": {"weightDevice": [{"major": 1, "minor": 1, "weight": 10}]}}, "blockIO.weightDevice"),
    ({"network": {"classID": 1}}, "linux.resources.network is not supported by the native runtime (cgroup v1"),
    ({"rdma": {"mlx": {}}}, "linux.resources.rdma"),
    ({"unified": {"../x": "1"}}, "unified.../x"),
    ({"devices": [{"allow": True, "access": "rwx"}]}, "devices[0].access"),
])
def test_resources_cgroup_v2_cannot_express_are_refused(resources: dict, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        plan_resources(resources)
    assert field in str(err.value)

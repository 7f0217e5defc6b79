"""Bad input to a real shim, graft next to runc: every bad request gets a containerd error code
(never a crash or a hang), and the pod keeps working after each one.

A private containerd 1.6 runs one pod per runtime for the whole module: `ctr run -d` of a
sleeping busybox with the graft runtime (a real QEMU VM) and with runc. The tests then talk to
each shim's own ttrpc socket (from the bundle's `address` file) with shim.ttrpc.Client, the
way containerd does, with inputs containerd itself would not send; inputs containerd can carry
go through `ctr` as well. After each case, the pod must still run an exec to completion.

CASES holds, per input, the code graft must return and the code runc's shim returns (checked
here too, against containerd-shim-runc-v2 itself, so the comparison table stays true).
"""
from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from google.protobuf import empty_pb2

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "hack" / "containerd"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from leaks import shim_pids  # noqa: E402
from testing import containerd, skip_or_fail, vm_missing  # noqa: E402,F401

from shim_pod import (GRAFT, IMAGE, Shim, assert_pod_works, exec_spec, run_exec,  # noqa: E402
                      serial, start_pod, stop_pod, use_private_state)
from shim.api.containerd import shim_pb2 as pb  # noqa: E402
from shim.oci import default_spec  # noqa: E402
from shim.ttrpc import Code, TtrpcError  # noqa: E402

pytestmark = [pytest.mark.containerd, pytest.mark.asyncio(loop_scope="module")]

STATE_DIR = "/run/g-dfx"  # this module's graft state (short: socket paths)


@pytest.fixture(scope="module")
def workdir(containerd, tmp_path_factory) -> Path:
    use_private_state(containerd, STATE_DIR)
    yield tmp_path_factory.mktemp("bad-input")
    shutil.rmtree(STATE_DIR, ignore_errors=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["runc", "graft"])
async def shim(request, containerd, workdir, busybox_rootfs):
    """Each runtime's pod, one after the other (a single VM at a time)."""
    if request.param == "graft":
        skip_or_fail(vm_missing())
    runtime = GRAFT if request.param == "graft" else "runc"
    started = await start_pod(containerd, runtime, f"dfx-{request.param}", workdir,
                               busybox_rootfs)
    yield started
    await stop_pod(containerd, started)


# -- the cases ------------------------------------------------------------------------------------

Case = Callable[[Shim], Awaitable[Code]]
Empty = empty_pb2.Empty


async def _create(shim: Shim, cid: str, spec: dict, **stdio) -> Code:
    """Create; when it (wrongly or rightly) succeeds, the container is removed again."""
    code = await shim.code_of("Create", shim.create_request(cid, spec, **stdio),
                              pb.CreateTaskResponse)
    if code is Code.OK:
        await shim.code_of("Kill", pb.KillRequest(id=cid, signal=9, all=True), Empty)
        await shim.code_of("Wait", pb.WaitRequest(id=cid), pb.WaitResponse, timeout=30)
        await shim.code_of("Delete", pb.DeleteRequest(id=cid), pb.DeleteResponse)
    return code


def _app(shim: Shim, **changes) -> dict:
    spec = shim.app_spec(["sleep", "1000"])
    for path, value in changes.items():
        node = spec
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return spec


async def _kill(shim: Shim, sig: int, exec_id: str = "") -> Code:
    return await shim.code_of("Kill", pb.KillRequest(id=shim.pod, exec_id=exec_id, signal=sig),
                              Empty)


async def _with_exec(shim: Shim, args: list[str], then: Callable[[str], Awaitable[Code]],
                     terminal: bool = False) -> Code:
    eid = f"x{next(serial)}"
    await shim.call("Exec", pb.ExecProcessRequest(id=shim.pod, exec_id=eid, terminal=terminal,
                                                  spec=exec_spec(args, terminal)), Empty)
    await shim.call("Start", pb.StartRequest(id=shim.pod, exec_id=eid), pb.StartResponse)
    try:
        return await then(eid)
    finally:
        await shim.code_of("Kill", pb.KillRequest(id=shim.pod, exec_id=eid, signal=9), Empty)
        await shim.call("Wait", pb.WaitRequest(id=shim.pod, exec_id=eid), pb.WaitResponse)
        await shim.call("Delete", pb.DeleteRequest(id=shim.pod, exec_id=eid), pb.DeleteResponse)


async def _exec_code(shim: Shim, eid: str, **stdio) -> Code:
    code = await shim.code_of("Exec", pb.ExecProcessRequest(
        id=shim.pod, exec_id=eid, spec=exec_spec(["true"]), **stdio), Empty)
    if code is Code.OK:
        start = await shim.code_of("Start", pb.StartRequest(id=shim.pod, exec_id=eid),
                                   pb.StartResponse)
        if start is Code.OK:
            await shim.code_of("Wait", pb.WaitRequest(id=shim.pod, exec_id=eid), pb.WaitResponse)
        await shim.code_of("Delete", pb.DeleteRequest(id=shim.pod, exec_id=eid), pb.DeleteResponse)
        return start
    return code


async def _reuse_exec_id(shim: Shim) -> Code:
    async def again(eid: str) -> Code:
        return await shim.code_of("Exec", pb.ExecProcessRequest(
            id=shim.pod, exec_id=eid, spec=exec_spec(["true"])), Empty)
    return await _with_exec(shim, ["sleep", "1000"], again)


async def _start_running_exec(shim: Shim) -> Code:
    return await _with_exec(shim, ["sleep", "1000"], lambda eid: shim.code_of(
        "Start", pb.StartRequest(id=shim.pod, exec_id=eid), pb.StartResponse))


async def _delete_running_exec(shim: Shim) -> Code:
    return await _with_exec(shim, ["sleep", "1000"], lambda eid: shim.code_of(
        "Delete", pb.DeleteRequest(id=shim.pod, exec_id=eid), pb.DeleteResponse))


async def _resize_non_tty_exec(shim: Shim) -> Code:
    return await _with_exec(shim, ["sleep", "1000"], lambda eid: shim.code_of(
        "ResizePty", pb.ResizePtyRequest(id=shim.pod, exec_id=eid, width=80, height=24), Empty))


async def _exec_signal_out_of_range(shim: Shim) -> Code:
    return await _with_exec(shim, ["sleep", "1000"], lambda eid: _kill(shim, 99, eid))


BAD_RLIMIT = {"type": "RLIMIT_NOFILE", "hard": 2 ** 64 - 1, "soft": 2 ** 64 - 1}


def _with_rlimits(rlimits: list) -> Callable[[Shim], dict]:
    def spec(shim: Shim) -> dict:
        doc = shim.app_spec(["sleep", "1000"])
        doc["process"]["rlimits"] = rlimits
        return doc
    return spec


# name → (what is sent, graft's code, runc's code)
CASES: dict[str, tuple[Case, Code, Code]] = {
    "create: empty id": (
        lambda s: _create(s, "", s.app_spec(["true"])), Code.INVALID_ARGUMENT, Code.UNKNOWN),
    "create: id of 300 chars": (
        lambda s: _create(s, "a" * 300, s.app_spec(["true"])), Code.INVALID_ARGUMENT, Code.UNKNOWN),
    "create: id with /": (
        lambda s: _create(s, "a/b", s.app_spec(["true"])), Code.INVALID_ARGUMENT, Code.UNKNOWN),
    "create: id ..": (
        lambda s: _create(s, "..", s.app_spec(["true"])), Code.INVALID_ARGUMENT, Code.UNKNOWN),
    "create: id of the running pod": (
        lambda s: _create(s, s.pod, s.app_spec(["true"])), Code.ALREADY_EXISTS, Code.UNKNOWN),
    "create: spec without process": (
        lambda s: _create(s, f"np{next(serial)}", _app(s, process=None)),
        Code.INVALID_ARGUMENT, Code.UNKNOWN),
    "create: spec without process.args": (
        lambda s: _create(s, f"na{next(serial)}", _app(s, **{"process.args": None})),
        Code.INVALID_ARGUMENT, Code.UNKNOWN),
    "create: rlimit of 2^64-1": (
        lambda s: _create(s, f"rl{next(serial)}", _with_rlimits([BAD_RLIMIT])(s)),
        Code.INVALID_ARGUMENT, Code.UNKNOWN),
    "create: rlimit soft > hard": (
        lambda s: _create(s, f"rs{next(serial)}", _with_rlimits(
            [{"type": "RLIMIT_NOFILE", "hard": 10, "soft": 20}])(s)),
        Code.INVALID_ARGUMENT, Code.UNKNOWN),
    "create: unknown rlimit type": (
        lambda s: _create(s, f"rt{next(serial)}", _with_rlimits(
            [{"type": "RLIMIT_BOGUS", "hard": 10, "soft": 10}])(s)),
        Code.INVALID_ARGUMENT, Code.UNKNOWN),
    "create: memory limit -5": (
        lambda s: _create(s, f"nm{next(serial)}", _app(s, **{"linux.resources.memory": {"limit": -5}})),
        Code.INVALID_ARGUMENT, Code.UNKNOWN),
    "create: cpu shares -1": (
        lambda s: _create(s, f"nc{next(serial)}", _app(s, **{"linux.resources.cpu": {"shares": -1}})),
        Code.INVALID_ARGUMENT, Code.UNKNOWN),
    "create: pids limit -7": (
        lambda s: _create(s, f"np{next(serial)}", _app(s, **{"linux.resources.pids": {"limit": -7}})),
        Code.OK, Code.OK),  # runc reads <= 0 as "no limit"; graft passes it on that way
    "create: stdout of scheme foo://": (
        lambda s: _create(s, f"us{next(serial)}", s.app_spec(["true"]), stdout="foo://bar"),
        Code.INVALID_ARGUMENT, Code.UNKNOWN),
    "exec: empty exec id": (
        lambda s: _exec_code(s, ""), Code.INVALID_ARGUMENT, Code.UNKNOWN),
    "exec: exec id with /": (
        lambda s: _exec_code(s, "a/b"), Code.INVALID_ARGUMENT, Code.UNKNOWN),
    "exec: exec id ..": (
        lambda s: _exec_code(s, ".."), Code.INVALID_ARGUMENT, Code.OK),
    "exec: exec id of 300 chars": (
        lambda s: _exec_code(s, "e" * 300), Code.INVALID_ARGUMENT, Code.UNKNOWN),
    "exec: exec id reused while it runs": (_reuse_exec_id, Code.ALREADY_EXISTS, Code.ALREADY_EXISTS),
    "exec: stdout of scheme foo://": (
        lambda s: _exec_code(s, f"us{next(serial)}", stdout="foo://bar"),
        Code.INVALID_ARGUMENT, Code.UNKNOWN),
    "exec: in an unknown container": (
        lambda s: s.code_of("Exec", pb.ExecProcessRequest(id="nope", exec_id="e",
                                                          spec=exec_spec(["true"])), Empty),
        Code.NOT_FOUND, Code.NOT_FOUND),
    "start: an exec already running": (_start_running_exec, Code.FAILED_PRECONDITION, Code.UNKNOWN),
    "delete: an exec still running": (_delete_running_exec, Code.FAILED_PRECONDITION, Code.UNKNOWN),
    "kill: signal 99": (lambda s: _kill(s, 99), Code.INVALID_ARGUMENT, Code.UNKNOWN),
    "kill: signal 2^31": (lambda s: _kill(s, 2 ** 31), Code.INVALID_ARGUMENT, Code.UNKNOWN),
    "kill: signal 0 (a liveness probe)": (lambda s: _kill(s, 0), Code.OK, Code.OK),
    "kill: signal 0 to an exec": (
        lambda s: _with_exec(s, ["sleep", "1000"], lambda eid: _kill(s, 0, eid)), Code.OK, Code.OK),
    "kill: signal 99 to an exec": (_exec_signal_out_of_range, Code.INVALID_ARGUMENT, Code.UNKNOWN),
    "kill: an unknown exec": (lambda s: _kill(s, 9, "nope"), Code.NOT_FOUND, Code.NOT_FOUND),
    "resize: the non-tty init": (
        lambda s: s.code_of("ResizePty", pb.ResizePtyRequest(id=s.pod, width=80, height=24), Empty),
        Code.OK, Code.OK),
    "resize: a non-tty exec": (_resize_non_tty_exec, Code.OK, Code.OK),
    "resize: an unknown exec": (
        lambda s: s.code_of("ResizePty", pb.ResizePtyRequest(id=s.pod, exec_id="nope", width=1,
                                                             height=1), Empty),
        Code.NOT_FOUND, Code.NOT_FOUND),
    "state: an unknown container": (
        lambda s: s.code_of("State", pb.StateRequest(id="nope"), pb.StateResponse),
        Code.NOT_FOUND, Code.NOT_FOUND),
    "delete: an unknown container": (
        lambda s: s.code_of("Delete", pb.DeleteRequest(id="nope"), pb.DeleteResponse),
        Code.NOT_FOUND, Code.NOT_FOUND),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_input_gets_its_code_and_the_pod_keeps_working(shim, case):
    send, graft_code, runc_code = CASES[case]
    code = await asyncio.wait_for(send(shim), 180)  # never a hang
    name = "graft" if shim.runtime == GRAFT else "runc"
    print(f"[code] {name:5} {case}: {code.name}")
    assert code is (graft_code if name == "graft" else runc_code)
    await assert_pod_works(shim)


# -- through containerd (ctr) ----------------------------------------------------------------------

def _spec_file(shim: Shim, name: str, change: Callable[[dict], None]) -> Path:
    spec = default_spec(["true"])
    spec["root"] = {"path": str(shim.rootfs), "readonly": True}
    change(spec)
    path = shim.bundles / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec))
    return path


def _no_process(spec: dict) -> None:
    del spec["process"]


def _bad_rlimit(spec: dict) -> None:
    spec["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 10, "soft": 20}]


def _runtime_args(shim: Shim) -> list[str]:
    return ["--runtime", GRAFT] if shim.runtime == GRAFT else []


# name → (ctr arguments for this shim, what graft's error says, what runc's says); None = success
CTR_CASES: dict[str, tuple[Callable[[Shim, str], list[str]], str | None, str | None]] = {
    "ctr task kill -s 99": (
        lambda s, cid: ["task", "kill", "-s", "99", s.pod], "invalid argument", "unknown"),
    "ctr run --log-uri foo://bar": (
        lambda s, cid: ["run", *_runtime_args(s), "--log-uri", "foo://bar", IMAGE, cid, "true"],
        "invalid argument", "unknown"),
    "ctr run --annotation io.kubernetes.cri.sandbox-memory=lots": (
        lambda s, cid: ["run", "--rm", *_runtime_args(s), "--annotation",
                        "io.kubernetes.cri.sandbox-memory=lots", IMAGE, cid, "true"],
        "invalid argument", None),  # runc does not read it
    "ctr run --config (a spec without process)": (
        lambda s, cid: ["run", *_runtime_args(s), "--config",
                        str(_spec_file(s, cid, _no_process)), cid],
        "invalid argument", "unknown"),
    "ctr run --config (rlimit soft > hard)": (
        lambda s, cid: ["run", *_runtime_args(s), "--config",
                        str(_spec_file(s, cid, _bad_rlimit)), cid],
        "invalid argument", "unknown"),
}


@pytest.mark.parametrize("case", list(CTR_CASES))
async def test_bad_input_through_ctr(shim, containerd, case):
    make_args, graft_says, runc_says = CTR_CASES[case]
    cid = f"ctr{next(serial)}"
    done = await asyncio.to_thread(containerd.ctr, *make_args(shim, cid), check=False, timeout=300)
    await asyncio.to_thread(containerd.ctr, "container", "rm", cid, check=False)
    expected = graft_says if shim.runtime == GRAFT else runc_says
    error = done.stderr.decode(errors="replace").strip()
    print(f"[ctr] {shim.runtime} {case}: rc={done.returncode} {error[-160:]}")
    if expected is None:
        assert done.returncode == 0, error
    else:
        assert done.returncode != 0 and error.endswith(expected), error
    deadline = time.monotonic() + 20  # a shim started for a refused container goes away
    while shim_pids(containerd.address, cid):
        assert time.monotonic() < deadline, f"shim of {cid} left running"
        await asyncio.sleep(0.3)
    await assert_pod_works(shim)


async def test_reused_exec_id_through_ctr(shim, containerd):
    eid = f"dup{next(serial)}"
    exec_args = ["task", "exec", "-d", "--exec-id", eid, shim.pod, "sleep", "1000"]
    await asyncio.to_thread(containerd.ctr, *exec_args)
    try:
        again = await asyncio.to_thread(containerd.ctr, *exec_args, check=False)
        assert again.returncode != 0 and again.stderr.decode().strip().endswith("already exists")
    finally:
        await shim.code_of("Kill", pb.KillRequest(id=shim.pod, exec_id=eid, signal=9), Empty)
        await shim.code_of("Wait", pb.WaitRequest(id=shim.pod, exec_id=eid), pb.WaitResponse)
        await shim.code_of("Delete", pb.DeleteRequest(id=shim.pod, exec_id=eid), pb.DeleteResponse)
    await assert_pod_works(shim)


# -- requests the host gave up on, and a hostPID container (graft only) -------------------------------

def _graft_only(shim: Shim) -> None:
    if shim.runtime != GRAFT:
        pytest.skip("about graft's guest")


async def test_a_create_cancelled_by_its_deadline_is_undone_in_the_guest(shim):
    """The host gives up at the deadline; the guest must not keep the container: the same
    create, retried, succeeds (it would get AlreadyExists from a guest that kept it)."""
    _graft_only(shim)
    deadlines = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8)  # some land while the guest creates
    ids = [f"late{next(serial)}" for _ in deadlines]
    cancelled = 0
    for cid, deadline in zip(ids, deadlines):
        request = shim.create_request(cid, shim.app_spec(["sleep", "1000"]))
        code = await shim.code_of("Create", request, pb.CreateTaskResponse, timeout=deadline)
        if code is Code.OK:  # fast enough after all: nothing to undo
            await _create_cleanup(shim, cid)
        else:
            assert code is Code.DEADLINE_EXCEEDED
            cancelled += 1
    assert cancelled
    for cid in ids:
        await shim.call("Create", shim.create_request(cid, shim.app_spec(["sleep", "1000"])),
                        pb.CreateTaskResponse)
        await shim.call("Start", pb.StartRequest(id=cid), pb.StartResponse)
        assert await run_exec(shim, ["true"], container=cid) == 0
        await _create_cleanup(shim, cid)
    await assert_pod_works(shim)


async def _create_cleanup(shim: Shim, cid: str) -> None:
    await shim.code_of("Kill", pb.KillRequest(id=cid, signal=9, all=True), Empty)
    await shim.call("Wait", pb.WaitRequest(id=cid), pb.WaitResponse, timeout=60)
    await shim.call("Delete", pb.DeleteRequest(id=cid), pb.DeleteResponse)


async def test_an_exec_start_cancelled_by_its_deadline_leaves_no_process(shim):
    _graft_only(shim)
    before = await shim.call("Pids", pb.PidsRequest(id=shim.pod), pb.PidsResponse)
    cancelled = []
    for deadline in (0.01, 0.02, 0.04, 0.08, 0.15):  # some land while the guest execs
        eid = f"lateexec{next(serial)}"
        await shim.call("Exec", pb.ExecProcessRequest(id=shim.pod, exec_id=eid,
                                                      spec=exec_spec(["sleep", "1000"])), Empty)
        code = await shim.code_of("Start", pb.StartRequest(id=shim.pod, exec_id=eid),
                                  pb.StartResponse, timeout=deadline)
        if code is Code.OK:
            await shim.call("Kill", pb.KillRequest(id=shim.pod, exec_id=eid, signal=9), Empty)
            await shim.call("Wait", pb.WaitRequest(id=shim.pod, exec_id=eid), pb.WaitResponse)
        else:
            assert code is Code.DEADLINE_EXCEEDED
            cancelled.append(eid)
        await shim.call("Delete", pb.DeleteRequest(id=shim.pod, exec_id=eid), pb.DeleteResponse)
    assert cancelled
    deadline = time.monotonic() + 30
    while True:
        pids = await shim.call("Pids", pb.PidsRequest(id=shim.pod), pb.PidsResponse)
        if len(pids.processes) <= len(before.processes):
            break
        assert time.monotonic() < deadline, f"the exec still runs in the guest: {pids}"
        await asyncio.sleep(0.5)
    for eid in cancelled:  # each id is free in the guest too
        assert await run_exec(shim, ["true"], exec_id=eid) == 0


async def test_a_host_pid_container_is_refused_and_the_pod_keeps_working(shim):
    """CRI hostPID (no pid entry in linux.namespaces) would put the container in the guest
    agent's PID namespace, where PID 1 is the agent: refused, naming hostPID."""
    _graft_only(shim)
    spec = shim.app_spec(["sh", "-c", "kill -INT 1 && kill -INT 1"])
    spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "pid"]
    cid = f"hostpid{next(serial)}"
    with pytest.raises(TtrpcError) as err:
        await shim.call("Create", shim.create_request(cid, spec), pb.CreateTaskResponse)
    assert err.value.code == Code.INVALID_ARGUMENT and "hostPID" in err.value.message
    await assert_pod_works(shim)


async def test_no_exec_release_failed_in_the_guest(shim, containerd):
    """Every probe exec above was deleted: the guest freed each (DeleteProcess) without error."""
    _graft_only(shim)
    assert "release of" not in containerd.layout.log.read_text(errors="replace")

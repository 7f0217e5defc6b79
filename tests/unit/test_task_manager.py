"""Task layer rules (state machine, exit ordering, Wait semantics) against a fake pod backend.

The fake stands in for the VM only; the manager, process state machine, stdio plumbing (real
fifos) and event ordering are the real code.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from shim import events as topics
from shim.events import RecordingSink
from shim.task.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from shim.task.manager import CreateRequest, TaskManager
from shim.task.process import ExitInfo, State
from shim.task.stdio import StdioSpec


class FakeProcess:
    def __init__(self) -> None:
        self.exit: asyncio.Future[ExitInfo] = asyncio.get_running_loop().create_future()
        self.stdout: asyncio.Queue[tuple[bytes, bool]] = asyncio.Queue()
        self.stderr: asyncio.Queue[tuple[bytes, bool]] = asyncio.Queue()
        self.stdin = bytearray()
        self.stdin_closed = False

    def finish(self, status: int, output: bytes = b"", errors: bytes = b"") -> None:
        if output:
            self.stdout.put_nowait((output, False))
        if errors:
            self.stderr.put_nowait((errors, False))
        self.stdout.put_nowait((b"", True))
        self.stderr.put_nowait((b"", True))
        self.exit.set_result(ExitInfo(status, time.time_ns()))


class FakeStreams:
    def __init__(self, backend: "FakeBackend", key: tuple[str, str]) -> None:
        self._backend, self._key = backend, key

    def _proc(self) -> FakeProcess:
        return self._backend.procs.setdefault(self._key, FakeProcess())

    async def read_stdout(self) -> tuple[bytes, bool]:
        return await self._proc().stdout.get()

    async def read_stderr(self) -> tuple[bytes, bool]:
        return await self._proc().stderr.get()

    async def write_stdin(self, data: bytes) -> int:
        self._proc().stdin += data
        return len(data)

    async def close_stdin(self) -> None:
        self._proc().stdin_closed = True


class FakeBackend:
    def __init__(self) -> None:
        self.procs: dict[tuple[str, str], FakeProcess] = {}
        self.calls: list[tuple] = []
        self.closed = False
        self.fail_exec = False
        self.create_gate: asyncio.Event | None = None  # set → create_container waits for it

    def proc(self, cid: str, eid: str = "") -> FakeProcess:
        return self.procs.setdefault((cid, eid), FakeProcess())

    async def create_container(self, config) -> int:
        self.calls.append(("create", config.id, config.kind.value))
        if self.create_gate is not None:
            await self.create_gate.wait()
        self.proc(config.id)
        return 4242

    async def start_container(self, cid: str) -> None:
        self.calls.append(("start", cid))

    async def exec_process(self, cid, eid, process_json, stdio) -> int:
        self.calls.append(("exec", cid, eid, json.loads(process_json)["args"]))
        if self.fail_exec:
            raise OSError("exec failed in the guest")
        self.proc(cid, eid)
        return 4242

    async def delete_process(self, cid: str, eid: str) -> None:
        self.calls.append(("delete_process", cid, eid))

    async def wait_process(self, cid: str, eid: str) -> ExitInfo:
        return await asyncio.shield(self.proc(cid, eid).exit)

    async def signal_process(self, cid, eid, signal, all) -> None:
        self.calls.append(("signal", cid, eid, signal))
        proc = self.proc(cid, eid)
        if not proc.exit.done():
            proc.finish(128 + signal)

    async def remove_container(self, cid: str) -> None:
        self.calls.append(("remove", cid))

    async def list_pids(self, cid):
        return [1, 7]

    async def pause(self, cid):
        self.calls.append(("pause", cid))

    async def resume(self, cid):
        self.calls.append(("resume", cid))

    async def update(self, cid, resources_json):
        self.calls.append(("update", cid))

    async def stats(self, cid):
        from shim.api.containerd import cgroups_v2_pb2
        return cgroups_v2_pb2.Metrics()

    async def resize_pty(self, cid, eid, rows, cols):
        self.calls.append(("resize", cid, eid, rows, cols))

    def streams(self, cid: str, eid: str) -> FakeStreams:
        return FakeStreams(self, (cid, eid))

    def on_oom(self, handler) -> None:
        self.oom = handler

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
async def env():
    backend, sink = FakeBackend(), RecordingSink()
    manager = TaskManager(backend, sink, "test")
    yield manager, backend, sink
    await manager.close()


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return str(path)


async def test_lifecycle_events_in_order_and_wait_before_start(env, bundle):
    manager, backend, sink = env
    assert await manager.create(CreateRequest("c1", bundle, [], StdioSpec())) == 4242
    waiter = asyncio.ensure_future(manager.wait("c1", ""))  # CRI waits before Start
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await manager.start("c1", "")
    assert manager.state("c1", "").state is State.RUNNING
    backend.proc("c1").finish(3)
    info = await asyncio.wait_for(waiter, 5)
    assert info.status == 3
    assert sink.topics()[-1] == topics.TASK_EXIT  # queued before Wait woke
    status = await manager.delete("c1", "")
    assert status.exit.status == 3
    assert sink.topics() == [topics.TASK_CREATE, topics.TASK_START, topics.TASK_EXIT,
                             topics.TASK_DELETE]
    assert ("remove", "c1") in backend.calls
    assert manager.empty.is_set()


async def test_exit_is_reported_once_and_wait_after_exit(env, bundle):
    manager, backend, sink = env
    await manager.create(CreateRequest("c1", bundle, [], StdioSpec()))
    await manager.start("c1", "")
    backend.proc("c1").finish(0)
    assert (await manager.wait("c1", "")).status == 0
    assert (await manager.wait("c1", "")).status == 0  # again, long after
    assert sink.topics().count(topics.TASK_EXIT) == 1


async def test_illegal_transitions_are_failed_precondition(env, bundle):
    manager, backend, _ = env
    await manager.create(CreateRequest("c1", bundle, [], StdioSpec()))
    with pytest.raises(FailedPrecondition):
        await manager.pause("c1")            # created, not running
    with pytest.raises(FailedPrecondition):
        await manager.exec("c1", "e1", b'{"args":["true"]}', StdioSpec())
    await manager.start("c1", "")
    with pytest.raises(FailedPrecondition):
        await manager.start("c1", "")        # twice
    with pytest.raises(FailedPrecondition):
        await manager.delete("c1", "")       # still running
    with pytest.raises(FailedPrecondition):
        await manager.resume("c1")           # not paused
    await manager.pause("c1")
    assert manager.state("c1", "").state is State.PAUSED
    await manager.resume("c1")
    backend.proc("c1").finish(0)
    await manager.wait("c1", "")
    with pytest.raises(FailedPrecondition):
        await manager.start("c1", "")        # stopped


async def test_kill_after_exit_is_not_found_and_unknown_ids(env, bundle):
    manager, backend, _ = env
    with pytest.raises(NotFound):
        await manager.kill("nope", "", 9, False)
    await manager.create(CreateRequest("c1", bundle, [], StdioSpec()))
    with pytest.raises(AlreadyExists):
        await manager.create(CreateRequest("c1", bundle, [], StdioSpec()))
    await manager.start("c1", "")
    await manager.kill("c1", "", 9, False)
    assert (await manager.wait("c1", "")).status == 137
    with pytest.raises(NotFound):
        await manager.kill("c1", "", 9, False)
    with pytest.raises(NotFound):
        manager.state("c1", "nope")


async def test_exec_lifecycle_and_duplicate_id(env, bundle):
    manager, backend, sink = env
    await manager.create(CreateRequest("c1", bundle, [], StdioSpec()))
    await manager.start("c1", "")
    await manager.exec("c1", "e1", b'{"args":["echo","hi"]}', StdioSpec())
    with pytest.raises(AlreadyExists):
        await manager.exec("c1", "e1", b'{"args":["echo","hi"]}', StdioSpec())
    with pytest.raises(InvalidArgument):
        await manager.exec("c1", "e2", b"not json", StdioSpec())
    with pytest.raises(FailedPrecondition):
        await manager.kill("c1", "e1", 9, False)  # not started yet
    waiter = asyncio.ensure_future(manager.wait("c1", "e1"))
    await manager.start("c1", "e1")
    backend.proc("c1", "e1").finish(7)
    assert (await asyncio.wait_for(waiter, 5)).status == 7
    assert (await manager.delete("c1", "e1")).exit.status == 7
    assert backend.calls[-1] == ("delete_process", "c1", "e1")  # the guest frees it too
    exec_topics = [t for t in sink.topics() if t != topics.TASK_CREATE and t != topics.TASK_START]
    assert exec_topics == [topics.TASK_EXEC_ADDED, topics.TASK_EXEC_STARTED, topics.TASK_EXIT]
    with pytest.raises(NotFound):
        await manager.wait("c1", "e1")


async def test_init_exit_is_published_after_exec_exits(env, bundle):
    manager, backend, sink = env
    await manager.create(CreateRequest("c1", bundle, [], StdioSpec()))
    await manager.start("c1", "")
    await manager.exec("c1", "e1", b'{"args":["sleep","9"]}', StdioSpec())
    await manager.start("c1", "e1")
    backend.proc("c1").finish(0)
    await asyncio.sleep(0.1)
    backend.proc("c1", "e1").finish(137)
    await manager.wait("c1", "")
    exits = [e.event for e in sink.events if e.topic == topics.TASK_EXIT]
    assert [e.id for e in exits] == ["e1", "c1"]


async def test_delete_created_task_kills_it_first(env, bundle):
    manager, backend, sink = env
    await manager.create(CreateRequest("c1", bundle, [], StdioSpec()))
    status = await manager.delete("c1", "")
    assert status.exit.status == 137
    assert ("signal", "c1", "", 9) in backend.calls
    assert sink.topics()[-1] == topics.TASK_DELETE


async def test_stdout_fifo_gets_output_and_eof_before_exit(env, bundle, tmp_path):
    manager, backend, sink = env
    out = _fifo(tmp_path / "out")
    reader = os.open(out, os.O_RDONLY | os.O_NONBLOCK)  # the client (ctr) side
    try:
        await manager.create(CreateRequest("c1", bundle, [], StdioSpec(stdout=out)))
        await manager.start("c1", "")
        backend.proc("c1").finish(0, b"hello\n")
        await manager.wait("c1", "")
        os.set_blocking(reader, True)
        data = b""
        while chunk := os.read(reader, 100):  # EOF: our writer was closed at end of output
            data += chunk
        assert data == b"hello\n"
    finally:
        os.close(reader)


async def test_stdin_fifo_is_forwarded_then_closed(env, bundle, tmp_path):
    manager, backend, _ = env
    stdin = _fifo(tmp_path / "in")
    await manager.create(CreateRequest("c1", bundle, [], StdioSpec(stdin=stdin)))
    await manager.start("c1", "")
    writer = await asyncio.to_thread(os.open, stdin, os.O_WRONLY)
    os.write(writer, b"ping")
    os.close(writer)
    for _ in range(100):
        if backend.proc("c1").stdin_closed:
            break
        await asyncio.sleep(0.02)
    assert bytes(backend.proc("c1").stdin) == b"ping"
    assert backend.proc("c1").stdin_closed


async def test_vanished_stdout_client_does_not_block(env, bundle, tmp_path):
    manager, backend, _ = env
    out = _fifo(tmp_path / "out")  # nobody ever reads it
    await manager.create(CreateRequest("c1", bundle, [], StdioSpec(stdout=out)))
    await manager.start("c1", "")
    proc = backend.proc("c1")
    for _ in range(40):  # 2.5 MiB: far beyond a pipe's buffer
        proc.stdout.put_nowait((b"x" * 65536, False))
    proc.finish(0)
    assert (await asyncio.wait_for(manager.wait("c1", ""), 10)).status == 0


async def test_oom_is_published_for_known_containers(env, bundle):
    manager, backend, sink = env
    await manager.create(CreateRequest("c1", bundle, [], StdioSpec()))
    backend.oom("c1")
    backend.oom("unknown")
    assert [e.event.container_id for e in sink.events if e.topic == topics.TASK_OOM] == ["c1"]


async def test_shutdown_closes_backend(env, bundle):
    manager, backend, _ = env
    await manager.create(CreateRequest("c1", bundle, [], StdioSpec()))
    await manager.close()
    assert backend.closed and manager.empty.is_set()


POD_NAMESPACES = [{"type": "pid"}, {"type": "network", "path": "/proc/9/ns/net"},
                  {"type": "ipc", "path": "/proc/9/ns/ipc"}, {"type": "uts", "path": "/proc/9/ns/uts"},
                  {"type": "mount"}]


def test_guest_spec_rewrites_host_only_parts():
    from shim.task.guest_spec import guest_spec

    spec = {
        "hooks": {"prestart": [{"path": "/usr/bin/x"}]},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/c/hosts",
             "options": ["rbind", "rprivate", "rw"]},
            {"destination": "/dev/shm", "type": "bind", "source": "/run/c/shm",
             "options": ["rbind", "ro"]},
        ],
        "linux": {"namespaces": POD_NAMESPACES},
    }
    out, binds = guest_spec(spec, "/run/graft/shared/.mounts/c1")
    assert "hooks" not in out and "hooks" in spec  # the input is not modified
    # The sandbox's namespaces become the pod's in the guest; the network is the VM's.
    assert out["linux"]["namespaces"] == [{"type": "pid"},
                                          {"type": "ipc", "path": "/run/graft/pod/ns/ipc"},
                                          {"type": "uts", "path": "/run/graft/pod/ns/uts"},
                                          {"type": "mount"}]
    assert out["mounts"][1]["source"] == "/run/graft/shared/.mounts/c1/0"
    assert out["mounts"][1]["options"] == ["rbind", "rprivate", "rw"]
    assert out["mounts"][2] == {"destination": "/dev/shm", "type": "bind", "source": "/run/graft/pod/shm",
                                "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}   # the pod's
    assert [(str(b.source), b.share_name) for b in binds] == [("/var/lib/c/hosts", "0")]


def test_guest_spec_shares_the_pod_pid_namespace_when_asked():
    from shim.task.guest_spec import guest_spec

    spec = {"linux": {"namespaces": [{"type": "pid", "path": "/proc/9/ns/pid"}, *POD_NAMESPACES[1:],
                                     {"type": "cgroup", "path": "/proc/9/ns/cgroup"}]}}
    out, _ = guest_spec(spec, "/m")
    assert out["linux"]["namespaces"][0] == {"type": "pid", "path": "/run/graft/pod/ns/pid"}
    assert out["linux"]["namespaces"][-1] == {"type": "cgroup"}   # a new one: not pod-shared


@pytest.mark.parametrize("left_out, name", [("pid", "hostPID"), ("ipc", "hostIPC"),
                                            ("uts", "hostNetwork"), ("mount", "mount namespace")])
def test_guest_spec_refuses_the_node_namespaces(left_out, name):
    from shim.errors import InvalidArgument
    from shim.task.guest_spec import guest_spec

    spec = {"linux": {"namespaces": [ns for ns in POD_NAMESPACES if ns["type"] != left_out]}}
    with pytest.raises(InvalidArgument, match=name):
        guest_spec(spec, "/m")


@pytest.mark.parametrize("left_out, name", [("pid", "hostPID"), ("ipc", "hostIPC"),
                                            ("network", "hostNetwork")])
def test_a_sandbox_asking_for_node_namespaces_is_refused(left_out, name):
    from shim.errors import InvalidArgument
    from shim.task.guest_spec import check_sandbox_namespaces

    sandbox = {"linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
                         + [{"type": "network", "path": "/var/run/netns/cni-1"}]}}
    check_sandbox_namespaces(sandbox)
    sandbox["linux"]["namespaces"] = [ns for ns in sandbox["linux"]["namespaces"]
                                      if ns["type"] != left_out]
    with pytest.raises(InvalidArgument, match=name):
        check_sandbox_namespaces(sandbox)


def test_guest_spec_drops_host_lsm_labels():
    from shim.task.guest_spec import guest_spec

    spec = {"process": {"args": ["sh"], "apparmorProfile": "cri-containerd.apparmor.d",
                        "selinuxLabel": "system_u:system_r:container_t:s0"},
            "linux": {"mountLabel": "system_u:object_r:container_file_t:s0",
                      "namespaces": POD_NAMESPACES}}
    out, _ = guest_spec(spec, "/m")
    assert out["process"] == {"args": ["sh"]}
    assert "mountLabel" not in out["linux"]
    assert spec["process"]["apparmorProfile"]  # the input is not modified


@pytest.mark.parametrize("host, guest", [("1.2.1", "1.0.2"), ("1.2.0", "1.0.2"),
                                         ("1.0.2-dev", "1.0.2"), ("2.0.0", "2.0.0")])
def test_guest_spec_declares_a_version_the_guest_runtime_knows(host, guest):
    """containerd 1.7/2.x write 1.2.x, which the guest's crun 1.8 refuses outright."""
    from shim.task.guest_spec import guest_spec

    out, _ = guest_spec({"ociVersion": host, "linux": {"namespaces": POD_NAMESPACES}}, "/m")
    assert out["ociVersion"] == guest


async def test_file_uri_appends_stdout(env, bundle, tmp_path):
    manager, backend, _ = env
    log = tmp_path / "logs" / "c1.log"
    await manager.create(CreateRequest("c1", bundle, [], StdioSpec(stdout=f"file://{log}",
                                                                   stderr=f"file://{log}")))
    await manager.start("c1", "")
    backend.proc("c1").finish(0, b"to a file\n")
    await manager.wait("c1", "")
    assert log.read_bytes() == b"to a file\n"


async def test_binary_uri_starts_a_logger(env, bundle, tmp_path):
    manager, backend, _ = env
    logger = tmp_path / "logger.sh"
    out = tmp_path / "logged"
    logger.write_text(f"#!/bin/sh\necho \"$CONTAINER_ID $CONTAINER_NAMESPACE $1 $2\" > {out}.env\n"
                      f"exec 5>&-\ncat <&4 > {out}.err &\ncat <&3 > {out}\nwait\n")
    logger.chmod(0o755)
    uri = f"binary://{logger}?mode=test"
    await manager.create(CreateRequest("c1", bundle, [], StdioSpec(stdout=uri, stderr=uri)))
    await manager.start("c1", "")
    backend.proc("c1").finish(0, b"via logger\n", b"errors via logger\n")
    await manager.wait("c1", "")
    await manager.delete("c1", "")  # closes the pipes; the logger exits and is waited for
    assert out.read_bytes() == b"via logger\n"
    assert (tmp_path / "logged.err").read_bytes() == b"errors via logger\n"
    assert (tmp_path / "logged.env").read_text().split() == ["c1", "test", "mode", "test"]

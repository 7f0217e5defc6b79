"""Task-layer protocol rules beyond the happy path, against the fake pod backend of
test_task_manager (the manager, state machine, stdio on real fifos and event order are real)."""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from shim import events as topics
from shim.events import RecordingSink
from shim.task.errors import FailedPrecondition, InvalidArgument, NotFound
from shim.task.manager import UNKNOWN_EXIT, CreateRequest, TaskManager
from shim.task.process import State
from shim.task.stdio import StdioSpec

from test_task_manager import FakeBackend  # same directory (pytest puts it on sys.path)

SLEEP = b'{"args":["sleep","9"]}'


class StrictSink(RecordingSink):
    """Records, for every exit event, whether a Wait caller could already see that exit."""

    def __init__(self) -> None:
        super().__init__()
        self.manager: TaskManager | None = None
        self.exit_visible_at_publish: list[bool] = []

    def publish(self, topic, event) -> None:
        if topic == topics.TASK_EXIT:
            assert self.manager is not None
            status = self.manager.state(event.container_id,
                                        "" if event.id == event.container_id else event.id)
            self.exit_visible_at_publish.append(status.exit is not None)
        super().publish(topic, event)


@pytest.fixture
async def env():
    backend, sink = FakeBackend(), StrictSink()
    manager = TaskManager(backend, sink, "test")
    sink.manager = manager
    yield manager, backend, sink
    await manager.close()


async def _running(manager, bundle, cid="c1", stdio=StdioSpec()):
    await manager.create(CreateRequest(cid, bundle, [], stdio))
    await manager.start(cid, "")


async def test_exit_event_is_queued_before_wait_can_see_the_exit(env, bundle):
    manager, backend, sink = env
    await _running(manager, bundle)
    await manager.exec("c1", "e1", SLEEP, StdioSpec())
    await manager.start("c1", "e1")
    backend.proc("c1", "e1").finish(1)
    await manager.wait("c1", "e1")
    backend.proc("c1").finish(0)
    await manager.wait("c1", "")
    assert sink.exit_visible_at_publish == [False, False]


async def test_pause_resume_and_oom_events_in_order(env, bundle):
    manager, backend, sink = env
    await _running(manager, bundle)
    await manager.pause("c1")
    backend.oom("c1")
    await manager.resume("c1")
    assert sink.topics() == [topics.TASK_CREATE, topics.TASK_START, topics.TASK_PAUSED,
                             topics.TASK_OOM, topics.TASK_RESUMED]
    assert [e.event.container_id for e in sink.events[2:]] == ["c1"] * 3
    assert ("pause", "c1") in backend.calls and ("resume", "c1") in backend.calls


async def test_exit_while_paused_is_reported_and_pause_after_exit_refused(env, bundle):
    manager, backend, sink = env
    await _running(manager, bundle)
    await manager.pause("c1")
    backend.proc("c1").finish(137)
    assert (await manager.wait("c1", "")).status == 137
    assert manager.state("c1", "").state is State.STOPPED
    with pytest.raises(FailedPrecondition):
        await manager.resume("c1")
    with pytest.raises(FailedPrecondition):
        await manager.pause("c1")


@pytest.mark.parametrize("cid", ["../escape", "a/b", ".hidden", "x" * 77, "a b", "-a"])
async def test_bad_container_ids_are_invalid_argument(env, bundle, cid):
    manager, backend, _ = env
    with pytest.raises(InvalidArgument):
        await manager.create(CreateRequest(cid, bundle, [], StdioSpec()))
    assert backend.calls == [] and manager.empty.is_set()


async def test_bad_bundles_are_invalid_argument(env, bundle, tmp_path):
    manager, backend, _ = env
    with pytest.raises(InvalidArgument):
        await manager.create(CreateRequest("c1", Path(""), [], StdioSpec()))  # daemon's cwd
    with pytest.raises(InvalidArgument):
        await manager.create(CreateRequest("c1", tmp_path / "no-such-bundle", [], StdioSpec()))
    for bad in ("[]", "{not json", json.dumps({"annotations": ["x"]}),
                json.dumps({"annotations": {"io.kubernetes.cri.container-type": "container",
                                            "io.kubernetes.cri.sandbox-id": "../pod"}}),
                json.dumps({"annotations": {"io.kubernetes.cri.container-type": "container",
                                            "io.kubernetes.cri.sandbox-id": 7}})):
        (bundle / "config.json").write_text(bad)
        with pytest.raises(InvalidArgument):
            await manager.create(CreateRequest("c1", bundle, [], StdioSpec()))
    assert backend.calls == [] and manager.empty.is_set()


async def test_bad_exec_requests(env, bundle):
    manager, _, _ = env
    await _running(manager, bundle)
    for eid in ("", "../e", "e/1"):
        with pytest.raises(InvalidArgument):
            await manager.exec("c1", eid, SLEEP, StdioSpec())
    for spec in (b"null", b"[]", b'{"args": []}', b'{"cwd": "/"}', b'{"args": "sh"}'):
        with pytest.raises(InvalidArgument):
            await manager.exec("c1", "e1", spec, StdioSpec())
    with pytest.raises(NotFound):
        await manager.exec("nope", "e1", SLEEP, StdioSpec())
    await manager.exec("c1", "e1", SLEEP, StdioSpec())  # the id was not burnt by the failures


async def test_unknown_and_deleted_tasks_are_not_found(env, bundle):
    manager, backend, _ = env
    for call in (manager.delete("nope", ""), manager.wait("nope", ""), manager.pause("nope"),
                 manager.resume("nope"), manager.pids("nope"), manager.stats("nope"),
                 manager.update("nope", b"{}"), manager.close_io("nope", ""),
                 manager.resize_pty("nope", "", 80, 24), manager.start("nope", "")):
        with pytest.raises(NotFound):
            await call
    await _running(manager, bundle)
    backend.proc("c1").finish(0)
    await manager.wait("c1", "")
    await manager.delete("c1", "")
    with pytest.raises(NotFound):
        await manager.delete("c1", "")
    with pytest.raises(NotFound):
        await manager.kill("c1", "", 9, False)
    with pytest.raises(NotFound):
        manager.state("c1", "")


async def test_concurrent_deletes_delete_once(env, bundle):
    manager, backend, sink = env
    await _running(manager, bundle)
    backend.proc("c1").finish(0)
    await manager.wait("c1", "")
    results = await asyncio.gather(manager.delete("c1", ""), manager.delete("c1", ""),
                                   return_exceptions=True)
    assert sum(isinstance(r, NotFound) for r in results) == 1
    assert backend.calls.count(("remove", "c1")) == 1
    assert sink.topics().count(topics.TASK_DELETE) == 1


async def test_exec_whose_start_failed_wakes_its_waiters_on_delete(env, bundle):
    manager, backend, sink = env
    await _running(manager, bundle)
    await manager.exec("c1", "e1", SLEEP, StdioSpec())
    waiter = asyncio.ensure_future(manager.wait("c1", "e1"))  # ctr waits before Start
    await asyncio.sleep(0)
    backend.fail_exec = True
    with pytest.raises(OSError):
        await manager.start("c1", "e1")
    assert manager.state("c1", "e1").state is State.CREATED
    await manager.delete("c1", "e1")  # what ctr does next
    assert (await asyncio.wait_for(waiter, 5)).status == UNKNOWN_EXIT
    assert topics.TASK_EXEC_STARTED not in sink.topics()
    assert topics.TASK_EXIT not in sink.topics()  # no exit without a start


async def test_deleting_a_container_ends_its_execs(env, bundle, monkeypatch):
    from shim.task import manager as manager_module

    monkeypatch.setattr(manager_module, "EXEC_EXIT_GRACE_SECONDS", 0.05)
    manager, backend, sink = env
    await _running(manager, bundle)
    await manager.exec("c1", "started", SLEEP, StdioSpec())
    await manager.start("c1", "started")
    await manager.exec("c1", "created", SLEEP, StdioSpec())
    waiters = [asyncio.ensure_future(manager.wait("c1", e)) for e in ("started", "created")]
    await asyncio.sleep(0)
    backend.proc("c1").finish(0)  # the init dies; the guest never reports the execs' exits
    assert (await asyncio.wait_for(manager.wait("c1", ""), 5)).status == 0
    await manager.delete("c1", "")
    done = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert [d.status for d in done] == [UNKNOWN_EXIT, UNKNOWN_EXIT]
    exits = [e.event.id for e in sink.events if e.topic == topics.TASK_EXIT]
    assert exits == ["c1", "started"]  # the never-started exec gets none
    assert sink.topics()[-1] == topics.TASK_DELETE


async def test_created_task_that_never_reports_an_exit_is_deleted_and_waiters_wake(
        env, bundle, monkeypatch):
    manager, backend, sink = env
    await manager.create(CreateRequest("c1", bundle, [], StdioSpec()))
    waiter = asyncio.ensure_future(manager.wait("c1", ""))
    await asyncio.sleep(0)

    async def deaf(cid, eid, signal, all):  # the kill is lost (e.g. the guest is stuck)
        backend.calls.append(("signal", cid, eid, signal))
    monkeypatch.setattr(backend, "signal_process", deaf)
    real_wait_for = asyncio.wait_for
    monkeypatch.setattr(asyncio, "wait_for",
                        lambda aw, timeout: real_wait_for(aw, min(timeout, 0.1)))
    status = await manager.delete("c1", "")
    assert status.exit.status == UNKNOWN_EXIT
    assert (await real_wait_for(waiter, 5)).status == UNKNOWN_EXIT
    assert sink.topics() == [topics.TASK_CREATE, topics.TASK_DELETE]


async def test_closeio_forwards_what_the_client_wrote_before_it(env, bundle, tmp_path):
    """ctr calls CloseIO the moment its stdin hits EOF: bytes still in the fifo must arrive."""
    manager, backend, _ = env
    stdin = tmp_path / "in"
    os.mkfifo(stdin)
    await _running(manager, bundle, stdio=StdioSpec(stdin=str(stdin)))
    writer = await asyncio.to_thread(os.open, stdin, os.O_WRONLY)
    try:
        payload = os.urandom(60000)  # fits in the pipe: the write does not wait for us
        assert os.write(writer, payload) == len(payload)
        await manager.close_io("c1", "")  # the client still holds its end open
        assert bytes(backend.proc("c1").stdin) == payload
        assert backend.proc("c1").stdin_closed
    finally:
        os.close(writer)


async def test_closeio_before_exec_start_closes_stdin_once_started(env, bundle, tmp_path):
    manager, backend, _ = env
    await _running(manager, bundle)
    stdin = tmp_path / "in"
    os.mkfifo(stdin)
    await manager.exec("c1", "e1", SLEEP, StdioSpec(stdin=str(stdin)))
    await manager.close_io("c1", "e1")  # the client has no input for it
    assert not backend.proc("c1", "e1").stdin_closed  # not in the guest yet
    await manager.start("c1", "e1")
    for _ in range(100):
        if backend.proc("c1", "e1").stdin_closed:
            break
        await asyncio.sleep(0.02)
    assert backend.proc("c1", "e1").stdin_closed and not backend.proc("c1", "e1").stdin


async def test_resize_pty(env, bundle):
    manager, backend, _ = env
    await _running(manager, bundle, stdio=StdioSpec(terminal=True))
    await manager.resize_pty("c1", "", width=120, height=40)
    assert backend.calls[-1] == ("resize", "c1", "", 40, 120)
    await manager.exec("c1", "plain", SLEEP, StdioSpec())
    await manager.resize_pty("c1", "plain", 80, 24)  # no terminal: ignored, as runc does
    await manager.exec("c1", "tty", SLEEP, StdioSpec(terminal=True))
    await manager.resize_pty("c1", "tty", 100, 30)  # before Start: kept for later
    assert [c for c in backend.calls if c[0] == "resize"] == [("resize", "c1", "", 40, 120)]
    await manager.start("c1", "tty")
    assert backend.calls[-1] == ("resize", "c1", "tty", 30, 100)
    backend.proc("c1", "tty").finish(0)
    await manager.wait("c1", "tty")
    with pytest.raises(FailedPrecondition):
        await manager.resize_pty("c1", "tty", 100, 30)


async def test_update_and_kill_rules(env, bundle):
    manager, backend, _ = env
    await manager.create(CreateRequest("c1", bundle, [], StdioSpec()))
    await manager.update("c1", b'{"cpu": {"shares": 2}}')
    assert ("update", "c1") in backend.calls
    await manager.start("c1", "")
    await manager.exec("c1", "e1", SLEEP, StdioSpec())
    with pytest.raises(FailedPrecondition):
        await manager.kill("c1", "e1", 15, False)  # not created in the guest yet
    await manager.start("c1", "e1")
    await manager.kill("c1", "e1", 15, False)
    assert (await manager.wait("c1", "e1")).status == 143
    with pytest.raises(NotFound):
        await manager.kill("c1", "e1", 15, False)  # exited
    backend.proc("c1").finish(0)
    await manager.wait("c1", "")
    with pytest.raises(FailedPrecondition):
        await manager.update("c1", b"{}")
    with pytest.raises(FailedPrecondition):
        await manager.exec("c1", "e2", SLEEP, StdioSpec())  # the container has exited


async def test_failed_create_leaves_nothing_and_the_id_is_reusable(env, bundle, tmp_path):
    manager, backend, sink = env
    with pytest.raises(ValueError):  # StdioError: the stdout fifo does not exist
        await manager.create(CreateRequest("c1", bundle, [], StdioSpec(
            stdout=str(tmp_path / "missing"))))
    with pytest.raises(ValueError):  # StdioError: unsupported scheme
        await manager.create(CreateRequest("c1", bundle, [], StdioSpec(stdout="tcp://x:1")))
    assert manager.empty.is_set() and sink.events == []
    await manager.create(CreateRequest("c1", bundle, [], StdioSpec()))
    assert manager.state("c1", "").state is State.CREATED

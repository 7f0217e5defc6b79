"""The shim daemon's wiring (socket, events to containerd, Shutdown, idle exit) and the
`delete` binary's talk with a live daemon — in-process, with the fake pod backend of
test_task_manager; the ttrpc server, client, publisher and manager are the real code."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.protobuf import empty_pb2

from shim.api.containerd import (EVENTS_SERVICE_NAME, SANDBOX_SERVICE, TASK_SERVICE, events_pb2,
                                 events_service_pb2, sandbox_pb2, shim_pb2 as pb)
from shim.shim_manager import delete as delete_mod
from shim.shim_manager.args import Action, ShimArgs
from shim.shim_manager.daemon import Daemon
from shim.ttrpc import Client, Server

from test_task_manager import FakeBackend  # same directory (pytest puts it on sys.path)

ROOT = Path(__file__).resolve().parents[2]
SERVICE = TASK_SERVICE.full_name


class FakeContainerdEvents:
    """containerd's ttrpc Events service: records forwarded envelopes."""

    def __init__(self) -> None:
        self.envelopes: list = []
        self.server = Server()

        async def forward(req):
            self.envelopes.append(req.envelope)
            return empty_pb2.Empty()
        self.server.register(EVENTS_SERVICE_NAME,
                             {"Forward": (events_service_pb2.ForwardRequest, forward)})


def _listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)
    sock.setblocking(False)
    return sock


async def end_daemon(daemon: Daemon, run: asyncio.Future, client: Client) -> None:
    """Test teardown: hang up, and stop the daemon if the test did not get it to exit."""
    await client.close()
    if not run.done():
        daemon.request_stop()
        await run


@pytest.fixture
def daemon_env(tmp_path, monkeypatch):
    containerd = tmp_path / "containerd.sock"
    monkeypatch.setenv("TTRPC_ADDRESS", f"{containerd}.ttrpc")
    args = ShimArgs(action=Action.SERVE, namespace="unit", address=str(containerd),
                    publish_binary="", id="c1", bundle=tmp_path, debug=False)
    backend = FakeBackend()
    shim_sock = tmp_path / "shim.sock"
    daemon = Daemon(args, _listener(shim_sock), lambda: backend, idle_seconds=0.4)
    return daemon, backend, shim_sock, Path(f"{containerd}.ttrpc")


async def test_ctr_flow_through_the_daemon_events_and_shutdown(daemon_env, tmp_path):
    daemon, backend, shim_sock, events_sock = daemon_env
    events = FakeContainerdEvents()
    await events.server.serve_unix(str(events_sock))
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps({"process": {"args": ["true"]}}))
    run = asyncio.ensure_future(daemon.run())
    client = await Client.connect_unix(str(shim_sock))
    call = lambda m, req, resp: client.call(SERVICE, m, req, resp, timeout=5)  # noqa: E731
    try:
        await call("Create", pb.CreateTaskRequest(id="c1", bundle=str(bundle)),
                   pb.CreateTaskResponse)
        wait = asyncio.ensure_future(call("Wait", pb.WaitRequest(id="c1"), pb.WaitResponse))
        await call("Start", pb.StartRequest(id="c1"), pb.StartResponse)
        await asyncio.sleep(0.6)  # longer than idle_seconds: a task keeps the shim alive
        backend.proc("c1").finish(3)
        assert (await wait).exit_status == 3
        await call("Delete", pb.DeleteRequest(id="c1"), pb.DeleteResponse)
        await call("Shutdown", pb.ShutdownRequest(id="c1"), empty_pb2.Empty)
        await asyncio.wait_for(run, 10)
    finally:
        await end_daemon(daemon, run, client)
        await events.server.close()
    assert not shim_sock.exists()
    assert backend.closed
    topics = [e.topic for e in events.envelopes]
    assert topics == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    assert all(e.namespace == "unit" and e.HasField("timestamp") for e in events.envelopes)
    exit_event = events.envelopes[2].event
    assert exit_event.type_url == "containerd.events.TaskExit"  # bare, no type.googleapis.com/
    assert events_pb2.TaskExit.FromString(exit_event.value).exit_status == 3


async def test_daemon_nobody_reaches_exits_and_removes_its_socket(daemon_env):
    daemon, backend, shim_sock, _ = daemon_env
    started = time.monotonic()
    await asyncio.wait_for(daemon.run(), 10)
    assert time.monotonic() - started >= 0.4
    assert not shim_sock.exists() and backend.closed


async def test_socket_is_gone_before_the_shutdown_answer_is_read(daemon_env):
    daemon, _, shim_sock, _ = daemon_env
    run = asyncio.ensure_future(daemon.run())
    client = await Client.connect_unix(str(shim_sock))
    try:
        await client.call(SERVICE, "Shutdown", pb.ShutdownRequest(id="x"), empty_pb2.Empty,
                          timeout=5)
        for _ in range(100):  # the stop is requested by the answer; removal follows at once
            if not shim_sock.exists():
                break
            await asyncio.sleep(0.01)
        assert not shim_sock.exists()
        assert not run.done() or run.exception() is None
    finally:
        await client.close()
        await asyncio.wait_for(run, 10)


class _TaskRecorder:
    """A live daemon as `delete` sees it: records calls; Wait can hang."""

    def __init__(self, hang_wait: bool) -> None:
        self.calls: list[str] = []
        self.hang_wait = hang_wait

    async def Kill(self, req):
        self.calls.append(f"Kill {req.id} {req.signal} {req.all}")
        return empty_pb2.Empty()

    async def Wait(self, req):
        self.calls.append(f"Wait {req.id}")
        if self.hang_wait:
            await asyncio.sleep(3600)
        return pb.WaitResponse(exit_status=137)

    async def Delete(self, req):
        self.calls.append(f"Delete {req.id}")
        return pb.DeleteResponse(exit_status=137)

    async def ShutdownSandbox(self, req):
        self.calls.append(f"ShutdownSandbox {req.sandbox_id}")
        return sandbox_pb2.ShutdownSandboxResponse()


@pytest.mark.parametrize("hang_wait", [False, True])
@pytest.mark.parametrize("is_sandbox", [False, True])
async def test_delete_asks_a_live_daemon_to_kill_wait_delete_within_budget(tmp_path, hang_wait,
                                                                          is_sandbox):
    recorder = _TaskRecorder(hang_wait)
    server = Server()
    server.register_service(TASK_SERVICE, recorder)
    server.register_service(SANDBOX_SERVICE, recorder)
    path = tmp_path / "shim.sock"
    await server.serve_unix(str(path))
    try:
        started = time.monotonic()
        await delete_mod._ask_daemon(path, "c1", is_sandbox)
        elapsed = time.monotonic() - started
    finally:
        await server.close()
    assert elapsed < delete_mod.DAEMON_BUDGET_SECONDS + 0.5
    first = ["ShutdownSandbox c1"] if is_sandbox else []  # a Sandbox API pod ends first
    assert recorder.calls == [*first, "Kill c1 9 True", "Wait c1", "Delete c1"]


async def test_delete_with_no_daemon_returns_at_once(tmp_path):
    started = time.monotonic()
    await delete_mod._ask_daemon(tmp_path / "nobody.sock", "c1", True)
    assert time.monotonic() - started < 1


def test_delete_binary_answers_even_without_a_bundle(tmp_path):
    """containerd may have removed the bundle already: still a DeleteResponse, exit 0."""
    config = tmp_path / "graft.toml"
    config.write_text(f'[runtime]\nstate_dir = "{tmp_path}/state"\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRAFT_CONFIG=str(config))
    done = subprocess.run(
        [sys.executable, "-m", "shim.cli.shim_main", "-namespace", "unit", "-address",
         str(tmp_path / "c.sock"), "-id", "gone", "-bundle", str(tmp_path / "no-bundle"),
         "delete"], capture_output=True, cwd=tmp_path, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    response = pb.DeleteResponse.FromString(done.stdout)
    assert response.exit_status == 137 and response.exited_at.seconds > 0


def test_logging_without_the_log_fifo_writes_nothing_to_stderr(tmp_path):
    """`start`'s stderr is read as part of the address: a warning must not reach it."""
    code = ("import logging, pathlib, sys\n"
            "from shim.shim_manager.logging_setup import setup_logging\n"
            "setup_logging(pathlib.Path(sys.argv[1]), logging.INFO, 'start')\n"
            "logging.getLogger('x').warning('this must not be seen')\n"
            "logging.getLogger('x').error('nor this')\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          env=env, timeout=30)
    assert done.returncode == 0 and done.stdout == b"" and done.stderr == b""

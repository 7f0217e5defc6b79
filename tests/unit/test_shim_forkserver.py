"""The lean launcher, the fork server and `start`'s hand-off: real processes, no VM."""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from google.protobuf import empty_pb2

from shim.api.containerd import TASK_SERVICE, shim_pb2
from shim.cli.launcher import write_launcher
from shim.shim_manager import forkserver, handoff
from shim.ttrpc import Client, Code, TtrpcError

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="shim sockets live in /run/containerd/s")


def _bundle(base: Path, name: str, kind: str, sandbox: str) -> Path:
    bundle = base / name
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps({"annotations": {
        "io.kubernetes.cri.container-type": kind, "io.kubernetes.cri.sandbox-id": sandbox}}))
    return bundle


def _start(shim: Path, base: Path, name: str, kind: str = "sandbox",
           sandbox: str | None = None) -> str:
    bundle = _bundle(base, name, kind, sandbox or name)
    done = subprocess.run([str(shim), "-namespace", "unit", "-address", str(base / "c.sock"),
                           "-publish-binary", "/bin/true", "-id", name, "start"], cwd=bundle,
                          input=b"", capture_output=True, timeout=30)
    assert done.returncode == 0 and done.stderr == b"", done
    assert done.stdout.startswith(b"unix:///run/containerd/s/")
    return done.stdout.decode()[len("unix://"):]


async def _state_then_shutdown(path: str) -> None:
    client = await Client.connect_unix(path)
    try:
        with pytest.raises(TtrpcError) as raised:
            await client.call(TASK_SERVICE.full_name, "State", shim_pb2.StateRequest(id="x"),
                              shim_pb2.StateResponse, timeout=10)
        assert raised.value.code is Code.NOT_FOUND
        await client.call(TASK_SERVICE.full_name, "Shutdown", shim_pb2.ShutdownRequest(id="x"),
                          empty_pb2.Empty, timeout=10)
    finally:
        await client.close()


def _wait_gone(path: str) -> None:
    deadline = time.monotonic() + 15
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(path), "the daemon did not remove its socket"


def test_sandbox_start_hands_off_to_the_fork_server(tmp_path: Path) -> None:
    shim = tmp_path / "containerd-shim-graft-v2"
    write_launcher(shim)
    assert shim.read_text().startswith(f"#!{sys.executable} -IS\n")
    # The fork server socket of the launcher's code tree (its sys.path, as the launcher sets it).
    header = shim.read_text().split("from shim.cli")[0]
    server = subprocess.run([sys.executable, "-IS", "-c", header + (
        "from shim.shim_manager.handoff import server_path; print(server_path())")],
        capture_output=True, text=True, check=True).stdout.strip()

    from shim.cli.fork_server import run_fork_server

    try:
        first = _start(shim, tmp_path, "pod1")  # no fork server yet, or a current one
        assert _wait_bound(server, 20), "start did not leave a fork server behind"
        second = _start(shim, tmp_path, "pod2")
        deadline = time.monotonic() + 10
        while True:  # a daemon names itself right after it is forked
            daemons = {" ".join(p.info["cmdline"] or []): p
                       for p in psutil.process_iter(["cmdline"])}
            titles = set(daemons)
            pod2 = [p for t, p in daemons.items()
                    if t.startswith("containerd-shim-graft-v2 -namespace unit -id pod2 ")]
            if pod2 and any(" -id pod1 " in t for t in titles) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert pod2, titles
        pod2 = pod2[0]
        # Forked by the fork server (double fork: not a session leader), not by `start` itself.
        assert os.getsid(pod2.pid) != pod2.pid
        for name, path in (("pod1", first), ("pod2", second)):
            # Named like every containerd shim, serving the task API on the printed address.
            assert any(t.startswith("containerd-shim-graft-v2 -namespace unit -id " + name)
                       for t in titles), titles
            asyncio.run(_state_then_shutdown(path))
            _wait_gone(path)
        # An app container of a running pod only finds its socket.
        third = _start(shim, tmp_path, "pod3")
        assert _start(shim, tmp_path, "app", kind="container", sandbox="pod3") == third
        asyncio.run(_state_then_shutdown(third))
        _wait_gone(third)
    finally:  # the fork server this test's starts spawned outlives them: stop it
        run_fork_server("stop", server, io.StringIO())


def test_fork_server_refuses_stale_code_and_exits(tmp_path: Path) -> None:
    path = str(tmp_path / "fs.sock")
    proc = subprocess.Popen([sys.executable, "-c", (
        "import sys; from shim.shim_manager.forkserver import serve; serve(sys.argv[1])"), path])
    try:
        assert _wait_bound(path), "the fork server did not bind its socket"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            request = {"stamp": "not-the-code", "args": [], "bundle": "/", "env": {}}
            assert handoff.request_daemon(path, request, listener.fileno()) is None
        finally:
            listener.close()
        assert proc.wait(10) == 0
        assert not os.path.exists(path)
    finally:
        proc.kill()
        proc.wait()


def test_fork_server_module_keeps_the_warm_list_importable() -> None:
    import importlib

    for name in forkserver._WARM_MODULES:
        importlib.import_module(name)


def _wait_bound(path: str, timeout: float = 30) -> bool:
    """Whether a fork server's socket appears at *path* within *timeout*."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return os.path.exists(path)


def _serve_in_background(path: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", (
        "import sys; from shim.shim_manager.forkserver import serve; serve(sys.argv[1])"), path])
    assert _wait_bound(path), "the fork server did not bind its socket"
    return proc


def test_graft_fork_server_stop_makes_the_server_exit(tmp_path: Path) -> None:
    from shim.cli import graft_main
    from shim.cli.fork_server import run_fork_server

    path = str(tmp_path / "fs.sock")
    proc = _serve_in_background(path)
    try:
        assert forkserver.remove_unserved_socket(path) is False  # it holds its lock
        assert os.path.exists(path)
        out = io.StringIO()
        assert run_fork_server("stop", path, out) == 0
        assert out.getvalue() == f"stopped the fork server at {path} (pid {proc.pid})\n"
        assert proc.wait(10) == 0
        assert not os.path.exists(path)
        out = io.StringIO()  # nothing there now: says so, still succeeds (through the CLI)
        with contextlib.redirect_stdout(out):
            assert graft_main.main(["fork-server", "stop", "--socket", path]) == 0
        assert out.getvalue() == f"no fork server at {path}\n"
    finally:
        proc.kill()
        proc.wait()


def test_fork_server_stop_removes_the_socket_of_a_killed_server(tmp_path: Path) -> None:
    from shim.cli.fork_server import run_fork_server

    path = str(tmp_path / "fs.sock")
    proc = _serve_in_background(path)
    proc.kill()
    proc.wait()
    assert os.path.exists(path)  # SIGKILL: no chance to unlink it
    out = io.StringIO()
    assert run_fork_server("stop", path, out) == 0
    assert out.getvalue() == f"no fork server at {path}\nremoved {path} (its server had been killed)\n"
    assert not os.path.exists(path)


def test_a_spawned_fork_server_makes_its_directory(tmp_path: Path) -> None:
    """As on a fresh machine, where nothing has made /run/graft-shim yet: the server `start`
    spawns creates the directory before its log file goes there, then serves."""
    from shim.cli.fork_server import run_fork_server

    path = str(tmp_path / "not-yet" / "fs.sock")
    handoff.spawn_server(path)
    try:
        assert _wait_bound(path), "the spawned fork server never bound its socket"
        assert os.path.isfile(path + ".log")
    finally:
        out = io.StringIO()
        assert run_fork_server("stop", path, out) == 0
    assert out.getvalue().startswith(f"stopped the fork server at {path} (pid ")

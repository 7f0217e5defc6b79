"""`ctr` against a private containerd 1.6 with runtime io.containerd.graft.v2 (real QEMU VMs)."""
from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack" / "containerd"))

from testing import containerd, shim_sockets, skip_or_fail, vm_missing  # noqa: E402,F401

pytestmark = pytest.mark.containerd

RUNTIME = "io.containerd.graft.v2"
IMAGE = "graft.local/busybox:latest"


@pytest.fixture(scope="module")
def vm_ready():
    skip_or_fail(vm_missing())


def _shim_processes(containerd_address: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", "containerd-shim-graft-v2 "], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines()
            if f"-address {containerd_address} " in line and "pgrep" not in line]


def _no_leftovers(containerd, before: set[str], deadline_s: float = 15) -> None:
    """No new shim socket and no shim daemon of this containerd is left."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if shim_sockets() <= before and not _shim_processes(containerd.address):
            return
        time.sleep(0.2)
    raise AssertionError(f"left behind: sockets {shim_sockets() - before}, "
                         f"shims {_shim_processes(containerd.address)}")


def test_runc_handler_works_for_comparison(containerd):
    done = containerd.ctr("run", "--rm", IMAGE, "cmp-runc", "echo", "hello-runc")
    assert done.stdout == b"hello-runc\n"


def test_runtime_options_reach_the_shim_and_failure_leaves_nothing(containerd, tmp_path):
    """ConfigPath from ctr → containerd → `start` stdin; a failed boot is reported and cleaned."""
    config = tmp_path / "graft-bad.toml"
    config.write_text(f'[guest]\nimage_dir = "{tmp_path}/no-guest-here"\n')
    before = shim_sockets()
    done = containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--runtime-config-path",
                          str(config), IMAGE, "bad-guest", "true", check=False)
    assert done.returncode != 0
    assert f"{tmp_path}/no-guest-here" in done.stderr.decode()
    _no_leftovers(containerd, before)
    assert "bad-guest" not in containerd.ctr("containers", "ls", "-q").stdout.decode()


def test_echo_hello(containerd, vm_ready):
    before = shim_sockets()
    done = containerd.ctr("run", "--rm", "--runtime", RUNTIME, IMAGE, "hello", "echo", "hello")
    assert done.stdout == b"hello\n"
    _no_leftovers(containerd, before)


def test_exit_code_and_stderr(containerd, vm_ready):
    before = shim_sockets()
    done = containerd.ctr("run", "--rm", "--runtime", RUNTIME, IMAGE, "exit7", "sh", "-c",
                          "echo oops >&2; exit 7", check=False)
    assert done.returncode == 7
    assert b"oops" in done.stderr
    _no_leftovers(containerd, before)


def test_stdin_is_forwarded(containerd, vm_ready):
    done = containerd.ctr("run", "--rm", "--runtime", RUNTIME, IMAGE, "cat", "cat",
                          input=b"through the vm\n")
    assert done.stdout == b"through the vm\n"
    _no_leftovers(containerd, shim_sockets())


def test_large_stdin_arrives_whole(containerd, vm_ready):
    """ctr sends CloseIO as soon as its stdin hits EOF, while its last bytes may still sit in
    the fifo: they must still reach the container (CloseIO drains, it does not cut)."""
    data = b"".join(b"%d\n" % i for i in range(300000))  # ~2 MB: many pipe buffers
    done = containerd.ctr("run", "--rm", "--runtime", RUNTIME, IMAGE, "bigstdin", "wc", "-c",
                          input=data)
    assert int(done.stdout) == len(data)
    _no_leftovers(containerd, shim_sockets())


def test_detached_exec_kill_and_delete(containerd, vm_ready):
    before = shim_sockets()
    containerd.ctr("run", "-d", "--runtime", RUNTIME, IMAGE, "long", "sleep", "1000")
    try:
        assert b"RUNNING" in containerd.ctr("task", "ls").stdout
        done = containerd.ctr("task", "exec", "--exec-id", "e1", "long", "sh", "-c",
                              "echo from-exec; exit 3", check=False)
        assert done.stdout == b"from-exec\n" and done.returncode == 3
        containerd.ctr("task", "pause", "long")
        assert b"PAUSED" in containerd.ctr("task", "ls").stdout
        containerd.ctr("task", "resume", "long")
        assert b"RUNNING" in containerd.ctr("task", "ls").stdout
        pids = containerd.ctr("task", "ps", "long").stdout.decode()
        assert len(pids.strip().splitlines()) >= 2  # header + at least the init process
        containerd.ctr("task", "kill", "-s", "SIGKILL", "long")
        deadline = time.monotonic() + 30
        while b"STOPPED" not in containerd.ctr("task", "ls").stdout:
            assert time.monotonic() < deadline, "task did not stop"
            time.sleep(0.2)
        killed_again = containerd.ctr("task", "kill", "-s", "SIGKILL", "long", check=False)
        assert killed_again.returncode != 0  # NotFound: already exited
    finally:
        containerd.ctr("task", "rm", "-f", "long", check=False)
        containerd.ctr("container", "rm", "long", check=False)
    _no_leftovers(containerd, before)


def test_same_id_in_two_namespaces_are_two_pods(containerd, vm_ready):
    """`ctr -n default run … twin`, then `ctr -n k8s.io run --rm … twin`: two VMs with their
    own state; the second one's delete leaves the first running (state was keyed by id
    alone: the second delete killed the first pod's VM)."""
    containerd.ctr("run", "-d", "--runtime", RUNTIME, IMAGE, "twin", "sleep", "1000")
    try:
        done = containerd.ctr("run", "--rm", "--runtime", RUNTIME, IMAGE, "twin", "echo",
                              "from-k8s-twin", namespace="k8s.io")
        assert done.stdout == b"from-k8s-twin\n"
        assert b"RUNNING" in containerd.ctr("task", "ls").stdout
        done = containerd.ctr("task", "exec", "--exec-id", "e1", "twin", "echo", "alive")
        assert done.stdout == b"alive\n"
    finally:
        containerd.ctr("task", "kill", "-s", "SIGKILL", "twin", check=False)
        containerd.ctr("task", "rm", "-f", "twin", check=False)
        containerd.ctr("container", "rm", "twin", check=False)


def test_tty(containerd, vm_ready):
    master, slave = os.openpty()
    proc = subprocess.Popen(["ctr", "--address", containerd.address, "run", "--rm", "-t",
                             "--runtime", RUNTIME, IMAGE, "tty", "sh", "-c",
                             "tty; echo TTY-OK"], stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    output = b""
    deadline = time.monotonic() + 180
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    output += os.read(master, 4096)
                except OSError:
                    break
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert proc.returncode == 0, output
    assert b"TTY-OK" in output and b"/dev/pts/" in output
    _no_leftovers(containerd, set(shim_sockets()))

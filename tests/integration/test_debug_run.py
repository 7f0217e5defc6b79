"""`graft debug run` end to end: a real QEMU VM (TCG), the real guest agent,
crun inside the guest, a busybox rootfs shared over virtio-9p."""
from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import psutil
import pytest

from shim.config import GraftConfig

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def config_file(graft_config: GraftConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "graft.toml"
    path.write_text(f'[runtime]\nstate_dir = "{graft_config.state_dir}"\n'
                    f'[guest]\nimage_dir = "{graft_config.guest_image_dir}"\n')
    return path


def graft(config_file: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shim.cli.graft_main", "--config",
                           str(config_file), *args], capture_output=True, timeout=180, **kw)


def qemu_children_of_nobody(state_dir: Path) -> list[int]:
    """QEMU processes that belong to this test run's state dir."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and "qemu" in cmdline[0] and any(str(state_dir) in a for a in cmdline):
            found.append(proc.info["pid"])
    return found


def assert_nothing_left(state_dir: Path) -> None:
    assert qemu_children_of_nobody(state_dir) == []
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(state_dir) not in mounts
    sandboxes = state_dir / "sandboxes"
    assert not sandboxes.exists() or list(sandboxes.iterdir()) == []


def test_echo_hello(config_file: Path, busybox_rootfs: Path, graft_config: GraftConfig) -> None:
    res = graft(config_file, "debug", "run", str(busybox_rootfs), "--", "echo", "hello",
                stdin=subprocess.DEVNULL)
    assert res.stdout == b"hello\n", res.stderr.decode()
    assert res.returncode == 0
    assert_nothing_left(graft_config.state_dir)


def test_stderr_and_exit_code(config_file: Path, busybox_rootfs: Path) -> None:
    res = graft(config_file, "debug", "run", str(busybox_rootfs), "--",
                "sh", "-c", "echo err >&2; exit 42", stdin=subprocess.DEVNULL)
    assert res.returncode == 42, res.stderr.decode()
    assert res.stdout == b""
    assert res.stderr.endswith(b"err\n")


def test_stdin_round_trip(config_file: Path, busybox_rootfs: Path) -> None:
    payload = b"".join(b"line %d\n" % i for i in range(2000))
    res = graft(config_file, "debug", "run", str(busybox_rootfs), "--", "cat", input=payload)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout == payload


def test_input_the_command_never_reads_is_not_an_error(config_file: Path,
                                                      busybox_rootfs: Path) -> None:
    """`true < big-file`: the command exits without reading; its status (0), not a graft
    failure (125), is what we exit with."""
    res = graft(config_file, "debug", "run", str(busybox_rootfs), "--", "true",
                input=b"\0" * (8 << 20))
    assert res.returncode == 0, res.stderr.decode()
    assert b"error" not in res.stderr


def test_tty_mode(config_file: Path, busybox_rootfs: Path) -> None:
    """With -t the container gets a terminal; output arrives on our pty."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 31, 97, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "shim.cli.graft_main", "--config",
                             str(config_file), "debug", "run", "-t", str(busybox_rootfs), "--",
                             "sh", "-c", "tty; stty size; echo done"],
                            stdin=slave, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the slave side
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(30) == 0, proc.stderr.read().decode()
    text = out.decode(errors="replace")
    assert "/dev/pts/" in text, text
    assert "31 97" in text  # the host terminal's size reached the container
    assert "done" in text


def test_missing_guest_image_is_a_clear_error(busybox_rootfs: Path, tmp_path: Path,
                                              vm_state_dir: Path) -> None:
    cfg = tmp_path / "graft.toml"
    cfg.write_text(f'[guest]\nimage_dir = "{tmp_path / "nowhere"}"\n'
                   f'[runtime]\nstate_dir = "{vm_state_dir / "no-image"}"\n')
    env = {k: v for k, v in os.environ.items() if k != "GRAFT_GUEST_DIR"}  # it beats the file
    res = graft(cfg, "debug", "run", str(busybox_rootfs), "--", "true", env=env)
    assert res.returncode == 125
    assert b"graft guest build" in res.stderr
    assert b"Traceback" not in res.stderr


def test_missing_qemu_is_a_clear_error(busybox_rootfs: Path, tmp_path: Path,
                                       graft_config: GraftConfig) -> None:
    state = graft_config.state_dir / "no-qemu-state"
    cfg = tmp_path / "graft.toml"
    cfg.write_text(f'[guest]\nimage_dir = "{graft_config.guest_image_dir}"\n'
                   f'[runtime]\nstate_dir = "{state}"\n'
                   f'[hypervisor]\nbinary = "{tmp_path / "no-qemu"}"\n')
    res = graft(cfg, "debug", "run", str(busybox_rootfs), "--", "true")
    assert res.returncode == 125
    assert str(tmp_path / "no-qemu").encode() in res.stderr
    assert b"Traceback" not in res.stderr
    assert not (state / "sandboxes").exists() or list((state / "sandboxes").iterdir()) == []


def test_bad_rootfs_is_a_clear_error(config_file: Path, tmp_path: Path) -> None:
    res = graft(config_file, "debug", "run", str(tmp_path / "missing"), "--", "true")
    assert res.returncode == 125
    assert b"not a directory" in res.stderr


def _start(config_file: Path, rootfs: Path, script: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "shim.cli.graft_main", "--config",
                             str(config_file), "debug", "run", str(rootfs), "--",
                             "sh", "-c", script],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def test_sigterm_is_forwarded_to_the_container(config_file: Path, busybox_rootfs: Path,
                                               graft_config: GraftConfig) -> None:
    proc = _start(config_file, busybox_rootfs,
                  'trap "echo got-term; exit 3" TERM; echo ready; while :; do sleep 1; done')
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(15)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err.decode()
    assert out == b"got-term\n"
    assert_nothing_left(graft_config.state_dir)


def test_killed_owner_takes_qemu_with_it(config_file: Path, busybox_rootfs: Path,
                                         graft_config: GraftConfig) -> None:
    proc = _start(config_file, busybox_rootfs, "echo ready; exec sleep 1000")
    assert proc.stdout.readline() == b"ready\n"
    assert qemu_children_of_nobody(graft_config.state_dir) != []
    proc.kill()
    proc.wait(30)
    deadline = time.monotonic() + 10
    while qemu_children_of_nobody(graft_config.state_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert qemu_children_of_nobody(graft_config.state_dir) == []
    # What a dead owner leaves (mounts, run dir) is removed by the cleanup the
    # shim's `delete` also uses.
    from shim.sandbox.state import cleanup_leftovers, list_sandboxes
    left = list_sandboxes(graft_config)
    assert left, "the killed owner's sandbox dir should still be there to clean"
    for entry in left:
        assert entry.ref is not None
        cleanup_leftovers(graft_config, entry.ref)
    assert_nothing_left(graft_config.state_dir)


def test_signal_during_launch_aborts_and_cleans_up(config_file: Path, busybox_rootfs: Path,
                                                   graft_config: GraftConfig) -> None:
    proc = _start(config_file, busybox_rootfs, "echo should-not-run")
    # Wait until the VM is being launched, then interrupt before the container starts.
    deadline = time.monotonic() + 30
    while not qemu_children_of_nobody(graft_config.state_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(15)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert b"should-not-run" not in out
    assert b"interrupted" in err
    assert_nothing_left(graft_config.state_dir)


def test_closed_stdout_does_not_change_the_status(config_file: Path, busybox_rootfs: Path) -> None:
    proc = _start(config_file, busybox_rootfs, "yes | head -c 2000000; exit 7")
    assert proc.stdout.read(10) == b"y\ny\ny\ny\ny\n"
    proc.stdout.close()  # our reader goes away, like `| head -1`
    assert proc.wait(120) == 7, proc.stderr.read().decode()

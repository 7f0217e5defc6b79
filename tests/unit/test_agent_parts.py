"""Unit tests of the guest agent's building blocks (no container runtime involved)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import tty

import pytest
from google.protobuf import wrappers_pb2

from graft_agent import config as agent_config
from graft_agent.cgroup import UNLIMITED, Cgroup
from graft_agent import channel
from graft_agent.channel import PortStreams, find_port, serve_port
from graft_agent.errors import FailedPrecondition, InvalidArgument
from graft_agent.iostreams import InputStream, OutputStream
from graft_agent.network import Route, _check_route
from graft_agent.oci_runtime import read_log_errors
from graft_agent.oom import OomMonitor
from graft_agent.reaper import ChildReaper
from graft_agent.spawn import Spawner
from shim.ttrpc import Client, Server

# Async tests and the async reaper fixture must share one event loop.
session_loop = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def reaper():
    reaper = ChildReaper()
    reaper.start()
    yield reaper
    reaper.stop()


# -- reaper and spawning -------------------------------------------------------------------

@session_loop
async def test_spawned_exit_statuses(reaper):
    spawner = Spawner(reaper)
    result = await spawner.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert result == (3, b"out\n", b"err\n")
    child = spawner.spawn(["sleep", "30"])
    child.kill(signal.SIGTERM)
    assert (await child.wait()).status == 128 + signal.SIGTERM
    with pytest.raises(FileNotFoundError):
        spawner.spawn(["/no/such/program"])


@session_loop
async def test_spawned_child_gets_default_sigpipe(reaper):
    # Python ignores SIGPIPE; a spawned program must not inherit that (`yes | head` must end).
    result = await Spawner(reaper).run(["sh", "-c", "yes | head -n 2; exit 0"])
    assert result.stdout == b"y\ny\n"


@session_loop
async def test_cancelled_run_kills_the_child(reaper):
    spawner = Spawner(reaper)
    task = asyncio.ensure_future(spawner.run(["sh", "-c", "echo $$; exec sleep 30"]))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.3)
    assert reaper._waiters == {}  # reaped, nothing left waiting


@session_loop
async def test_adopted_status_kept_until_claimed_and_stale_ones_ignored(reaper):
    before = time.monotonic()
    pid = os.posix_spawnp("sh", ["sh", "-c", "exit 9"], dict(os.environ))  # not registered
    for _ in range(100):
        await asyncio.sleep(0.02)
        if pid in reaper._unclaimed:
            break
    # A process known to have started before the exit claims the kept status...
    assert (await reaper.watch_adopted(pid, started_after=before)).status == 9
    # ...but one that started after the reap must not get an older process's status.
    pid2 = os.posix_spawnp("sh", ["sh", "-c", "exit 4"], dict(os.environ))
    for _ in range(100):
        await asyncio.sleep(0.02)
        if pid2 in reaper._unclaimed:
            break
    stale = reaper.watch_adopted(pid2, started_after=time.monotonic())
    await asyncio.sleep(0.1)
    assert not stale.done()
    reaper._waiters.pop(pid2)


# -- streams ---------------------------------------------------------------------------------

@session_loop
async def test_output_buffer_is_bounded_and_lossless():
    r, w = os.pipe()
    stream = OutputStream(r, cap=1000)
    os.write(w, b"a" * 5000)
    await asyncio.sleep(0.05)
    assert stream._reading is False  # over the cap: stopped reading (backpressure)
    os.write(w, b"b" * 5000)  # stays in the pipe meanwhile
    await asyncio.sleep(0.05)
    data, eof = await stream.read(100)
    assert data == b"a" * 100 and not eof
    received = data
    os.close(w)
    while True:
        data, eof = await stream.read(3000)
        received += data
        if eof:
            break
    assert received == b"a" * 5000 + b"b" * 5000


@session_loop
async def test_output_long_poll_wakes_on_data_and_eof():
    r, w = os.pipe()
    stream = OutputStream(r)
    reading = asyncio.ensure_future(stream.read(10))
    await asyncio.sleep(0.05)
    assert not reading.done()
    os.write(w, b"hi")
    assert await reading == (b"hi", False)
    reading = asyncio.ensure_future(stream.read(10))
    await asyncio.sleep(0.05)
    os.close(w)
    assert await reading == (b"", True)
    assert await stream.read(10) == (b"", True)


@session_loop
async def test_pty_master_eio_is_eof():
    master, slave = os.openpty()
    tty.setraw(slave)
    stream = OutputStream(master)
    os.write(slave, b"last words")
    await asyncio.sleep(0.05)
    os.close(slave)
    received = b""
    while True:
        data, eof = await stream.read(100)
        received += data
        if eof:
            break
    assert received == b"last words"


@session_loop
async def test_input_stream_close_and_broken_pipe():
    r, w = os.pipe()
    stdin = InputStream(w, is_tty=False)
    assert await stdin.write(b"abc") == 3
    await stdin.close()
    assert os.read(r, 10) == b"abc" and os.read(r, 10) == b""  # closed: the reader sees EOF
    os.close(r)

    r, w = os.pipe()
    stdin = InputStream(w, is_tty=False)
    data = b"y" * 200_000  # more than a pipe holds: writes return what went in
    first = await stdin.write(data)
    assert 0 < first < len(data)
    writing = asyncio.ensure_future(stdin.write(data[first:]))
    await asyncio.sleep(0.05)
    assert not writing.done()  # the pipe is full: waits for the reader
    chunks = b""
    os.set_blocking(r, False)
    sent = first
    while len(chunks) < len(data):
        try:
            chunks += os.read(r, 65536)
        except BlockingIOError:
            await asyncio.sleep(0.01)
        if writing.done():
            sent += writing.result()
            writing = asyncio.ensure_future(stdin.write(data[sent:]))
    assert chunks == data and sent == len(data)
    assert await writing == 0  # nothing was left to write
    os.close(r)
    with pytest.raises(FailedPrecondition):
        await stdin.write(b"nobody reads")
    await stdin.close()
    with pytest.raises(FailedPrecondition):
        await stdin.write(b"closed")


# -- config -----------------------------------------------------------------------------------

def test_config_parsing():
    config = agent_config.parse(["--listen", "unix:/tmp/x.sock", "--runtime=runc"],
                                "console=ttyS0 graft.agent_port=myport graft.log=debug")
    assert config.listen_path == "/tmp/x.sock" and config.default_runtime == "runc"
    assert config.port_name == "myport" and config.log_level == "debug"
    assert config.init is False  # not PID 1 here
    assert agent_config.parse(["--port-name", "p2"], "graft.agent_port=p1").port_name == "p2"
    assert agent_config.parse([]).resolv_conf_path == "/etc/resolv.conf"
    assert agent_config.parse(["--isolate", "--run-dir", "/r"]).resolv_conf_path == "/r/resolv.conf"
    for bad in (["--listen", "tcp:1"], ["--runtime", "kata"], ["--nope"], ["--run-dir"],
                ["--isolate-net"]):
        with pytest.raises(agent_config.UsageError):
            agent_config.parse(bad)
    with pytest.raises(agent_config.HelpRequested):
        agent_config.parse(["-h"])


# -- cgroups and OOM ---------------------------------------------------------------------------

def _fake_cgroup(tmp_path, files: dict[str, str]) -> Cgroup:
    cgroup = Cgroup("/fake")
    cgroup.dir = str(tmp_path)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return cgroup


def test_cgroup_stats_parsing(tmp_path):
    cgroup = _fake_cgroup(tmp_path, {
        "cpu.stat": "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 3\n",
        "memory.current": "4096\n", "memory.max": "max\n", "memory.swap.current": "0\n",
        "memory.stat": "anon 100\nfile 200\n", "memory.events": "low 0\noom 2\noom_kill 1\n",
        "pids.current": "3\n", "pids.max": "100\n",
        "io.stat": "254:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n",
        "cgroup.procs": "12\n34\n",
    })
    stats = cgroup.stats()
    assert stats.cpu["usage_usec"] == 1500 and stats.cpu["nr_periods"] == 3
    assert stats.memory_current == 4096 and stats.memory_max == UNLIMITED
    assert stats.memory_stat == {"anon": 100, "file": 200}
    assert stats.memory_events["oom_kill"] == 1
    assert (stats.pids_current, stats.pids_max) == (3, 100)
    assert stats.io[0].major == 254 and stats.io[0].counters["wbytes"] == 20
    assert stats.swap_max == 0  # file absent
    assert cgroup.pids() == [12, 34]


@session_loop
async def test_oom_monitor_reports_new_kills_once(tmp_path):
    cgroup = _fake_cgroup(tmp_path, {"memory.events": "oom 0\noom_kill 0\n"})
    monitor = OomMonitor(interval=0.05)
    monitor.watch("c1", cgroup)
    waiting = asyncio.ensure_future(monitor.next_event())
    await asyncio.sleep(0.2)
    assert not waiting.done()
    (tmp_path / "memory.events").write_text("oom 1\noom_kill 1\n")
    assert await asyncio.wait_for(waiting, 2) == "c1"
    again = asyncio.ensure_future(monitor.next_event())
    await asyncio.sleep(0.2)
    assert not again.done()  # the same kill is not reported twice
    (tmp_path / "memory.events").write_text("oom 3\noom_kill 3\n")
    monitor.check("c1")  # e.g. at container exit, before the cgroup disappears
    assert await asyncio.wait_for(again, 2) == "c1"


# -- runtime logs, routes ----------------------------------------------------------------------

def test_runtime_log_errors(tmp_path):
    log = tmp_path / "log"
    log.write_text('{"level":"warning","msg":"meh"}\n{"msg":"boom: no such file","level":"error"}\n'
                   'not json at all\n')
    assert read_log_errors(str(log)) == "boom: no such file; not json at all"
    assert read_log_errors(str(tmp_path / "missing")) == ""


@pytest.mark.parametrize("route, family", [
    (Route("", "10.0.0.1", "eth0"), socket.AF_INET),
    (Route("default", "fd00::1", "eth0"), socket.AF_INET6),
    (Route("fd01::/64", "", "eth0", scope=253), socket.AF_INET6),
    (Route("10.9.0.0/24", "", "eth0", "10.9.0.2", 253), socket.AF_INET),
])
def test_routes_are_checked_and_get_their_family(route, family):
    assert _check_route(route)[1] == family


@pytest.mark.parametrize("route", [Route("10.0.0.0/33"), Route("default", "not-an-ip"),
                                   Route("10.0.0.0/8", "fd00::1"), Route("", "10.0.0.1", "bad/dev"),
                                   Route("", "10.0.0.1", scope=7)])
def test_bad_routes_are_invalid_arguments(route):
    with pytest.raises(InvalidArgument):
        _check_route(route)


# -- the host channel ---------------------------------------------------------------------------

def test_find_port_by_name(tmp_path):
    sys_dir, dev_dir = tmp_path / "sys", tmp_path / "dev"
    for port, name in (("vport1p1", "org.qemu.guest_agent.0"), ("vport2p1", "graft.agent")):
        (sys_dir / port).mkdir(parents=True)
        (sys_dir / port / "name").write_text(name + "\n")
    dev_dir.mkdir()
    assert find_port("graft.agent", str(sys_dir), str(dev_dir)) is None  # no device node yet
    (dev_dir / "vport2p1").touch()
    assert find_port("graft.agent", str(sys_dir), str(dev_dir)) == str(dev_dir / "vport2p1")
    assert find_port("other", str(sys_dir), str(dev_dir)) is None
    assert find_port("graft.agent", str(tmp_path / "none"), str(dev_dir)) is None


async def _echo(request: wrappers_pb2.StringValue) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value="echo " + request.value)


@session_loop
async def test_ttrpc_over_a_character_device_and_hangup():
    """serve_port on a raw pty (a character device like a virtio port): serves, and when the
    other side hangs up it keeps polling for the host instead of exiting."""
    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    server = Server()
    server.register("test.Echo", {"Echo": (wrappers_pb2.StringValue, _echo)})
    serving = asyncio.ensure_future(serve_port(os.ttyname(slave), server.serve_connection))
    client_streams = await PortStreams.open(master)
    client = Client(client_streams.reader, client_streams.writer)
    reply = await client.call("test.Echo", "Echo", wrappers_pb2.StringValue(value="over pty"),
                              wrappers_pb2.StringValue, timeout=5)
    assert reply.value == "echo over pty"
    await client.close()
    await client_streams.close()
    await asyncio.sleep(0.3)
    assert not serving.done()  # waiting for a host, not crashed or returned
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    os.close(slave)


def test_waiting_for_the_host_keeps_bytes_already_buffered():
    """POLLHUP with bytes buffered is usually the host that is just arriving (the guest driver
    delivers its data before it processes that host's "port open"): they must not be dropped."""
    r, w = os.pipe()
    try:
        os.write(w, b"first request")
        os.close(w)
        w = -1
        assert not channel._host_connected(r)  # the pipe polls HUP, like a port without host
        assert os.read(r, 100) == b"first request"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


@session_loop
async def test_the_port_stays_open_from_one_session_to_the_next(monkeypatch):
    """Closing a virtio port makes the driver discard what the host already sent, so
    serve_port opens the port once and serves every session on duplicates of it."""
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    opened: list[int] = []
    real_open = channel._open_port

    def counting_open(p: str) -> int | None:
        fd = real_open(p)
        if fd is not None:
            opened.append(fd)
        return fd

    monkeypatch.setattr(channel, "_open_port", counting_open)
    sessions = 0
    third = asyncio.Event()

    async def serve_connection(reader, writer) -> None:
        nonlocal sessions
        sessions += 1
        if sessions < 3:
            return  # this session ends (as at a host hang-up)
        third.set()
        await asyncio.Event().wait()

    serving = asyncio.ensure_future(serve_port(path, serve_connection))
    try:
        await asyncio.wait_for(third.wait(), 5)
        assert len(opened) == 1
        os.fstat(opened[0])  # still open while sessions came and went
    finally:
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        os.close(master)
        os.close(slave)


def fake_memory_sysfs(root, blocks: dict[int, str], block_mib: int = 128):
    root.mkdir(exist_ok=True)
    (root / "block_size_bytes").write_text(f"{block_mib << 20:x}\n")
    for n, state in blocks.items():
        (root / f"memory{n}").mkdir(exist_ok=True)
        (root / f"memory{n}" / "state").write_text(state + "\n")


@session_loop
async def test_online_memory_waits_for_blocks_that_appear_late(tmp_path, monkeypatch):
    """ACPI memory hot-plug adds the blocks asynchronously after device_add:
    OnlineCPUMem must online them as they show up and return once enough
    memory is online."""
    from graft_agent import guest

    sysfs = tmp_path / "memory"
    fake_memory_sysfs(sysfs, {0: "online", 1: "online"})
    monkeypatch.setattr(guest, "_SYS_MEMORY", str(sysfs))
    monkeypatch.setattr(guest, "_SYS_CPU", str(tmp_path / "no-cpus"))
    assert guest.online_memory_bytes() == 256 << 20
    assert guest.memory_block_size() == 128 << 20

    async def plug_later() -> None:
        await asyncio.sleep(0.2)
        fake_memory_sysfs(sysfs, {32: "offline", 33: "offline"})

    plug = asyncio.ensure_future(plug_later())
    started = time.monotonic()
    await guest.online_cpu_mem(0, cpu_only=False, wanted_memory=512 << 20, timeout=5)
    await plug
    assert time.monotonic() - started >= 0.2
    assert (sysfs / "memory32" / "state").read_text() == "online"
    assert guest.online_memory_bytes() == 512 << 20

    # cpu_only ignores memory entirely; too little memory is a deadline error.
    fake_memory_sysfs(sysfs, {34: "offline"})
    await guest.online_cpu_mem(0, cpu_only=True, wanted_memory=1 << 40, timeout=0.1)
    assert (sysfs / "memory34" / "state").read_text() == "offline\n"
    with pytest.raises(guest.DeadlineExceeded, match="640 of 1024 MiB of memory"):
        await guest.online_cpu_mem(0, cpu_only=False, wanted_memory=1 << 30, timeout=0.1)

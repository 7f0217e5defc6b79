"""The agent as PID 1: run it as the init of fresh PID/mount/UTS/net/cgroup namespaces.

Inside those namespaces its PID 1 duties (mounting proc, sysfs, devtmpfs, devpts, /dev/shm,
/run, cgroup2; cgroup controllers; lo up; reaping) change nothing on the host, and its final
poweroff (reboot(2) from a PID namespace's init) just ends the namespace.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from agent_harness import ROOT, AgentClient, AgentProcess

pytestmark = [
    pytest.mark.skipif(shutil.which("crun") is None or shutil.which("unshare") is None,
                       reason="needs crun and unshare"),
    pytest.mark.asyncio(loop_scope="session"),
]


class Pid1Agent(AgentProcess):
    def start(self, timeout: float = 20.0) -> None:
        env = {"PATH": "/bin:/sbin", "PYTHONPATH": str(ROOT)}  # what a kernel hands to init
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--uts", "--net", "--cgroup",
             "--propagation", "private", sys.executable, "-m", "graft_agent",
             "--listen", f"unix:{self.socket}", "--log-level", "debug"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent did not start:\n{self.log()}")
            time.sleep(0.02)

    def power_off(self) -> int:
        """SIGTERM ends serving; as PID 1 the agent then powers off (ending the namespace)."""
        if self.proc.poll() is None:
            os.kill(self.agent_pid(), signal.SIGTERM)
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._log.close()
        return rc

    def agent_pid(self) -> int:
        """Host pid of the agent (the child of `unshare --fork`)."""
        children = open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read().split()
        return int(children[0])


async def test_pid1_duties_containers_and_poweroff(tmp_path, busybox_rootfs):
    agent = Pid1Agent(tmp_path)
    agent.start()
    try:
        agent_pid = agent.agent_pid()
        with open(f"/proc/{agent_pid}/status") as f:
            nspid = next(line for line in f if line.startswith("NSpid:")).split()
        assert nspid[1:] == [str(agent_pid), "1"]  # PID 1 in its namespace

        mounts = {}
        with open(f"/proc/{agent_pid}/mountinfo") as f:
            for line in f:
                fields = line.split()
                mounts[fields[4]] = line.split(" - ")[1].split()[0]
        for point, fstype in {"/proc": "proc", "/sys": "sysfs", "/dev": "devtmpfs",
                              "/dev/pts": "devpts", "/dev/shm": "tmpfs", "/run": "tmpfs",
                              "/sys/fs/cgroup": "cgroup2"}.items():
            assert mounts.get(point) == fstype, (point, mounts.get(point))
        link = subprocess.run(["nsenter", f"--net=/proc/{agent_pid}/ns/net", "ip", "-o", "link",
                               "show", "lo"], check=True, capture_output=True, text=True).stdout
        assert "<LOOPBACK,UP" in link, link  # a new netns starts with lo down

        client = await AgentClient.connect(agent)
        pid = await client.create("as-init", ["sh", "-c", "echo under pid1"], busybox_rootfs)
        await client.start("as-init")
        assert await client.read_all("as-init") == b"under pid1\n"
        assert await client.wait("as-init") == 0
        assert 1 < pid < 100  # a pid of the agent's namespace
        await client.remove("as-init")
        await client.close()
    finally:
        rc = agent.power_off()
    log = agent.log()
    assert "agent server ended" in log, log
    assert rc in (-signal.SIGINT, 128 + signal.SIGINT), (rc, log)  # reboot(POWER_OFF) in a pid ns


async def test_sigint_from_a_container_in_our_pid_namespace_is_ignored(tmp_path, busybox_rootfs):
    """A container without its own PID namespace (CRI hostPID) sees the agent as PID 1:
    `kill -INT 1` must not end the agent (which, as init, would power the VM off)."""
    import json

    from agent_harness import spec
    from graft_agent.api import agent_pb2 as pb

    agent = Pid1Agent(tmp_path)
    agent.start()
    try:
        client = await AgentClient.connect(agent)
        doc = json.loads(spec(["sh", "-c", "kill -INT 1 && echo sent"]))
        doc["linux"]["namespaces"] = [ns for ns in doc["linux"]["namespaces"] if ns["type"] != "pid"]
        await client.call("CreateContainer", pb.CreateContainerRequest(
            container_id="hostpid", oci_spec_json=json.dumps(doc).encode(),
            rootfs_path=str(busybox_rootfs)))
        await client.start("hostpid")
        assert await client.read_all("hostpid") == b"sent\n"
        assert await client.wait("hostpid") == 0
        await asyncio.sleep(0.5)
        assert agent.proc.poll() is None, agent.log()
        assert (await client.call("Check", pb.CheckRequest())).status == pb.HealthCheckResponse.SERVING
        await client.remove("hostpid")
        await client.close()
    finally:
        agent.power_off()

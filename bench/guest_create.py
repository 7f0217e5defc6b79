#!/usr/bin/env python3
"""The guest's side of a pod's start in clones restored from a template, RPC by RPC.

    python3 bench/guest_create.py [--pods 5] [--pool] [--runtime native] [--console-dir DIR]
                                  [--config FILE]

A template is built (`graft factory init`, in a private state dir); then, per pod, a fresh
clone is restored and the host drives the agent as the shim does for a CRI pod, timing each
agent call: UpdateInterface + UpdateRoutes (the template's NIC, given a pod MAC and address),
CreateSandbox, then for the pod's first container and for a second one CreateContainer,
StartContainer and the first line of output. With --pool each clone first gets the agent's
WarmUp call, as a warm pool's clones do while they wait (not timed: before the pod). The container's spec is what containerd 1.6's
CRI writes for a pod container (pod PID/IPC/UTS namespaces, /etc/hostname, /etc/hosts and
/etc/resolv.conf bound from the host, the sandbox's /dev/shm, a deny-all device rule),
translated by the shim's guest_spec. Prints one JSON object with the medians.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shim.agent.client import AgentClient  # noqa: E402
from graft_agent.api import agent_pb2 as pb  # noqa: E402
from graft_agent.warmup import CRI_PATH_ENV, cri_spec  # noqa: E402
from shim.config import GraftConfig, load_config  # noqa: E402
from shim.factory.boot import boot_vm  # noqa: E402
from shim.factory.boot_nic import TEMPLATE_MAC  # noqa: E402
from shim.factory.build import destroy_template, init_template  # noqa: E402
from shim.hypervisor.accel import resolve_accelerator  # noqa: E402
from shim.hypervisor.base import Accelerator, VmPaths  # noqa: E402
from shim.mounts import bind_mount, mount_tmpfs  # noqa: E402
from shim.sandbox.sandbox import GUEST_SHARE_MOUNT, SHARE_ROOT_BYTES, Sandbox  # noqa: E402
from shim.sandbox.state import SandboxRef, run_dir  # noqa: E402
from shim.task.guest_spec import guest_spec  # noqa: E402

READY = "bench-ready"


def pod_spec(args: list[str], hostname: str, files: Path) -> dict:
    """The host's spec of a pod's container, as containerd 1.6's CRI writes it."""
    def bind(destination: str, source: Path) -> dict:
        return {"destination": destination, "type": "bind", "source": str(source),
                "options": ["rbind", "rprivate", "rw"]}
    spec = cri_spec(args, [CRI_PATH_ENV, f"HOSTNAME={hostname}"],
                    [bind("/etc/hostname", files / "hostname"),
                     bind("/etc/hosts", files / "hosts"),
                     bind("/etc/resolv.conf", files / "resolv.conf"),
                     bind("/dev/shm", files / "shm")],
                    [*({"type": kind, "path": f"/proc/1/ns/{kind}"} for kind in ("pid", "ipc", "uts")),
                     {"type": "mount"}, {"type": "network", "path": "/proc/1/ns/net"}])
    spec["linux"]["cgroupsPath"] = "/k8s.io/bench"
    return spec


def pod_files(directory: Path, hostname: str) -> Path:
    directory.mkdir(parents=True)
    (directory / "hostname").write_text(hostname + "\n")
    (directory / "hosts").write_text("127.0.0.1 localhost\n")
    (directory / "resolv.conf").write_text("nameserver 10.0.0.10\n")
    (directory / "shm").mkdir()
    return directory


class Pod:
    """One clone, driven over its agent the way the shim drives a CRI pod's."""

    def __init__(self, box: Sandbox, files: Path, runtime: str) -> None:
        self.box = box
        self.files = files
        self.runtime = runtime
        self.agent: AgentClient = box.agent

    async def network(self, index: int) -> dict[str, float]:
        subnet = f"10.250.{index % 250}"
        iface = pb.Interface(name="eth0", hw_addr=f"02:42:0a:fa:00:{index % 250:02x}", mtu=1500,
                             addresses=[pb.IPAddress(address=f"{subnet}.2", prefix_len=24)])
        routes = [pb.Route(dest=f"{subnet}.0/24", device="eth0", source=f"{subnet}.2", scope=253),
                  pb.Route(dest="default", gateway=f"{subnet}.1", device="eth0")]
        return {"UpdateInterface": await _timed(self.agent.update_interface(
                    iface, match_hw_addr=TEMPLATE_MAC)),
                "UpdateRoutes": await _timed(self.agent.update_routes(routes))}

    async def create_sandbox(self) -> float:
        return await _timed(self.agent.create_sandbox(
            sandbox_id=self.box.id, hostname=self.box.id[:63],
            share_mount_tag=self.box.vm.config.share_mount_tag,
            share_mount_point=GUEST_SHARE_MOUNT, dns=["nameserver 10.0.0.10"]))

    async def container(self, cid: str, rootfs: Path) -> dict[str, float]:
        spec, binds = guest_spec(pod_spec(["sh", "-c", f"echo {READY}; exec sleep 1000"],
                                          self.box.id, self.files),
                                 f"{GUEST_SHARE_MOUNT}/.mounts/{cid}")
        mounts = self.box.paths.shared_dir / ".mounts" / cid
        mounts.mkdir(parents=True)
        for b in binds:
            target = mounts / b.share_name
            target.mkdir() if b.source.is_dir() else target.touch()
            bind_mount(b.source, target, readonly=b.readonly, confined=True)
        guest_rootfs = self.box.add_container_rootfs(cid, rootfs)
        create = await _timed(self.agent.create_container(
            cid, json.dumps(spec).encode(), guest_rootfs, stdin=False, runtime=self.runtime))
        output = asyncio.ensure_future(self.agent.read_stdout(cid))
        started = time.perf_counter()
        await self.agent.start_container(cid)
        start = time.perf_counter() - started
        chunk = await asyncio.wait_for(output, 60)
        first_output = time.perf_counter() - started - start
        if READY.encode() not in chunk.data:
            raise RuntimeError(f"{cid}: unexpected output {chunk.data!r}")
        return {"CreateContainer": create, "StartContainer": start, "first output": first_output}


async def _timed(call) -> float:
    started = time.perf_counter()
    await call
    return time.perf_counter() - started


async def one_pod(config: GraftConfig, index: int, rootfs: Path, files: Path,
                  runtime: str, pool: bool, keep_console: Path | None) -> dict[str, float]:
    ref = SandboxRef.of(f"gcb-{index}")
    paths = VmPaths(run_dir=run_dir(config, ref), shared_dir=run_dir(config, ref) / "shared")
    paths.shared_dir.mkdir(parents=True, mode=0o700)
    mount_tmpfs(paths.shared_dir, SHARE_ROOT_BYTES)
    booted = await boot_vm(config, ref.id, paths)
    if not booted.boot_path.restored:
        raise RuntimeError(f"not restored: {booted.boot_path.describe()}")
    box = Sandbox(ref, config, paths, booted.hypervisor, booted.agent, booted.boot_path)
    pod = Pod(box, files, runtime)
    try:
        if pool:
            await box.agent.warm_up(box.vm.config.share_mount_tag)
        out = await pod.network(index)
        out["CreateSandbox"] = await pod.create_sandbox()
        for name, seconds in (await pod.container("c1", rootfs)).items():
            out[f"first container: {name}"] = seconds
        for name, seconds in (await pod.container("c2", rootfs)).items():
            out[f"second container: {name}"] = seconds
        return out
    finally:
        if keep_console is not None:   # the agent's log (the run dir goes with the pod)
            keep_console.mkdir(parents=True, exist_ok=True)
            shutil.copy(paths.run_dir / "console.log", keep_console / f"{ref.id}.log")
        await box.stop()


async def main_async(pods: int, runtime: str, pool: bool, config_path: str | None,
                     keep_console: Path | None) -> dict:
    base = load_config(config_path)
    with tempfile.TemporaryDirectory(prefix="ggc-", dir="/run") as tmp:
        config = base.with_values({("runtime", "state_dir"): f"{tmp}/s",
                                   ("factory", "enable_template"): True,
                                   ("factory", "template_path"): f"{tmp}/tpl"})
        rootfs = Path(tmp) / "busybox"
        subprocess.run([str(ROOT / "hack" / "busybox-rootfs.sh"), str(rootfs)], check=True,
                       stdout=subprocess.DEVNULL)
        files = pod_files(Path(tmp) / "pod", "bench")
        built = await init_template(config)
        try:
            samples = [await one_pod(config, i, rootfs, files, runtime, pool, keep_console) for i in range(pods)]
        finally:
            destroy_template(config)
            shutil.rmtree(f"{tmp}/s", ignore_errors=True)
    return {
        "benchmark": "guest_create_in_clones",
        "pods": pods,
        "runtime": runtime or "(default)",
        "clones": "warm pool (WarmUp before the pod)" if pool else "restored for the pod",
        "accelerator": resolve_accelerator(Accelerator(config.get("hypervisor", "accelerator"))).value,
        "template_init_s": round(built.seconds, 2),
        "median_s": {name: round(statistics.median(s[name] for s in samples), 4)
                     for name in samples[0]},
        "max_s": {name: round(max(s[name] for s in samples), 4) for name in samples[0]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=5)
    ap.add_argument("--pool", action="store_true", help="WarmUp each clone first, as a warm pool")
    ap.add_argument("--runtime", default="", help="guest runtime (default: the agent's)")
    ap.add_argument("--config")
    ap.add_argument("--console-dir", type=Path, help="keep each clone's console log there")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main_async(args.pods, args.runtime, args.pool, args.config,
                                            args.console_dir)), indent=2))


if __name__ == "__main__":
    main()

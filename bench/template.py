"""Cold boot vs template restore, side by side in one run; prints JSON.

    python3 bench/template.py [--runs N] [--clones 5] [--config FILE]

Measures (real QEMU; TCG on hosts without hardware KVM):
- launch → agent answering, median of N sandboxes each way (the sandbox's
  recorded boot_seconds) and the whole Sandbox.launch wall time;
- wall time until `--clones` clones launched at once all answer;
- PSS of the VMM process after light use (one container run in each VM):
  one cold VM, one clone alone, and each of the concurrent clones.
Needs root and a built guest image. Everything it creates lives under a
private state dir and is removed at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shim.agent.streams import copy_output  # noqa: E402
from shim.config import GraftConfig, load_config, parse_config  # noqa: E402
from shim.factory.build import destroy_template, init_template  # noqa: E402
from shim.hypervisor.accel import resolve_accelerator  # noqa: E402
from shim.hypervisor.base import Accelerator  # noqa: E402
from shim.oci import default_spec  # noqa: E402
from shim.sandbox.sandbox import Sandbox  # noqa: E402
from shim.sandbox.state import read_boot_path  # noqa: E402

MIB = 1 << 20


def with_overrides(base: GraftConfig, state_dir: Path, enable_template: bool) -> GraftConfig:
    data: dict = {}
    for (section, name), value in base.values.items():
        data.setdefault(section, {})[name] = value
    data["runtime"]["state_dir"] = str(state_dir)
    data["factory"] = {"enable_template": enable_template,
                       "template_path": str(state_dir / "template")}
    return parse_config(data)


async def light_use(box: Sandbox, rootfs: Path) -> None:
    """Run one short container, as a pod would right after start."""
    cid = "bench"
    guest_rootfs = box.add_container_rootfs(cid, rootfs)
    spec = default_spec(["sh", "-c", "echo ready; ls / > /dev/null"])
    try:
        await box.agent.create_container(cid, json.dumps(spec).encode(), guest_rootfs,
                                         stdin=False)

        async def drop(_: bytes) -> None:
            pass
        reader = asyncio.ensure_future(copy_output(box.agent, cid, "", "stdout", drop))
        await box.agent.start_container(cid)
        status = await box.agent.wait_process(cid, "")
        await reader
        if status.exit_status != 0:
            raise RuntimeError(f"light-use container exited {status.exit_status}")
    finally:
        await box.agent.remove_container(cid, force=True)
        box.remove_container_rootfs(cid)


def pss_mib(box: Sandbox) -> float:
    assert box.vmm_pid is not None
    return psutil.Process(box.vmm_pid).memory_full_info().pss / MIB


async def launch(config: GraftConfig, sandbox_id: str) -> tuple[Sandbox, float, float]:
    """(sandbox, boot seconds launch→agent, whole launch wall seconds)"""
    started = time.monotonic()
    box = await Sandbox.launch(sandbox_id, config)
    wall = time.monotonic() - started
    recorded = read_boot_path(config, sandbox_id) or {}
    return box, float(recorded.get("boot_seconds", wall)), wall


def summary(samples: list[float]) -> dict:
    return {"median": round(statistics.median(samples), 3),
            "samples": [round(s, 3) for s in samples]}


async def bench(base: GraftConfig, runs: int, clones: int, rootfs: Path,
                state_dir: Path) -> dict:
    cold_cfg = with_overrides(base, state_dir, enable_template=False)
    warm_cfg = with_overrides(base, state_dir, enable_template=True)
    built = await init_template(warm_cfg)
    result: dict = {
        "accelerator": resolve_accelerator(Accelerator(base.get("hypervisor", "accelerator"))
                                           ).value,
        "memory_mib": base.get("hypervisor", "memory_mib"),
        "runs": runs,
        "template_build_s": round(built.seconds, 2),
    }
    boxes: list[Sandbox] = []
    try:
        cold_boot, cold_wall, warm_boot, warm_wall = [], [], [], []
        pss_cold = pss_alone = 0.0
        # Interleaved so that load from other work on the host hits both alike.
        async def sample(cfg, name: str, restored: bool, boots: list, walls: list,
                         measure_pss: bool) -> float:
            box, boot, wall = await launch(cfg, name)
            boxes.append(box)
            if box.boot_path.restored != restored:
                raise RuntimeError(f"{name}: unexpected boot path: {box.boot_path.describe()}")
            boots.append(boot)
            walls.append(wall)
            pss = 0.0
            if measure_pss:
                await light_use(box, rootfs)
                pss = pss_mib(box)
            await box.stop()
            return pss

        for i in range(runs):
            pss = await sample(cold_cfg, f"bench-cold-{i}", False, cold_boot, cold_wall, i == 0)
            pss_cold = pss or pss_cold
            pss = await sample(warm_cfg, f"bench-warm-{i}", True, warm_boot, warm_wall, i == 0)
            pss_alone = pss or pss_alone
        result["cold_boot_s"] = summary(cold_boot)
        result["restore_s"] = summary(warm_boot)
        result["cold_launch_wall_s"] = summary(cold_wall)
        result["restore_launch_wall_s"] = summary(warm_wall)
        speedup = statistics.median(cold_boot) / statistics.median(warm_boot)
        result["restore_speedup"] = round(speedup, 1)

        started = time.monotonic()
        group = await asyncio.gather(*(Sandbox.launch(f"bench-many-{i}", warm_cfg)
                                       for i in range(clones)), return_exceptions=True)
        wall = time.monotonic() - started
        boxes.extend(b for b in group if isinstance(b, Sandbox))
        failed = [repr(b) for b in group if not isinstance(b, Sandbox)]
        if failed:
            raise RuntimeError(f"concurrent clones failed: {failed}")
        many = [b for b in group if isinstance(b, Sandbox)]
        result["concurrent_clones"] = {
            "count": clones, "wall_s": round(wall, 3),
            "all_restored": all(b.boot_path.restored for b in many)}
        await asyncio.gather(*(light_use(b, rootfs) for b in many))
        pss_many = [pss_mib(b) for b in many]
        await asyncio.gather(*(b.stop() for b in many))
        result["pss_mib"] = {
            "cold": round(pss_cold, 1),
            "clone_alone": round(pss_alone, 1),
            f"clone_among_{clones}_median": round(statistics.median(pss_many), 1),
            "clone_alone_vs_cold": round(pss_alone / pss_cold, 3),
            f"clone_among_{clones}_vs_cold": round(statistics.median(pss_many) / pss_cold, 3),
        }
        result["targets"] = {
            "restore_at_least_20x_faster": speedup >= 20,
            "clone_pss_at_most_30pct_of_cold": statistics.median(pss_many) <= 0.3 * pss_cold,
        }
        return result
    finally:
        await asyncio.gather(*(b.stop() for b in boxes), return_exceptions=True)
        destroy_template(warm_cfg)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="sandboxes per boot path (median)")
    p.add_argument("--clones", type=int, default=5, help="clones launched at once")
    p.add_argument("--config", help="graft configuration file (defaults otherwise)")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench/template.py needs root (tmpfs mount, VMs)", file=sys.stderr)
        return 2
    base = load_config(args.config)
    state_dir = Path(f"/run/graft-bench-{os.getpid()}")
    state_dir.mkdir(mode=0o700)
    work = Path(tempfile.mkdtemp(prefix="graft-bench-"))
    try:
        rootfs = work / "rootfs"
        subprocess.run([str(ROOT / "hack" / "busybox-rootfs.sh"), str(rootfs)], check=True)
        result = asyncio.run(bench(base, args.runs, args.clones, rootfs, state_dir))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(state_dir, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

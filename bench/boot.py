#!/usr/bin/env python3
"""Cold boot benchmark: launch → agent answering a health check (median of
N), and the VM's PSS after boot. Prints one JSON object.

    python3 bench/boot.py [--runs 5] [--config FILE]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from shim.config import load_config  # noqa: E402
from shim.factory.boot import cold_boot  # noqa: E402
from shim.hypervisor.accel import resolve_accelerator  # noqa: E402
from shim.hypervisor.base import Accelerator, VmPaths  # noqa: E402


def vm_pss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_full_info().pss / 2**20


async def one_boot(config, index: int, state: Path) -> dict:
    run_dir = state / f"bench-{index}"
    paths = VmPaths(run_dir=run_dir, shared_dir=run_dir / "shared")
    paths.shared_dir.mkdir(parents=True)
    booted = await cold_boot(config, f"bench-{index}", paths, None, "benchmark")
    try:
        details = await booted.agent.get_guest_details()
        return {"seconds": booted.seconds, "pss_mib": vm_pss_mib(booted.hypervisor.pid),
                "agent_uptime_s": details.agent_uptime_s}
    finally:
        await booted.agent.close()
        await booted.hypervisor.stop_vm()


async def main_async(runs: int, config_path: str | None) -> dict:
    base = load_config(config_path)
    with tempfile.TemporaryDirectory(prefix="graft-bench-", dir="/run") as tmp:
        config = base.with_values({("runtime", "state_dir"): tmp})
        samples = [await one_boot(config, i, Path(tmp)) for i in range(runs)]
    secs = [s["seconds"] for s in samples]
    return {
        "benchmark": "cold_boot",
        "runs": runs,
        "accelerator": resolve_accelerator(
            Accelerator(config.get("hypervisor", "accelerator"))).value,  # what "auto" meant
        "memory_mib": config.get("hypervisor", "memory_mib"),
        "launch_to_agent_ready_s": {"median": statistics.median(secs), "min": min(secs),
                                    "max": max(secs)},
        "agent_uptime_at_ready_s_median": statistics.median(s["agent_uptime_s"] for s in samples),
        "vm_pss_mib_median": statistics.median(s["pss_mib"] for s in samples),
        "target": {"launch_to_agent_ready_s": 5.0},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--config")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main_async(args.runs, args.config)), indent=2))


if __name__ == "__main__":
    main()

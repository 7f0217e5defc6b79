#!/usr/bin/env python3
"""Container create/start/exec latency inside one real VM, per guest runtime (crun, runc,
native): the CreateContainer, StartContainer and ExecProcess round trips as the shim sees
them, for a busybox container with graft's default spec. Prints one JSON object.

    python3 bench/container_start.py [--runs 7] [--runtimes crun,native] [--config FILE]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shim.config import load_config  # noqa: E402
from shim.oci import default_process, default_spec  # noqa: E402
from shim.sandbox.sandbox import Sandbox  # noqa: E402


def _summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4)}


async def _timed(call) -> float:
    started = time.perf_counter()
    await call
    return time.perf_counter() - started


async def measure(box: Sandbox, rootfs: Path, runtime: str, runs: int) -> dict:
    samples: dict[str, list[float]] = {"create_s": [], "start_s": [], "exec_s": []}
    for i in range(runs + 1):   # the first run warms caches (imports, page cache) and is dropped
        cid = f"{runtime}-{i}"
        guest_rootfs = box.add_container_rootfs(cid, rootfs)
        try:
            spec = json.dumps(default_spec(["sleep", "1000"])).encode()
            create = await _timed(box.agent.create_container(cid, spec, guest_rootfs, stdin=False,
                                                             runtime=runtime))
            start = await _timed(box.agent.start_container(cid))
            process = json.dumps(default_process(["true"])).encode()
            execute = await _timed(box.agent.exec_process(cid, "e", process, stdin=False))
            status = await box.agent.wait_process(cid, "e")
            if status.exit_status != 0:
                raise RuntimeError(f"{runtime}: exec of true exited {status.exit_status}")
        finally:
            await box.agent.remove_container(cid, force=True)
            box.remove_container_rootfs(cid)
        if i:
            samples["create_s"].append(create)
            samples["start_s"].append(start)
            samples["exec_s"].append(execute)
    both = [c + s for c, s in zip(samples["create_s"], samples["start_s"])]
    return {**{k: _summary(v) for k, v in samples.items()}, "create_plus_start_s": _summary(both)}


async def main_async(runs: int, runtimes: list[str], config_path: str | None) -> dict:
    base = load_config(config_path)
    with tempfile.TemporaryDirectory(prefix="gbench-", dir="/run") as tmp:
        config = base.with_values({("runtime", "state_dir"): tmp})
        rootfs = Path(tmp) / "busybox"
        subprocess.run([str(ROOT / "hack" / "busybox-rootfs.sh"), str(rootfs)], check=True)
        box = await Sandbox.launch("bench-ctr", config)
        try:
            results = {runtime: await measure(box, rootfs, runtime, runs) for runtime in runtimes}
        finally:
            await box.stop()
    return {
        "benchmark": "container_start_in_guest",
        "runs": runs,
        "accelerator": config.get("hypervisor", "accelerator"),
        "vcpus": config.get("hypervisor", "vcpus"),
        "runtimes": results,
        "target": {"native_create_plus_start_s": 0.1},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--runtimes", default="crun,native")
    ap.add_argument("--config")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main_async(args.runs, args.runtimes.split(","), args.config)),
                     indent=2))


if __name__ == "__main__":
    main()

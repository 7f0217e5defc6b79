#!/usr/bin/env python3
"""Container create/start/exec latency inside one real VM, per guest runtime (crun, runc,
native): the CreateContainer, StartContainer and ExecProcess round trips as the shim sees
them, for a busybox container with graft's default spec (with --seccomp also a deny-by-default
seccomp profile allowing ~350 syscalls, the size of containerd's RuntimeDefault). Prints one
JSON object.

    python3 bench/container_start.py [--runs 7] [--runtimes crun,native] [--seccomp] [--config FILE]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
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


def allowlist_profile() -> dict:
    """Every syscall the build host's headers name, allowed one by one, the rest denied."""
    header = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h").read_text()
    names = sorted(set(re.findall(r"#define __NR_(\w+) \d+", header)) - {"reboot", "kexec_load"})
    return {"defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": names, "action": "SCMP_ACT_ALLOW"}]}


async def measure(box: Sandbox, rootfs: Path, runtime: str, runs: int, seccomp: dict | None) -> dict:
    samples: dict[str, list[float]] = {"create_s": [], "start_s": [], "exec_s": []}
    first: dict[str, float] = {}
    for i in range(runs + 1):   # the first container (caches still cold) is reported apart
        cid = f"{runtime}-{i}"
        guest_rootfs = box.add_container_rootfs(cid, rootfs)
        try:
            doc = default_spec(["sleep", "1000"])
            if seccomp is not None:
                doc["linux"]["seccomp"] = seccomp
            spec = json.dumps(doc).encode()
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
        else:
            first = {"create_s": round(create, 4), "start_s": round(start, 4), "exec_s": round(execute, 4)}
    both = [c + s for c, s in zip(samples["create_s"], samples["start_s"])]
    return {**{k: _summary(v) for k, v in samples.items()}, "create_plus_start_s": _summary(both),
            "first_container": first}


async def main_async(runs: int, runtimes: list[str], config_path: str | None, seccomp: bool) -> dict:
    base = load_config(config_path)
    with tempfile.TemporaryDirectory(prefix="gbench-", dir="/run") as tmp:
        config = base.with_values({("runtime", "state_dir"): tmp})
        rootfs = Path(tmp) / "busybox"
        subprocess.run([str(ROOT / "hack" / "busybox-rootfs.sh"), str(rootfs)], check=True)
        box = await Sandbox.launch("bench-ctr", config)
        try:
            profile = allowlist_profile() if seccomp else None
            results = {runtime: await measure(box, rootfs, runtime, runs, profile)
                       for runtime in runtimes}
        finally:
            await box.stop()
    return {
        "benchmark": "container_start_in_guest",
        "runs": runs,
        "accelerator": config.get("hypervisor", "accelerator"),
        "vcpus": config.get("hypervisor", "vcpus"),
        "seccomp_profile": bool(seccomp),
        "runtimes": results,
        "target": {"native_create_plus_start_s": 0.1},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--runtimes", default="crun,native")
    ap.add_argument("--seccomp", action="store_true")
    ap.add_argument("--config")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main_async(args.runs, args.runtimes.split(","), args.config,
                                            args.seccomp)), indent=2))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""How fast `containerd-shim-graft-v2 start` is, as containerd runs it (no VM needed).

* container start: `start` for an app container of a pod whose shim already listens (the
  case of every CreateContainer): wall time of the whole process, N runs;
* sandbox start: `start` for a pod sandbox, which must leave a daemon serving the task API
  on the address it prints: wall time of `start`, and exec → the daemon answering a ttrpc
  request (Task.State of an unknown id → NotFound), N runs; each daemon is then shut down.

    python3 bench/shim_start.py [--runs 20] [--shim PATH]

PATH defaults to the launcher `hack/setup.sh` installs (shim/cli/launcher.py renders it for
this checkout). Prints one JSON object; medians and ranges in milliseconds.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shim.shim_manager.socket_address import socket_path  # noqa: E402

NAMESPACE = "bench"


def _bundle(base: Path, cid: str, sandbox_id: str, kind: str) -> Path:
    bundle = Path(tempfile.mkdtemp(prefix=f"{cid}-", dir=base))
    (bundle / "rootfs").mkdir()
    spec = {"ociVersion": "1.0.2", "process": {"args": ["true"]},
            "annotations": {"io.kubernetes.cri.container-type": kind,
                            "io.kubernetes.cri.sandbox-id": sandbox_id}}
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def _run_start(shim: str, address: str, cid: str, bundle: Path) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run([shim, "-namespace", NAMESPACE, "-address", address,
                           "-publish-binary", "/bin/true", "-id", cid, "start"],
                          cwd=bundle, input=b"", capture_output=True, timeout=30,
                          env=dict(os.environ, TTRPC_ADDRESS=f"{address}.ttrpc"))
    elapsed = time.monotonic() - started
    out = (done.stdout + done.stderr).decode().strip()
    if done.returncode != 0 or not out.startswith("unix://"):
        raise RuntimeError(f"start failed ({done.returncode}): {out}")
    return elapsed, out[len("unix://"):]


async def _answers(path: str, deadline: float) -> float:
    """Monotonic time at which the daemon at *path* answered a Task.State."""
    from shim.api.containerd import TASK_SERVICE, shim_pb2
    from shim.ttrpc import Client, Code, TtrpcError

    client = await Client.connect_unix(path)
    try:
        try:
            await client.call(TASK_SERVICE.full_name, "State", shim_pb2.StateRequest(id="none"),
                              shim_pb2.StateResponse, timeout=max(0.1, deadline - time.monotonic()))
        except TtrpcError as exc:
            if exc.code is not Code.NOT_FOUND:
                raise
        answered = time.monotonic()
        await client.call(TASK_SERVICE.full_name, "Shutdown",
                          shim_pb2.ShutdownRequest(id="none"), _empty(), timeout=5)
        return answered
    finally:
        await client.close()


def _empty():
    from google.protobuf import empty_pb2
    return empty_pb2.Empty


def _summary(values: list[float]) -> dict:
    ms = [v * 1000 for v in values]
    return {"median_ms": round(statistics.median(ms), 1), "min_ms": round(min(ms), 1),
            "max_ms": round(max(ms), 1), "runs": len(ms)}


def container_starts(shim: str, base: Path, runs: int) -> list[float]:
    address = str(base / "containerd.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = socket_path(address, NAMESPACE, "pod")
    path.parent.mkdir(parents=True, exist_ok=True)
    listener.bind(str(path))
    listener.listen(64)
    try:
        times = []
        for i in range(runs):
            bundle = _bundle(base, f"app{i}", "pod", "container")
            elapsed, printed = _run_start(shim, address, f"app{i}", bundle)
            assert printed == str(path), printed
            times.append(elapsed)
        return times
    finally:
        listener.close()
        path.unlink(missing_ok=True)


def sandbox_starts(shim: str, base: Path, runs: int) -> tuple[list[float], list[float]]:
    address = str(base / "containerd.sock")
    walls, serving = [], []
    for i in range(runs):
        bundle = _bundle(base, f"pod{i}", f"pod{i}", "sandbox")
        exec_at = time.monotonic()
        elapsed, path = _run_start(shim, address, f"pod{i}", bundle)
        answered = asyncio.run(_answers(path, exec_at + 10))
        walls.append(elapsed)
        serving.append(answered - exec_at)
        deadline = time.monotonic() + 10
        while os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
    return walls, serving


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--shim", help="the shim binary to time (default: a fresh launcher)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gshim-", dir="/tmp") as tmp:
        base = Path(tmp)
        shim = args.shim
        if shim is None:
            from shim.cli.launcher import write_launcher
            shim = str(base / "containerd-shim-graft-v2")
            write_launcher(Path(shim))
        shim = shutil.which(shim) or shim
        container_starts(shim, base, 2)  # warm-up: page cache, .pyc files
        containers = container_starts(shim, base, args.runs)
        walls, serving = sandbox_starts(shim, base, args.runs)
    print(json.dumps({
        "benchmark": "shim_start", "shim": shim,
        "container_start": _summary(containers),
        "sandbox_start": _summary(walls),
        "sandbox_exec_to_serving": _summary(serving),
        "targets": {"start_ms": 60, "exec_to_serving_ms": 150},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

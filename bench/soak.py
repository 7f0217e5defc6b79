#!/usr/bin/env python3
"""Load and soak through CRI: many template pod cycles, then many pods at once.

    python3 bench/soak.py [--cycles 100] [--concurrent 10] [--json FILE]

One private containerd 1.6 with the graft handler (hack/containerd/graft_node.py), one
template built by `graft factory init`. Then:

  * --cycles sequential template pods: RunPodSandbox → CreateContainer → StartContainer → its
    first log line → StopPodSandbox → RemovePodSandbox, each followed by a leak check of the
    whole node (hack/containerd/leaks.py NodeLeaks);
  * --concurrent pods alive at once, half cold-booted, half restored: every container answers
    ExecSync; host memory per pod (MemAvailable before/with them) and PSS per pod;
  * the shim fork server's and containerd's open fds and RSS after a warm-up and at the end,
    each pod shim's at the first and the last cycle; the template's files' sha256 before and
    after (clones map its memory privately: it must never change).

Prints one JSON object. Importable: tests/integration/test_reliability.py runs a short soak.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "hack" / "containerd"), str(ROOT / "e2e")]

from graft_node import NAMESPACE, GraftNode, template_node  # noqa: E402
from leaks import shim_pids  # noqa: E402

from shim.sandbox.state import SandboxRef, recorded_vmm, run_dir  # noqa: E402

MIB = 1 << 20
READY = "soak-ready"
APP = ["sh", "-c", f"echo {READY}; exec sleep 100000"]
# "Flat": what a process may have gained over the whole soak.
FD_SLACK = 2
RSS_SLACK_MIB = 16.0
RSS_SLACK_RATIO = 0.2


def process_usage(pid: int | None) -> dict | None:
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        return {"pid": pid, "fds": proc.num_fds(), "rss_mib": round(proc.memory_info().rss / MIB, 1)}
    except psutil.Error:
        return None


def is_flat(start: dict | None, end: dict | None) -> bool | None:
    if start is None or end is None:
        return None
    rss_room = max(RSS_SLACK_MIB, start["rss_mib"] * RSS_SLACK_RATIO)
    return end["fds"] - start["fds"] <= FD_SLACK and end["rss_mib"] - start["rss_mib"] <= rss_room


def fork_server_pid() -> int | None:
    """This tree's shim fork server (the launcher runs this interpreter: shim_manager/handoff)."""
    from shim.shim_manager.handoff import server_path

    title = f"containerd-shim-graft-v2 fork-server {server_path()}"
    for proc in psutil.process_iter(["cmdline"]):
        if " ".join(proc.info["cmdline"] or []).strip() == title:  # setproctitle pads
            return proc.pid
    return None


def template_digests(template_path: Path) -> dict[str, str]:
    directory = (template_path / "current").resolve()
    out = {}
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(MIB):
                digest.update(chunk)
        out[path.name] = digest.hexdigest()
    return out


def available_mib() -> float:
    return psutil.virtual_memory().available / MIB


class Soak:
    def __init__(self, node: GraftNode, leak_deadline_s: float = 15.0) -> None:
        self.node = node
        self.leak_deadline_s = leak_deadline_s
        self.failures: list[str] = []
        self.leaks: list[str] = []
        self._lock = threading.Lock()

    # -- one pod ------------------------------------------------------------------------------

    def start_pod(self, name: str) -> tuple[str, str]:
        cri = self.node.cri
        pod = cri.run_pod(name, "graft")
        try:
            cid = cri.create_start(pod, "app", APP)
            if READY not in cri.logs(cid, READY, 120):
                raise TimeoutError(f"pod {name}: no output")
        except BaseException:
            cri.stop_remove(pod)
            raise
        return pod, cid

    def _fail(self, what: str, exc: BaseException) -> None:
        with self._lock:
            self.failures.append(f"{what}: {type(exc).__name__}: {exc}")

    def _check_leaks(self, checker, what: str) -> None:
        deadline = time.monotonic() + self.leak_deadline_s
        while (found := checker.leaks()) and time.monotonic() < deadline:
            time.sleep(0.3)
        if found:
            self.leaks.append(f"{what}: {found}")

    def pod_shim(self, pod: str) -> dict | None:
        pids = [p for p in shim_pids(self.node.containerd.address, pod)]
        return process_usage(pids[0]) if len(pids) == 1 else None

    # -- phases -------------------------------------------------------------------------------

    def cycles(self, count: int) -> dict:
        self.node.configure(template=True)
        checker = self.node.leak_check()
        shims: dict[str, dict | None] = {}
        started = time.monotonic()
        for i in range(count):
            try:
                pod, _ = self.start_pod(f"soak-{i}")
                if i in (0, count - 1):
                    shims["first" if i == 0 else "last"] = self.pod_shim(pod)
                self.node.cri.stop_remove(pod)
            except Exception as exc:
                self._fail(f"cycle {i}", exc)
            self._check_leaks(checker, f"cycle {i}")
        return {"cycles": count, "seconds": round(time.monotonic() - started, 1),
                "pod_shim": shims}

    def _start_many(self, names: list[str], pods: list[tuple[str, str, str]], kind: str) -> None:
        def one(name: str) -> None:
            try:
                pod, cid = self.start_pod(name)
                with self._lock:
                    pods.append((pod, cid, kind))
            except Exception as exc:
                self._fail(f"pod {name}", exc)

        threads = [threading.Thread(target=one, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def concurrent(self, count: int) -> dict:
        checker = self.node.leak_check()
        pods: list[tuple[str, str, str]] = []
        before = available_mib()
        started = time.monotonic()
        cold = count // 2
        # The shim reads the config when it boots the VM: cold ones first, then restored.
        self.node.configure(template=False)
        self._start_many([f"many-cold-{i}" for i in range(cold)], pods, "cold")
        self.node.configure(template=True)
        self._start_many([f"many-tpl-{i}" for i in range(count - cold)], pods, "template")
        all_ready = time.monotonic() - started
        time.sleep(2)  # let page cache and guests settle before measuring memory
        with_pods = available_mib()
        pss = {"cold": [], "template": []}
        for pod, cid, kind in pods:
            try:
                sync = self.node.cri.exec_sync(cid, ["echo", "alive"], 60)
                if (sync.stdout, sync.exit_code) != (b"alive\n", 0):
                    raise AssertionError(f"ExecSync answered {sync}")
            except Exception as exc:
                self._fail(f"exec in {pod}", exc)
            pss[kind].append(self._pod_pss_mib(pod))
        alive = len(pods)

        def remove(pod: str) -> None:
            try:
                self.node.cri.stop_remove(pod)
            except Exception as exc:
                self._fail(f"remove {pod}", exc)

        threads = [threading.Thread(target=remove, args=(p[0],)) for p in pods]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._check_leaks(checker, "concurrent pods")
        return {"pods": count, "alive_at_once": alive, "all_ready_s": round(all_ready, 1),
                "host_memory_per_pod_mib": round((before - with_pods) / max(alive, 1), 1),
                "pss_per_pod_mib": {k: round(sum(v) / len(v), 1) if v else None
                                    for k, v in pss.items()}}

    def _pod_pss_mib(self, pod: str) -> float:
        total = 0.0
        vmm = recorded_vmm(run_dir(self.node.config,
                                   SandboxRef(pod, NAMESPACE, self.node.containerd.address)))
        for pid in [vmm.pid if vmm else None, *shim_pids(self.node.containerd.address, pod)]:
            if pid is not None:
                try:
                    total += psutil.Process(pid).memory_full_info().pss / MIB
                except psutil.Error:
                    pass
        return total

    def run(self, cycles: int, concurrent: int) -> dict:
        containerd_pid = int(self.node.containerd.layout.pid.read_text())
        digests_before = template_digests(self.node.template_path)
        try:  # warm-up: the fork server exists from the first pod on
            pod, _ = self.start_pod("soak-warmup")
            self.node.cri.stop_remove(pod)
        except Exception as exc:
            self._fail("warm-up", exc)
        start = {"fork_server": process_usage(fork_server_pid()),
                 "containerd": process_usage(containerd_pid)}
        sequential = self.cycles(cycles)
        many = self.concurrent(concurrent)
        end = {"fork_server": process_usage(fork_server_pid()),
               "containerd": process_usage(containerd_pid)}
        digests_after = template_digests(self.node.template_path)
        return {
            "benchmark": "soak_cri",
            "sequential": sequential, "concurrent": many,
            "failures": len(self.failures), "failure_details": self.failures,
            "leaks": len(self.leaks), "leak_details": self.leaks,
            "processes": {name: {"start": start[name], "end": end[name],
                                 "flat": is_flat(start[name], end[name])} for name in start},
            "template_unchanged": digests_before == digests_after,
            "template_files": sorted(digests_before),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--concurrent", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import private_containerd
    from testing import Containerd

    with tempfile.TemporaryDirectory(prefix="gsk-", dir="/tmp") as tmp:
        layout = private_containerd.Layout(Path(tmp))
        private_containerd.start(layout)
        try:
            with template_node(Containerd(layout)) as node:
                report = Soak(node).run(args.cycles, args.concurrent)
        finally:
            private_containerd.purge(layout)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if not report["failures"] and not report["leaks"] else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Pod start through CRI, side by side in one run: runc, graft from a template, graft cold.

    python3 bench/pods.py [--pods 5] [--concurrent 10] [--png FILE] [--json FILE]

One private containerd 1.6 (hack/containerd/private_containerd.py) with the CRI plugin, a
bridge CNI network, and the `runc` and `graft` handlers. A template is built first with
`graft factory init`; graft's config is switched between template and cold between phases.

Measured for each way (N sequential pods): RunPodSandbox → CreateContainer → StartContainer
→ the container's first log line ("pod start"), and, for graft, where that time goes, from
the timeline the shim itself records (<run dir>/timeline.json). Then --concurrent template
pods started at once: time until all are ready, host PSS per pod (QEMU + shim), shim RSS.
Prints one JSON object; --png draws the chart (matplotlib).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "hack" / "containerd"), str(ROOT / "e2e")]

import private_containerd  # noqa: E402
from cri_api.v1 import api_pb2 as cri  # noqa: E402
from cri_client import Client  # noqa: E402

from shim.config import load_config  # noqa: E402
from shim.hypervisor.accel import resolve_accelerator  # noqa: E402
from shim.hypervisor.base import Accelerator  # noqa: E402
from shim.sandbox.state import SandboxRef, read_boot_path, recorded_vmm, run_dir  # noqa: E402
from shim.shim_manager.daemon_process import is_shim_process  # noqa: E402
from shim.timeline import read_timeline  # noqa: E402

IMAGE = private_containerd.BUSYBOX_IMAGE
NAMESPACE = "k8s.io"
READY = "bench-ready"
MIB = 1 << 20
RPC_TIMEOUT = 300
# The steps of a graft pod, in the order the shim records them (shim/timeline.py), named for
# the report; each phase runs from the previous recorded step to this one.
PHASES = (
    ("shim exec", "containerd + CNI until the shim starts"),
    ("shim serving", "shim start"),
    ("network attached", "network attach"),
    ("template validated", "template validation"),
    ("vm restored", "VM restore"),
    ("warm vm adopted", "warm VM handoff"),
    ("vm launched", "VM launch (cold boot)"),
    ("agent ready", "agent ready"),
    ("clone identity refreshed", "reseed + clock"),
    ("vm sized", "sizing"),
    ("nic ready", "NIC"),
    ("sandbox ready", "CreateSandbox"),
    ("{cid} create", "to CreateContainer"),
    ("{cid} rootfs ready", "rootfs + binds"),
    ("{cid} created", "guest create"),
    ("{cid} start", "to StartContainer"),
    ("{cid} started", "StartContainer"),
    ("{cid} first output", "first output"),
)


class Cri(Client):
    """e2e's CRI client, with a pod start timed the way kubelet would see it."""

    def __init__(self, address: str, logs: Path, pod_namespace: str = "bench") -> None:
        super().__init__(address, logs.parent / "cri-client")
        self.logs = logs
        self.pod_namespace = pod_namespace

    def start_pod(self, name: str, handler: str, command: list[str] | None = None,
                  ready: str = READY) -> tuple[str, str, float, float]:
        """A pod with one busybox container running *command* (default: print *ready*,
        sleep); (pod id, container id, t0, ready) wall times, ready = when its log first
        shows *ready*."""
        uid = uuid.uuid4().hex[:12]
        log_dir = self.logs / uid
        log_dir.mkdir(parents=True)
        config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, namespace=self.pod_namespace, uid=uid),
            hostname=name, log_directory=str(log_dir), linux=cri.LinuxPodSandboxConfig())
        t0 = time.time()
        pod = self.rt.RunPodSandbox(cri.RunPodSandboxRequest(
            config=config, runtime_handler=handler), timeout=RPC_TIMEOUT).pod_sandbox_id
        container = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name="app"), image=cri.ImageSpec(image=IMAGE),
            command=command or ["sh", "-c", f"echo {ready}; exec sleep 1000"],
            log_path="app.log", linux=cri.LinuxContainerConfig())
        cid = self.rt.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=pod, config=container, sandbox_config=config),
            timeout=RPC_TIMEOUT).container_id
        self.rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=RPC_TIMEOUT)
        log = log_dir / "app.log"
        deadline = time.monotonic() + RPC_TIMEOUT
        while not (log.exists() and ready in log.read_text(errors="replace")):
            if time.monotonic() > deadline:
                raise TimeoutError(f"pod {name}: no output")
            time.sleep(0.005)
        return pod, cid, t0, time.time()

    def remove_pod(self, pod: str) -> None:
        self.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod),
                               timeout=RPC_TIMEOUT)
        self.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod),
                                 timeout=RPC_TIMEOUT)


def _phases(timeline: list[tuple[str, float]], cid: str, t0: float) -> dict[str, float]:
    """Each named step's share of the pod start: from the step recorded just before it (in
    time: network attach and template validation overlap) to it."""
    names = {step.format(cid=cid): name for step, name in PHASES}
    marks = sorted((at, names[step]) for step, at in timeline if step in names)
    out: dict[str, float] = {}
    previous = t0
    for at, name in marks:
        out[name] = round(at - previous, 4)
        previous = at
    return out


def _boot_path(record: dict) -> str:
    if not record.get("restored"):
        return "cold"
    return "warm pool" if "(warm pool)" in record.get("reason", "") else "restored"


def shim_pid(address: str, pod: str) -> int | None:
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if is_shim_process(cmdline, address) and f" -id {pod} " in " ".join(cmdline) + " " \
                and " start" not in " ".join(cmdline):
            return proc.pid
    return None


def _cpu_cores(pids: list[int], window: float) -> float:
    """CPU the processes use together while their pods sit idle, in cores."""
    def total() -> float:
        used = 0.0
        for pid in pids:
            try:
                t = psutil.Process(pid).cpu_times()
                used += t.user + t.system
            except psutil.Error:
                pass
        return used
    before = total()
    time.sleep(window)
    return (total() - before) / window


def pss_mib(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        return psutil.Process(pid).memory_full_info().pss / MIB
    except psutil.Error:
        return 0.0


def _summary(values: list[float]) -> dict:
    return {"median_s": round(statistics.median(values), 3), "min_s": round(min(values), 3),
            "max_s": round(max(values), 3), "n": len(values)}


class Bench:
    def __init__(self, base: Path) -> None:
        self.layout = private_containerd.Layout(base / "ctrd")
        self.base = base
        self.cri: Cri | None = None

    def graft_config(self, enable_template: bool, cache_size: int = 0) -> None:
        # $GRAFT_GUEST_DIR goes into the file: the shim's fork server (which makes the warm
        # pool's clones) runs with an environment of its own.
        guest_dir = os.environ.get("GRAFT_GUEST_DIR")
        self.layout.graft_config.write_text(
            f'[runtime]\nlog_level = "debug"\nstate_dir = "{self.base}/state"\n'
            f'[factory]\nenable_template = {str(enable_template).lower()}\n'
            f'template_path = "{self.base}/tpl"\ncache_size = {cache_size}\n'
            + (f'[guest]\nimage_dir = "{guest_dir}"\n' if guest_dir else ""))

    def wait_for_pool(self, count: int, timeout: float = 120) -> bool:
        from shim.sandbox.warm import waiting_vms

        deadline = time.monotonic() + timeout
        while waiting_vms(self.config) < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def __enter__(self) -> "Bench":
        self.layout.base.mkdir(parents=True)
        private_containerd.start(self.layout)
        self.graft_config(True)
        self.cri = Cri(str(self.layout.socket), self.base / "logs")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cri is not None:
            self.cri.close()
        private_containerd.purge(self.layout)

    @property
    def config(self):
        return load_config(self.layout.graft_config)

    def init_template(self) -> float:
        import asyncio
        from shim.factory.build import init_template

        result = asyncio.run(init_template(self.config))
        return result.seconds

    def destroy_template(self) -> None:
        from shim.factory.build import destroy_template

        destroy_template(self.config)

    def sequential(self, handler: str, label: str, pods: int, pool: int = 0) -> dict:
        assert self.cri is not None
        starts, phases, paths = [], [], []
        for i in range(pods):
            if pool:  # each pod finds the pool refilled, as on a node between pod starts
                self.wait_for_pool(pool)
            pod, cid, t0, ready = self.cri.start_pod(f"{label}-{i}", handler)
            starts.append(ready - t0)
            if handler == "graft":
                ref = SandboxRef(pod, NAMESPACE, str(self.layout.socket))
                timeline = read_timeline(run_dir(self.config, ref))
                phases.append(_phases(timeline, cid, t0))
                paths.append(_boot_path(read_boot_path(self.config, ref) or {}))
            self.cri.remove_pod(pod)
        out = {"pod_start": _summary(starts), "samples_s": [round(s, 3) for s in starts]}
        if phases:
            names = [name for _, name in PHASES if any(name in p for p in phases)]
            out["phases_median_s"] = {n: round(statistics.median(p.get(n, 0.0) for p in phases),
                                               4) for n in names}
            out["boot_paths"] = paths
        return out

    def concurrent(self, handler: str, count: int) -> dict:
        assert self.cri is not None
        results: list[tuple[str, str, float, float] | BaseException] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            try:
                outcome: tuple | BaseException = self.cri.start_pod(f"many-{handler}-{i}", handler)
            except BaseException as exc:  # reported below, never lost in a thread
                outcome = exc
            with lock:
                results.append(outcome)

        started = time.time()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        failures = [r for r in results if isinstance(r, BaseException)]
        ok = [r for r in results if not isinstance(r, BaseException)]
        out: dict = {"pods": count, "failures": [repr(f) for f in failures],
                     "all_ready_s": round(max(r[3] for r in ok) - started, 3) if ok else None}
        if handler == "graft" and ok:
            address = str(self.layout.socket)
            vmm = [pss_mib(p.pid if (p := recorded_vmm(run_dir(
                self.config, SandboxRef(r[0], NAMESPACE, address)))) else None) for r in ok]
            shims = [shim_pid(address, r[0]) for r in ok]
            shim_pss = [pss_mib(pid) for pid in shims]
            shim_rss = [psutil.Process(pid).memory_info().rss / MIB for pid in shims if pid]
            vmm_pids = [p.pid for r in ok if (p := recorded_vmm(run_dir(
                self.config, SandboxRef(r[0], NAMESPACE, address))))]
            out["idle_cpu_cores_per_pod"] = round(
                _cpu_cores([*vmm_pids, *[p for p in shims if p]], 3.0) / len(ok), 3)
            out.update({
                "pss_per_pod_mib": round(statistics.mean(v + s for v, s in zip(vmm, shim_pss)), 1),
                "vmm_pss_mib_mean": round(statistics.mean(vmm), 1),
                "shim_pss_mib_mean": round(statistics.mean(shim_pss), 1),
                "shim_rss_mib_median": round(statistics.median(shim_rss), 1) if shim_rss else None,
            })
        for r in ok:
            self.cri.remove_pod(r[0])
        return out


def chart(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seq = report["sequential"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [3, 1]})
    labels = ["runc", "graft warm pool", "graft restore", "graft cold"]
    keys = ["runc", "graft_template", "graft_restore", "graft_cold"]
    names = [name for _, name in PHASES]
    color = {name: plt.cm.tab20(i % 20) for i, name in enumerate(names)}  # one per phase
    seen: set[str] = set()
    for i, key in enumerate(keys):
        phases = seq[key].get("phases_median_s")
        if not phases:
            left.barh(i, seq[key]["pod_start"]["median_s"], color="grey")
            continue
        offset = 0.0
        for name, value in phases.items():
            left.barh(i, value, left=offset, color=color[name],
                      label=None if name in seen else name)
            seen.add(name)
            offset += value
        left.text(offset + 0.02, i, f"{seq[key]['pod_start']['median_s']:.2f} s", va="center")
    runc = seq["runc"]["pod_start"]["median_s"]
    left.text(runc + 0.02, 0, f"{runc:.2f} s", va="center")
    left.set_yticks(range(len(labels)), labels)
    left.invert_yaxis()
    left.set_xlabel("seconds (median), RunPodSandbox → first log line")
    left.set_title(f"pod start through CRI ({report['accelerator']})")
    left.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), ncol=1)
    many = report["concurrent"]
    right.bar(["runc", "graft"], [many["runc"]["all_ready_s"] or 0,
                                  many["graft_template"]["all_ready_s"] or 0],
              color=["grey", "tab:blue"])
    right.set_title(f"{many['graft_template']['pods']} pods at once: all ready (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=5, help="sequential pods per way")
    parser.add_argument("--concurrent", type=int, default=10)
    parser.add_argument("--cache-size", type=int, default=2,
                        help="[factory] cache_size of the warm pool (0: restore each pod)")
    parser.add_argument("--png", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpb-", dir="/tmp") as tmp, Bench(Path(tmp)) as b:
        template_s = b.init_template()
        b.sequential("runc", "warm-runc", 1)  # warm-ups: images unpacked, page cache
        b.sequential("graft", "warm-graft", 2)  # ... and the fork server up
        report: dict = {
            "benchmark": "pods_cri",
            "accelerator": resolve_accelerator(Accelerator(
                b.config.get("hypervisor", "accelerator"))).value,
            "template_init_s": round(template_s, 2),
            "cache_size": args.cache_size,
            "sequential": {"runc": b.sequential("runc", "runc", args.pods),
                           "graft_restore": b.sequential("graft", "tpl", args.pods)},
        }
        if args.cache_size:
            b.graft_config(True, args.cache_size)
            b.sequential("graft", "warm-pool", 1)  # the fork server sees the pool's config
            report["sequential"]["graft_template"] = b.sequential(
                "graft", "pool", args.pods, pool=args.cache_size)
            b.wait_for_pool(args.cache_size)
        else:
            report["sequential"]["graft_template"] = report["sequential"]["graft_restore"]
        report["concurrent"] = {"runc": b.concurrent("runc", args.concurrent),
                                "graft_template": b.concurrent("graft", args.concurrent)}
        b.graft_config(False)
        report["sequential"]["graft_cold"] = b.sequential("graft", "cold", max(2, args.pods // 2))
        b.destroy_template()
    seq = report["sequential"]
    runc, tpl, restore, cold = (seq[k]["pod_start"]["median_s"] for k in (
        "runc", "graft_template", "graft_restore", "graft_cold"))
    report["ratios"] = {"template_vs_runc": round(tpl / runc, 2),
                        "cold_vs_template": round(cold / tpl, 2),
                        "restore_vs_runc": round(restore / runc, 2),
                        "cold_vs_restore": round(cold / restore, 2)}
    from deploy.pod_overhead import declared

    overhead = declared()
    report["declared_pod_overhead"] = {"memory_mib": round(overhead.memory_mib, 1),
                                       "cpu_cores": overhead.cpu_cores}
    report["targets"] = {"template_vs_runc_max": 4, "cold_vs_template_min": 10,
                         "concurrent_all_ready_max_s": 5}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if args.png:
        chart(report, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())

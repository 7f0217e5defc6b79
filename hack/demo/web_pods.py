"""The demo's pods: one busybox container each that writes a page about the machine it runs
on (CPUs, RAM and kernel it sees) and serves it with busybox httpd; the host fetches it from
the pod IP. Also what each pod costs in host memory (PSS)."""
from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import psutil

from bench.pods import Cri, pss_mib, shim_pid
from shim.config import GraftConfig
from shim.sandbox.state import SandboxRef, recorded_vmm, run_dir

from .stack import CRI_NAMESPACE

PORT = 8080
SERVING = "demo-serving"
FETCH_TIMEOUT_S = 20.0
RUNC_SHIM = "containerd-shim-runc-v2"
# A proxy from the environment must not see requests to pod IPs.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def web_command(name: str) -> list[str]:
    page = (f'echo "hello from pod {name}: $(nproc) CPU, '
            "$(awk '/MemTotal/ {printf \"%d\", $2 / 1024}' /proc/meminfo) MiB RAM, "
            'kernel $(uname -r)"')
    return ["sh", "-c", f"mkdir -p /www && {page} > /www/index.html && echo {SERVING} && "
            f"exec httpd -f -p {PORT} -h /www"]


@dataclass
class WebPod:
    name: str
    handler: str
    pod_id: str
    start_s: float  # RunPodSandbox until the container says it serves
    ip: str
    page: str = ""
    fetch_s: float = 0.0


def start_web_pod(cri: Cri, name: str, handler: str) -> WebPod:
    from cri_api.v1 import api_pb2 as cri_pb

    pod_id, _, t0, ready = cri.start_pod(name, handler, web_command(name), SERVING)
    status = cri.rt.PodSandboxStatus(cri_pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id),
                                     timeout=60).status
    return WebPod(name, handler, pod_id, ready - t0, status.network.ip)


def fetch_page(pod: WebPod, timeout_s: float = FETCH_TIMEOUT_S) -> None:
    """GET http://<pod IP>:8080/ from the host, retried until httpd listens."""
    url = f"http://{pod.ip}:{PORT}/"
    began = time.monotonic()
    deadline = began + timeout_s
    while True:
        try:
            with _OPENER.open(url, timeout=5) as reply:
                pod.page = reply.read().decode(errors="replace").strip()
            pod.fetch_s = time.monotonic() - began
            return
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"GET {url}: {exc}") from None
            time.sleep(0.1)


MemoryParts = list[tuple[str, float]]  # (what, PSS in MiB)


def graft_pod_memory(config: GraftConfig, address: str, pod_id: str) -> MemoryParts:
    """PSS of the pod's QEMU and of its shim daemon."""
    vmm = recorded_vmm(run_dir(config, SandboxRef(pod_id, CRI_NAMESPACE, address)))
    shim = shim_pid(address, pod_id)
    if vmm is None or shim is None:
        raise RuntimeError(f"pod {pod_id[:12]}: no {'QEMU' if vmm is None else 'shim'} process")
    return [("QEMU", pss_mib(vmm.pid)), ("shim", pss_mib(shim))]


def runc_pod_memory(address: str, pod_id: str) -> MemoryParts:
    """PSS of the pod's runc shim and of everything under it (pause, the container)."""
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or []
        joined = " ".join(argv) + " "
        if argv and argv[0].endswith(RUNC_SHIM) and f" -id {pod_id} " in joined \
                and f" -address {address} " in joined:
            below = proc.children(recursive=True)
            return [("runc shim", pss_mib(proc.pid)),
                    (f"{len(below)} pod processes", sum(pss_mib(p.pid) for p in below))]
    raise RuntimeError(f"pod {pod_id[:12]}: no {RUNC_SHIM} process")

#!/usr/bin/env python3
"""The CRI steps e2e/templates.bats needs beyond e2e/cri_client.py (which it uses for the rest).

    template_cri.py run-sized-pod NAME [--cpus N] [--memory-mib M] [--handler H]
        RunPodSandbox with linux.resources set, as kubelet >= 1.23 sends it for a pod whose
        containers have limits; containerd turns that into the sandbox container's
        io.kubernetes.cri.sandbox-cpu-quota/-period and -memory annotations. Prints the pod id.
    template_cri.py remove-all-pods
        Stop and remove every pod sandbox (teardown: shims and VMs go with them).

--address / --state as for cri_client.py (defaults $CONTAINERD_ADDRESS, $CRI_CLIENT_STATE).
"""
from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
from cri_api.v1 import api_pb2 as cri  # noqa: E402

from cri_client import RPC_TIMEOUT, Client, base_parser  # noqa: E402

CPU_PERIOD_US = 100_000  # kubelet's CFS period


class SizedPodClient(Client):
    def run_sized_pod(self, name: str, handler: str, cpus: int, memory_mib: int) -> str:
        uid = uuid.uuid4().hex[:12]
        resources = cri.LinuxContainerResources(
            cpu_period=CPU_PERIOD_US if cpus else 0, cpu_quota=cpus * CPU_PERIOD_US,
            memory_limit_in_bytes=memory_mib << 20)
        config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, namespace="default", uid=uid, attempt=0),
            hostname=name, log_directory=str(self.state / "logs" / uid),
            linux=cri.LinuxPodSandboxConfig(resources=resources))
        pod_id = self.rt.RunPodSandbox(
            cri.RunPodSandboxRequest(config=config, runtime_handler=handler),
            timeout=RPC_TIMEOUT).pod_sandbox_id
        # Same place cri_client.py keeps pod configs, so its create-start works on this pod.
        pod_file = self.state / "pods" / pod_id
        pod_file.parent.mkdir(parents=True, exist_ok=True)
        pod_file.write_bytes(config.SerializeToString())
        return pod_id

    def remove_all_pods(self) -> list[str]:
        pods = self.rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=RPC_TIMEOUT).items
        for pod in pods:
            self.stop_remove(pod.id)
        return [pod.id for pod in pods]


def _parser() -> argparse.ArgumentParser:
    p, sub = base_parser(__doc__.splitlines()[0])
    run = sub.add_parser("run-sized-pod")
    run.add_argument("name")
    run.add_argument("--handler", default="graft")
    run.add_argument("--cpus", type=int, default=0)
    run.add_argument("--memory-mib", type=int, default=0)
    sub.add_parser("remove-all-pods")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if not args.address:
        print("template_cri: no --address and no $CONTAINERD_ADDRESS", file=sys.stderr)
        return 2
    client = SizedPodClient(args.address, Path(args.state or f"{args.address}.cri-client"))
    try:
        if args.command == "run-sized-pod":
            print(client.run_sized_pod(args.name, args.handler, args.cpus, args.memory_mib))
        else:
            for pod_id in client.remove_all_pods():
                print(pod_id)
        return 0
    except grpc.RpcError as exc:
        print(f"template_cri {args.command}: {exc.code().name}: {exc.details()}",
              file=sys.stderr)
        return 1
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

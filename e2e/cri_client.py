#!/usr/bin/env python3
"""A minimal CRI client for the e2e suite (what kubelet would call), one RPC group per command.

    cri_client.py [--address SOCK] [--state DIR] COMMAND ...

    run-pod NAME [--handler H]          RunPodSandbox; prints the pod id
    pod-ip POD                          the pod IP CNI assigned (PodSandboxStatus)
    pod-state POD                       SANDBOX_READY / SANDBOX_NOTREADY
    create-start POD NAME -- CMD...     CreateContainer + StartContainer; prints the container id
    state CID                           CONTAINER_RUNNING / CONTAINER_EXITED / ...
    logs CID [--wait-for TEXT]          the container's CRI log file (waits until TEXT appears)
    exec-sync CID -- CMD...             ExecSync: its stdout/stderr are ours, so is its exit code
    stats CID                           ContainerStats as JSON
    stop-remove POD                     StopPodSandbox + RemovePodSandbox

The address defaults to $CONTAINERD_ADDRESS. CreateContainer needs the pod's config again:
run-pod keeps it in --state (default $CRI_CLIENT_STATE or a directory next to the socket).
Client: PyPI container-runtime-interface-api 2.0.1 (cri_api.v1), installed --no-deps.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc

IMAGE = os.environ.get("GRAFT_BUSYBOX_IMAGE", "graft.local/busybox:latest")
RPC_TIMEOUT = 300.0  # a pod start boots a VM (TCG: seconds, on a loaded machine more)


class Client:
    def __init__(self, address: str, state: Path) -> None:
        self._channel = grpc.insecure_channel(f"unix://{address}")
        self.rt = api_pb2_grpc.RuntimeServiceStub(self._channel)
        self.state = state

    def close(self) -> None:
        self._channel.close()

    # -- pods -------------------------------------------------------------------------------

    def _pod_file(self, pod_id: str) -> Path:
        return self.state / "pods" / pod_id

    def run_pod(self, name: str, handler: str, annotations: dict[str, str] | None = None) -> str:
        uid = uuid.uuid4().hex[:12]
        config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, namespace="default", uid=uid, attempt=0),
            hostname=name, log_directory=str(self.state / "logs" / uid),
            annotations=annotations or {}, linux=cri.LinuxPodSandboxConfig())
        pod_id = self.rt.RunPodSandbox(
            cri.RunPodSandboxRequest(config=config, runtime_handler=handler),
            timeout=RPC_TIMEOUT).pod_sandbox_id
        self._pod_file(pod_id).parent.mkdir(parents=True, exist_ok=True)
        self._pod_file(pod_id).write_bytes(config.SerializeToString())
        return pod_id

    def pod_config(self, pod_id: str) -> cri.PodSandboxConfig:
        try:
            return cri.PodSandboxConfig.FromString(self._pod_file(pod_id).read_bytes())
        except FileNotFoundError:
            raise SystemExit(f"pod {pod_id} was not started by this client (state {self.state})")

    def pod_status(self, pod_id: str) -> cri.PodSandboxStatus:
        return self.rt.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id),
                                        timeout=RPC_TIMEOUT).status

    def stop_remove(self, pod_id: str) -> None:
        self.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id),
                               timeout=RPC_TIMEOUT)
        self.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                 timeout=RPC_TIMEOUT)
        self._pod_file(pod_id).unlink(missing_ok=True)

    # -- containers ---------------------------------------------------------------------------

    def create_start(self, pod_id: str, name: str, command: list[str],
                     annotations: dict[str, str] | None = None) -> str:
        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=name, attempt=0),
            image=cri.ImageSpec(image=IMAGE), command=command, annotations=annotations or {},
            log_path=f"{name}.log", linux=cri.LinuxContainerConfig())
        cid = self.rt.CreateContainer(cri.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=self.pod_config(pod_id)),
            timeout=RPC_TIMEOUT).container_id
        self.rt.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=RPC_TIMEOUT)
        return cid

    def container_status(self, cid: str) -> cri.ContainerStatus:
        return self.rt.ContainerStatus(cri.ContainerStatusRequest(container_id=cid),
                                       timeout=RPC_TIMEOUT).status

    def logs(self, cid: str, wait_for: str, timeout: float) -> str:
        path = Path(self.container_status(cid).log_path)
        deadline = time.monotonic() + timeout
        while True:
            text = path.read_text() if path.exists() else ""
            if not wait_for or wait_for in text or time.monotonic() > deadline:
                return text
            time.sleep(0.2)

    def exec_sync(self, cid: str, command: list[str], timeout: int) -> cri.ExecSyncResponse:
        return self.rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=command,
                                                    timeout=timeout), timeout=RPC_TIMEOUT)

    def stats(self, cid: str) -> dict:
        s = self.rt.ContainerStats(cri.ContainerStatsRequest(container_id=cid),
                                   timeout=RPC_TIMEOUT).stats
        return {
            "id": s.attributes.id,
            "cpu_usage_core_nano_seconds": s.cpu.usage_core_nano_seconds.value
            if s.HasField("cpu") else None,
            "memory_working_set_bytes": s.memory.working_set_bytes.value
            if s.HasField("memory") else None,
        }


def base_parser(description: str) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """Options every CRI client script takes; subcommands are added by the caller."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--address", default=os.environ.get("CONTAINERD_ADDRESS", ""))
    p.add_argument("--state", default=os.environ.get("CRI_CLIENT_STATE", ""))
    return p, p.add_subparsers(dest="command", required=True)


def _parser() -> argparse.ArgumentParser:
    p, sub = base_parser(__doc__.splitlines()[0])
    run = sub.add_parser("run-pod")
    run.add_argument("name")
    run.add_argument("--handler", default="graft")
    for name in ("pod-ip", "pod-state", "stop-remove"):
        sub.add_parser(name).add_argument("pod")
    cs = sub.add_parser("create-start")
    cs.add_argument("pod")
    cs.add_argument("name")
    cs.add_argument("cmd", nargs="+")
    for name in ("state", "stats"):
        sub.add_parser(name).add_argument("cid")
    logs = sub.add_parser("logs")
    logs.add_argument("cid")
    logs.add_argument("--wait-for", default="")
    logs.add_argument("--timeout", type=float, default=30.0)
    ex = sub.add_parser("exec-sync")
    ex.add_argument("cid")
    ex.add_argument("--timeout", type=int, default=120)
    ex.add_argument("cmd", nargs="+")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if not args.address:
        print("cri_client: no --address and no $CONTAINERD_ADDRESS", file=sys.stderr)
        return 2
    state = Path(args.state or f"{args.address}.cri-client")
    client = Client(args.address, state)
    try:
        return _run(client, args)
    except grpc.RpcError as exc:
        print(f"cri_client {args.command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        client.close()


def _run(client: Client, args: argparse.Namespace) -> int:
    out = sys.stdout
    if args.command == "run-pod":
        print(client.run_pod(args.name, args.handler), file=out)
    elif args.command == "pod-ip":
        print(client.pod_status(args.pod).network.ip, file=out)
    elif args.command == "pod-state":
        print(cri.PodSandboxState.Name(client.pod_status(args.pod).state), file=out)
    elif args.command == "stop-remove":
        client.stop_remove(args.pod)
    elif args.command == "create-start":
        print(client.create_start(args.pod, args.name, args.cmd), file=out)
    elif args.command == "state":
        print(cri.ContainerState.Name(client.container_status(args.cid).state), file=out)
    elif args.command == "logs":
        out.write(client.logs(args.cid, args.wait_for, args.timeout))
    elif args.command == "exec-sync":
        r = client.exec_sync(args.cid, args.cmd, args.timeout)
        sys.stdout.buffer.write(r.stdout)
        sys.stderr.buffer.write(r.stderr)
        return r.exit_code
    elif args.command == "stats":
        print(json.dumps(client.stats(args.cid)), file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

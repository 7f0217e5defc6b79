"""A pod behind a real shim daemon, driven over the shim's own ttrpc socket the way containerd
does (for tests/integration/test_shim_bad_input.py): `ctr run -d` starts it, the bundle's
`address` file names the socket, shim.ttrpc.Client talks to it."""
from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import any_pb2, empty_pb2

from shim.api.containerd import TASK_SERVICE, mount_pb2, shim_pb2 as pb
from shim.oci import default_process, default_spec
from shim.ttrpc import Client, Code, TtrpcError

SERVICE = TASK_SERVICE.full_name
GRAFT = "io.containerd.graft.v2"
IMAGE = "graft.local/busybox:latest"
TASK_DIR = "io.containerd.runtime.v2.task/default"
serial = itertools.count(1)


@dataclass
class Shim:
    """One shim daemon (graft or runc) serving a running pod container `pod`."""

    runtime: str
    pod: str
    client: Client
    bundles: Path
    rootfs: Path

    async def call(self, method: str, request, response_type, timeout: float = 120.0):
        return await self.client.call(SERVICE, method, request, response_type, timeout=timeout,
                                      metadata={"containerd-namespace-ttrpc": "default"})

    async def code_of(self, method: str, request, response_type, timeout: float = 120.0) -> Code:
        try:
            await self.call(method, request, response_type, timeout)
        except TtrpcError as exc:
            return exc.code
        return Code.OK

    def bundle(self, name: str, spec: dict) -> Path:
        path = self.bundles / name
        (path / "rootfs").mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(spec))
        return path

    def app_spec(self, args: list[str]) -> dict:
        """A container of the pod (for graft: CRI annotations naming the pod's sandbox)."""
        spec = default_spec(args)
        spec["annotations"] = {"io.kubernetes.cri.container-type": "container",
                               "io.kubernetes.cri.sandbox-id": self.pod}
        return spec

    def create_request(self, cid: str, spec: dict, **stdio) -> pb.CreateTaskRequest:
        bundle = self.bundle(f"b{next(serial)}", spec)
        return pb.CreateTaskRequest(id=cid, bundle=str(bundle), rootfs=[
            mount_pb2.Mount(
                type="bind", source=str(self.rootfs), options=["rbind", "ro"])], **stdio)


def exec_spec(args: list[str], terminal: bool = False) -> any_pb2.Any:
    return any_pb2.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
                       value=json.dumps(default_process(args, terminal)).encode())


async def run_exec(shim: Shim, args: list[str], container: str | None = None,
                   exec_id: str | None = None) -> int:
    """Exec → Start → Wait → Delete; the exit status."""
    cid = container or shim.pod
    eid = exec_id or f"probe{next(serial)}"
    await shim.call("Exec", pb.ExecProcessRequest(id=cid, exec_id=eid, spec=exec_spec(args)),
                    empty_pb2.Empty)
    await shim.call("Start", pb.StartRequest(id=cid, exec_id=eid), pb.StartResponse)
    waited = await shim.call("Wait", pb.WaitRequest(id=cid, exec_id=eid), pb.WaitResponse)
    await shim.call("Delete", pb.DeleteRequest(id=cid, exec_id=eid), pb.DeleteResponse)
    return waited.exit_status


async def assert_pod_works(shim: Shim) -> None:
    assert await run_exec(shim, ["sh", "-c", "exit 3"]) == 3
    state = await shim.call("State", pb.StateRequest(id=shim.pod), pb.StateResponse)
    assert state.status == 2, state  # RUNNING


def _shim_address(containerd, cid: str) -> str:
    address = (containerd.layout.base / "state" / TASK_DIR / cid / "address").read_text()
    return address.strip().removeprefix("unix://")


def use_private_state(containerd, state_dir: str) -> None:
    text = containerd.layout.graft_config.read_text()
    containerd.layout.graft_config.write_text(
        text.replace("[runtime]\n", f'[runtime]\nstate_dir = "{state_dir}"\n', 1))


async def start_pod(containerd, runtime: str, cid: str, tmp: Path, rootfs: Path,
                    runtime_config: Path | None = None) -> Shim:
    """*runtime_config*: the graft config the shim reads (ctr passes no ConfigPath otherwise:
    the shim reads $GRAFT_CONFIG or /etc/graft/configuration.toml)."""
    config = ["--runtime-config-path", str(runtime_config)] if runtime_config else []
    args = ["run", "-d"] + (["--runtime", runtime] if runtime == GRAFT else []) + config + [
        IMAGE, cid, "sleep", "100000"]
    await asyncio.to_thread(containerd.ctr, *args, timeout=300)
    client = await Client.connect_unix(_shim_address(containerd, cid))
    return Shim(runtime, cid, client, tmp / cid, rootfs)


async def stop_pod(containerd, shim: Shim) -> None:
    await shim.client.close()
    await asyncio.to_thread(containerd.ctr, "task", "rm", "-f", shim.pod, check=False)
    await asyncio.to_thread(containerd.ctr, "container", "rm", shim.pod, check=False)

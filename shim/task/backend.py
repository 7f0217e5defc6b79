"""What the task layer needs from the pod's VM: one small interface (faked in unit tests)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from google.protobuf.message import Message

from shim.vmconfig.pod_resources import PodResources

from .bundle import ContainerKind
from .process import ExitInfo
from .stdio import ProcessStreams, StdioSpec


@dataclass(frozen=True)
class ContainerConfig:
    id: str
    bundle: Path
    spec: dict
    rootfs: Path          # host path, already mounted
    stdio: StdioSpec
    kind: ContainerKind
    sandbox_id: str


@dataclass(frozen=True)
class PodVm:
    """What the pod VM is booted with, whoever asks for it (the CRI pause container's task, a
    pod of one, or the Sandbox API)."""
    sandbox_id: str
    netns: Path | None     # the pod network namespace the VMM runs in (its CNI interface
    hostname: str          # is joined to the VM), None: loopback only
    resources: PodResources


class PodBackend(Protocol):
    # -- the pod VM itself (the Sandbox API; the pause container's task uses the same) ---------

    async def launch_pod(self, pod: PodVm) -> int:
        """Boot the pod VM; it lives until stop_pod, whatever its containers do. → VMM pid."""

    async def stop_pod(self) -> None:
        """Tear the pod VM down (idempotent); returns once it is gone."""

    async def wait_pod(self) -> ExitInfo:
        """Return when the pod VM has exited."""

    async def pod_metrics(self) -> Message:
        """cgroups v2 `io.containerd.cgroups.v2.Metrics` of the whole VM."""

    def pod_details(self) -> dict[str, str]:
        """How the running VM was booted, for humans (e.g. boot path, size)."""

    # -- containers ---------------------------------------------------------------------------

    async def create_container(self, config: ContainerConfig) -> int:
        """Create (not start) the container; boots the VM for a POD_VM/SINGLE kind. → pid."""

    async def start_container(self, container_id: str) -> None: ...

    async def exec_process(self, container_id: str, exec_id: str, process_json: bytes,
                           stdio: StdioSpec) -> int: ...

    async def delete_process(self, container_id: str, exec_id: str) -> None:
        """Free an exited exec's resources in the guest (its Delete)."""

    async def wait_process(self, container_id: str, exec_id: str) -> ExitInfo:
        """Return when the process has really exited."""

    async def signal_process(self, container_id: str, exec_id: str, signal: int,
                             all: bool) -> None: ...

    async def remove_container(self, container_id: str) -> None:
        """Remove what the container left; the last container tears the VM down."""

    async def list_pids(self, container_id: str) -> list[int]: ...
    async def pause(self, container_id: str) -> None: ...
    async def resume(self, container_id: str) -> None: ...
    async def update(self, container_id: str, resources_json: bytes) -> None: ...

    async def stats(self, container_id: str) -> Message:
        """cgroups v2 `io.containerd.cgroups.v2.Metrics`."""

    async def resize_pty(self, container_id: str, exec_id: str, rows: int, cols: int) -> None: ...

    def streams(self, container_id: str, exec_id: str) -> ProcessStreams: ...

    def on_oom(self, handler: "Callable[[str], None]") -> None:
        """Call *handler(container_id)* whenever a container of the pod hits its memory limit."""

    async def close(self) -> None:
        """Tear down whatever is left (daemon exit)."""

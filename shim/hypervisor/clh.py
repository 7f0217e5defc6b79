"""Cloud Hypervisor driver over its REST API (see clh_api, clh_config).

Differences from QEMU that callers see:
- the agent channel is hybrid vsock: VmPaths.agent_socket is CLH's vsock
  unix socket and open_agent_stream() connects to guest port 1024 (also on
  the kernel command line as graft.agent_vsock_port);
- the share is virtio-fs, only when config.virtiofs_socket is set (no 9p);
- KVM only (CLH has no TCG), no vmgenid, no PCIe root ports needed.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .accel import AcceleratorProbe, probe_accelerator, resolve_accelerator
from .base import Accelerator, HypervisorConfig, HypervisorError, NetworkDevice, VmPaths
from .clh_api import ClhApi
from .clh_config import (AGENT_VSOCK_PORT, check_snapshot_dir, memory_bytes,
                         snapshot_config_for_restore, vm_config)
from .hybrid_vsock import connect_hybrid_vsock
from .process import race_exit
from .supervised import QUIT_TIMEOUT, SupervisedHypervisor
from .unix_sockets import MAX_SOCKET_PATH, remove_stale_socket

DEFAULT_CLH_BINARY = "cloud-hypervisor"
RESTORE_DIR = "restore"  # under run_dir: the snapshot rewritten for this VM
API_POLL_INTERVAL = 0.01
API_TIMEOUT = 10.0
SNAPSHOT_TIMEOUT = 60.0

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


class CloudHypervisor(SupervisedHypervisor):
    PROCESS_NAME = "cloud-hypervisor"
    PROCESS_LOG = "cloud-hypervisor.log"

    def __init__(self, vm_id: str, config: HypervisorConfig, paths: VmPaths,
                 netns: Path | None = None, *,
                 probe: Callable[[], AcceleratorProbe] = probe_accelerator) -> None:
        super().__init__(vm_id, config, paths, netns)
        self._probe = probe
        self._api: ClhApi | None = None
        self._version: str | None = None

    @property
    def restore_dir(self) -> Path:
        return self.paths.run_dir / RESTORE_DIR

    # -- lifecycle -----------------------------------------------------------
    async def start_vm(self, timeout: float = 30.0) -> None:
        payload = vm_config(self.config, self.paths)
        self._check_boot_files()
        async with self._lifecycle:
            try:
                self._prepare_memory_file()
                await self._launch(timeout)
                await self._api_call("vm.create", payload)
                await self._api_call("vm.boot")
            except BaseException:
                await self._teardown(graceful=False)
                raise

    async def restore_vm(self, directory: Path, timeout: float = 30.0) -> None:
        directory = Path(directory).resolve()
        check_snapshot_dir(directory)
        try:
            saved = json.loads((directory / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise HypervisorError(f"VM {self.vm_id}: unreadable {directory / 'config.json'}: {exc}") from exc
        restored = snapshot_config_for_restore(saved, self.config, self.paths)
        async with self._lifecycle:
            try:
                self._check_memory_file()
                await self._launch(timeout)
                self._write_restore_dir(directory, restored)
                await self._api_call("vm.restore", {"source_url": f"file://{self.restore_dir}",
                                                    "prefault": False})
                state = await self._vm_state()
                if state != "Paused":
                    raise HypervisorError(self._describe(f"restored VM is {state!r}, expected Paused"))
            except BaseException:
                await self._teardown(graceful=False)
                raise

    async def pause_vm(self) -> None:
        await self._api_call("vm.pause")

    async def resume_vm(self) -> None:
        await self._api_call("vm.resume")

    async def save_vm(self, directory: Path) -> None:
        """vm.snapshot into *directory* (config.json, state.json,
        memory-ranges). RAM in a shared file-backed zone is not copied."""
        directory = Path(directory).resolve()
        async with self._lifecycle:
            state = await self._vm_state()
            if state != "Paused":
                raise HypervisorError(f"VM {self.vm_id}: save_vm needs a paused VM (it is {state!r})")
            directory.mkdir(parents=True, exist_ok=True)
            await self._api_call("vm.snapshot", {"destination_url": f"file://{directory}"},
                                 timeout=SNAPSHOT_TIMEOUT)
            check_snapshot_dir(directory)

    async def version(self) -> str:
        if self._version is None:
            ping = await self._api_call("vmm.ping", method="GET")
            self._version = f"Cloud Hypervisor {ping['version']}"
        return self._version

    async def open_agent_stream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The agent over hybrid vsock (guest port AGENT_VSOCK_PORT)."""
        return await connect_hybrid_vsock(self.paths.agent_socket, AGENT_VSOCK_PORT)

    async def vm_info(self) -> dict[str, Any]:
        """CLH's vm.info: {config, state, ...}."""
        return dict(await self._api_call("vm.info", method="GET"))

    # -- devices -------------------------------------------------------------
    async def add_network_device(self, device: NetworkDevice) -> None:
        if not _ID_RE.match(device.id):
            raise HypervisorError(f"network device id {device.id!r}: use letters, digits, '_', '.', '-'")
        if not _MAC_RE.match(device.mac):
            raise HypervisorError(f"network device {device.id}: bad MAC {device.mac!r}")
        body: dict[str, Any] = {"id": device.id, "mac": device.mac.lower()}
        if device.tap_fds:
            # CLH takes the fds from the request's SCM_RIGHTS, two queues per fd
            body["num_queues"] = 2 * len(device.tap_fds)
        elif device.tap_name:
            body["tap"] = device.tap_name
        else:
            raise HypervisorError(f"network device {device.id}: needs a tap name or tap fds")
        async with self._devices:
            await self._api_call("vm.add-net", body, fds=device.tap_fds)

    async def add_vcpus(self, count: int) -> None:
        if count < 1:
            raise HypervisorError(f"add_vcpus: count must be >= 1, got {count}")
        async with self._devices:
            info = await self.vm_info()
            current = int(info["config"]["cpus"]["boot_vcpus"])
            if current + count > self.config.max_vcpus:
                raise HypervisorError(f"VM {self.vm_id}: cannot add {count} vCPUs to {current} "
                                      f"(max_vcpus={self.config.max_vcpus})")
            await self._api_call("vm.resize", {"desired_vcpus": current + count})

    # -- internals -----------------------------------------------------------
    def _binary(self) -> str:
        name = str(self.config.binary or DEFAULT_CLH_BINARY)
        found = shutil.which(name)
        if found is None:
            raise HypervisorError(f"VM {self.vm_id}: Cloud Hypervisor binary {name!r} not found "
                                  "(install it or set HypervisorConfig.binary)")
        return found

    async def _launch(self, timeout: float) -> None:
        self._claim_launch()
        requested = self.config.accelerator
        accelerator = resolve_accelerator(
            requested, self._probe() if requested is Accelerator.AUTO else None)
        if accelerator is not Accelerator.KVM:
            raise HypervisorError(f"VM {self.vm_id}: Cloud Hypervisor needs KVM "
                                  f"(accelerator resolves to {accelerator.value})")
        binary = self._binary()
        self.paths.run_dir.mkdir(parents=True, exist_ok=True)
        for sock in (self.paths.control_socket, self.paths.agent_socket):
            if len(os.fsencode(sock)) > MAX_SOCKET_PATH:
                raise HypervisorError(f"VM {self.vm_id}: socket path too long: {sock}")
            remove_stale_socket(sock)
        # CLH creates both sockets itself
        self._track(self.paths.control_socket, self.paths.agent_socket)
        process = await self._spawn([binary, "--api-socket", f"path={self.paths.control_socket}"])
        self._api = ClhApi(self.paths.control_socket, timeout=API_TIMEOUT)
        await race_exit(self._wait_api(self._api), process, timeout=timeout,
                        what="API socket startup", describe=self._describe)

    @staticmethod
    async def _wait_api(api: ClhApi) -> None:
        while True:
            try:
                await api.get("vmm.ping")
                return
            except OSError:  # socket not there yet / not accepting yet
                await asyncio.sleep(API_POLL_INTERVAL)

    async def _api_call(self, endpoint: str, body: dict[str, Any] | None = None, *,
                        method: str = "PUT", fds: tuple[int, ...] = (),
                        timeout: float = API_TIMEOUT) -> Any:
        if self._api is None:
            raise HypervisorError(f"VM {self.vm_id}: not running (not started, or stopped)")
        process = self._check_alive()
        call: Awaitable[Any]
        if method == "GET":
            call = self._api.get(endpoint)
        else:
            call = self._api.put(endpoint, body, fds)
        try:
            return await race_exit(call, process, timeout=timeout, what=f"CLH {endpoint}",
                                   describe=self._describe)
        except OSError as exc:
            raise HypervisorError(self._describe(f"CLH {endpoint}: {exc}")) from exc

    async def _vm_state(self) -> str:
        return str((await self.vm_info())["state"])

    def _prepare_memory_file(self) -> None:
        """CLH maps a zone file as is: pre-size a template's file; a clone's
        (private) file must already hold the template's RAM."""
        fbm = self.config.file_backed_memory
        if fbm is None:
            return
        if fbm.shared:
            try:
                with open(fbm.path, "ab") as f:
                    os.ftruncate(f.fileno(), memory_bytes(self.config))
            except OSError as exc:
                raise HypervisorError(f"VM {self.vm_id}: cannot size memory file {fbm.path}: {exc}") from exc
        else:
            self._check_memory_file()

    def _check_memory_file(self) -> None:
        fbm = self.config.file_backed_memory
        if fbm is None:
            return
        try:
            size = Path(fbm.path).stat().st_size
        except OSError as exc:
            raise HypervisorError(f"VM {self.vm_id}: memory file {fbm.path}: {exc.strerror}") from exc
        if size != memory_bytes(self.config):
            raise HypervisorError(f"VM {self.vm_id}: memory file {fbm.path} has {size} bytes, "
                                  f"expected {memory_bytes(self.config)}")

    def _write_restore_dir(self, source: Path, config: dict[str, Any]) -> None:
        """config.json rewritten for this VM + the saved state; memory-ranges
        is linked, not copied (it can be large without file-backed memory)."""
        self.paths.run_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.restore_dir, ignore_errors=True)
        self.restore_dir.mkdir()
        self._track(self.restore_dir)
        (self.restore_dir / "config.json").write_text(json.dumps(config, indent=2))
        shutil.copyfile(source / "state.json", self.restore_dir / "state.json")
        (self.restore_dir / "memory-ranges").symlink_to((source / "memory-ranges").resolve())

    async def _teardown(self, *, graceful: bool) -> None:
        """vmm.shutdown, then SIGKILL; reap; remove the files of this VM."""
        self._expect_exit()
        proc, api = self._process, self._api
        self._api = None
        if proc is not None and not proc.exited.is_set() and graceful and api is not None:
            try:
                await race_exit(api.put("vmm.shutdown"), proc, timeout=QUIT_TIMEOUT,
                                what="CLH vmm.shutdown", describe=self._describe)
            except (HypervisorError, OSError):
                pass  # killed below
        if proc is not None:
            await proc.stop(grace=QUIT_TIMEOUT if graceful else 0)
            await proc.close()
        self._remove_created()

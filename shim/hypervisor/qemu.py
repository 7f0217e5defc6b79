"""QEMU driver: q35 + PVH kernel, QMP through qemu.qmp, migration to a file
for save/restore (guest RAM stays in the file-backed memory when
x-ignore-shared is on)."""
from __future__ import annotations

import asyncio
import logging
import re
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .accel import AcceleratorProbe, probe_accelerator, resolve_accelerator
from .base import Accelerator, HypervisorConfig, HypervisorError, NetworkDevice, VmPaths
from .bounded_log import console_log
from .qemu_cmdline import DEFAULT_QEMU_BINARY, QBOOT_ROM, LaunchSpec, build_argv, root_port_ids
from .qmp_monitor import QmpMonitor
from .supervised import QUIT_TIMEOUT, SupervisedHypervisor
from .unix_sockets import bind_listener

log = logging.getLogger(__name__)

STATE_FILE = "state"  # inside a save_vm directory
SAVE_TIMEOUT = 60.0
MAX_BANDWIDTH = 10 * 1024**3  # bytes/s: do not throttle a local save
MIB = 1 << 20
# ids of hot-added memory: backend object hmem<N>, pc-dimm device dimm<N>
HOTPLUG_BACKEND_PREFIX = "hmem"
HOTPLUG_DIMM_PREFIX = "dimm"

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_IFNAMSIZ = 15


class QemuHypervisor(SupervisedHypervisor):
    """One QEMU VM. An object runs at most one VMM process: start_vm() or
    restore_vm(), then stop_vm()."""

    PROCESS_NAME = "qemu"
    PROCESS_LOG = "qemu.log"
    supports_boot_nic = True

    def __init__(self, vm_id: str, config: HypervisorConfig, paths: VmPaths,
                 netns: Path | None = None, *,
                 probe: Callable[[], AcceleratorProbe] = probe_accelerator,
                 qboot: Path | None = QBOOT_ROM) -> None:
        super().__init__(vm_id, config, paths, netns)
        self._probe = probe
        self._qboot = qboot
        self._qmp: QmpMonitor | None = None
        self._version: str | None = None

    # -- lifecycle -----------------------------------------------------------
    async def start_vm(self, timeout: float = 30.0) -> None:
        async with self._lifecycle:
            try:
                qmp = await self._launch(incoming=False, timeout=timeout)
                state = await qmp.run_state()
                if state != "running":
                    raise HypervisorError(self._describe(f"VM is {state!r} after start"))
            except BaseException:
                await self._teardown(graceful=False)
                raise

    async def restore_vm(self, directory: Path, timeout: float = 30.0) -> None:
        state_file = Path(directory).resolve() / STATE_FILE
        if not state_file.is_file():
            raise HypervisorError(f"VM {self.vm_id}: no saved state at {state_file}")
        deadline = time.monotonic() + timeout
        async with self._lifecycle:
            try:
                qmp = await self._launch(incoming=True, timeout=timeout)
                await self._set_migration_capabilities(qmp)
                await qmp.execute("migrate-incoming",
                                  {"uri": "exec:cat " + shlex.quote(str(state_file))})
                await qmp.wait_migration(max(0.1, deadline - time.monotonic()),
                                         f"restore from {state_file}")
                state = await qmp.run_state()
                if state != "paused":
                    raise HypervisorError(self._describe(f"restored VM is {state!r}, expected paused"))
            except BaseException:
                await self._teardown(graceful=False)
                raise

    async def pause_vm(self) -> None:
        await self._running_qmp().execute("stop")

    async def resume_vm(self) -> None:
        await self._running_qmp().execute("cont")

    async def save_vm(self, directory: Path) -> None:
        """Migrate the paused VM's device state to <directory>/state. With
        shared file-backed memory the guest RAM is not copied (x-ignore-shared).
        Afterwards QEMU is in 'postmigrate' state; the caller normally stops it."""
        directory = Path(directory).resolve()
        async with self._lifecycle:
            qmp = self._running_qmp()
            state = await qmp.run_state()
            if state != "paused":
                raise HypervisorError(f"VM {self.vm_id}: save_vm needs a paused VM (it is {state!r})")
            directory.mkdir(parents=True, exist_ok=True)
            state_file = directory / STATE_FILE
            state_file.unlink(missing_ok=True)
            try:
                await self._set_migration_capabilities(qmp)
                await qmp.execute("migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH})
                await qmp.execute("migrate", {"uri": "exec:cat > " + shlex.quote(str(state_file))})
                await qmp.wait_migration(SAVE_TIMEOUT, f"save to {state_file}")
                if not state_file.is_file() or state_file.stat().st_size == 0:
                    raise HypervisorError(f"VM {self.vm_id}: migration completed but {state_file} is empty")
            except BaseException:
                state_file.unlink(missing_ok=True)
                raise

    async def private_readonly_memory(self) -> bool:
        """QEMU 8.2 split `rom` from `readonly` on memory-backend-file; before, readonly=on
        made guest RAM read-only (measured on 7.2: the restored guest hangs)."""
        binary = str(self.config.binary or DEFAULT_QEMU_BINARY)
        proc = await asyncio.create_subprocess_exec(
            binary, "-object", "memory-backend-file,help", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return proc.returncode == 0 and re.search(rb"^\s*rom=", out, re.MULTILINE) is not None

    async def version(self) -> str:
        if self._version is None:
            info = await self._running_qmp().execute("query-version")
            q = info["qemu"]
            package = str(info.get("package", "")).strip()
            self._version = f"QEMU {q['major']}.{q['minor']}.{q['micro']}" + (
                f" ({package})" if package else "")
        return self._version

    # -- devices -------------------------------------------------------------
    async def add_network_device(self, device: NetworkDevice) -> None:
        _validate_network_device(device)
        async with self._devices:
            qmp = self._running_qmp()
            port = await self._free_root_port(qmp)
            netdev_id, nic_id = f"netdev-{device.id}", f"nic-{device.id}"
            netdev: dict[str, Any] = {"type": "tap", "id": netdev_id}
            fd_names: list[str] = []
            if device.tap_fds:
                for i, fd in enumerate(device.tap_fds):
                    name = f"{netdev_id}-fd{i}"
                    qmp.send_fd(fd)
                    await qmp.execute("getfd", {"fdname": name})
                    fd_names.append(name)
                if len(fd_names) == 1:
                    netdev["fd"] = fd_names[0]
                else:
                    netdev["fds"] = ":".join(fd_names)
                netdev["vhost"] = False
            else:
                netdev.update(ifname=device.tap_name, script="no", downscript="no")
            try:
                await qmp.execute("netdev_add", netdev)
            except HypervisorError:
                for name in fd_names:  # netdev_add consumes them only on success
                    await _ignore_errors(qmp.execute("closefd", {"fdname": name}))
                raise
            nic: dict[str, Any] = {"driver": "virtio-net-pci", "id": nic_id, "netdev": netdev_id,
                                   "bus": port, "mac": device.mac.lower(), "romfile": ""}
            if len(device.tap_fds) > 1:
                nic.update(mq=True, vectors=2 * len(device.tap_fds) + 2)
            try:
                await qmp.execute("device_add", nic)
            except HypervisorError:
                await _ignore_errors(qmp.execute("netdev_del", {"id": netdev_id}))
                raise

    async def add_vcpus(self, count: int) -> None:
        if count < 1:
            raise HypervisorError(f"add_vcpus: count must be >= 1, got {count}")
        async with self._devices:
            qmp = self._running_qmp()
            slots = await qmp.execute("query-hotpluggable-cpus")
            free = [s for s in slots if "qom-path" not in s]
            if len(free) < count:
                raise HypervisorError(f"VM {self.vm_id}: cannot add {count} vCPUs, {len(free)} free "
                                      f"(max_vcpus={self.config.max_vcpus})")
            free.sort(key=lambda s: tuple(s["props"].get(k, 0) for k in
                                          ("node-id", "socket-id", "die-id", "core-id", "thread-id")))
            for slot in free[:count]:
                props = slot["props"]
                cpu_id = "cpu-" + "-".join(f"{v}" for _, v in sorted(props.items()))
                await qmp.execute("device_add", {"driver": slot["type"], "id": cpu_id, **props})

    supports_memory_hotplug = True

    async def add_memory(self, mib: int) -> int:
        """One pc-dimm of *mib* MiB backed by private anonymous RAM (also in
        clones: hot-added memory never comes from the template)."""
        if mib < 1:
            raise HypervisorError(f"add_memory: size must be >= 1 MiB, got {mib}")
        cfg = self.config
        if cfg.memory_slots == 0:
            raise HypervisorError(f"VM {self.vm_id}: no memory slots, cannot hot-add memory "
                                  "(memory_slots=0)")
        async with self._devices:
            qmp = self._running_qmp()
            dimms = [d.get("data") or {} for d in await qmp.execute("query-memory-devices")
                     if d.get("type") == "dimm"]
            plugged_mib = sum(int(d.get("size", 0)) for d in dimms) // MIB
            current = cfg.memory_mib + plugged_mib
            if len(dimms) >= cfg.memory_slots:
                raise HypervisorError(f"VM {self.vm_id}: cannot add {mib} MiB: all "
                                      f"{cfg.memory_slots} memory slots are in use")
            if current + mib > cfg.max_memory_mib:
                raise HypervisorError(f"VM {self.vm_id}: cannot add {mib} MiB to {current} MiB "
                                      f"(max_memory_mib={cfg.max_memory_mib})")
            used = {str(d.get("id")) for d in dimms}
            n = next(i for i in range(len(used) + 1)
                     if f"{HOTPLUG_DIMM_PREFIX}{i}" not in used)
            backend_id, dimm_id = f"{HOTPLUG_BACKEND_PREFIX}{n}", f"{HOTPLUG_DIMM_PREFIX}{n}"
            await qmp.execute("object-add", {"qom-type": "memory-backend-ram", "id": backend_id,
                                             "size": mib * MIB})
            try:
                await qmp.execute("device_add", {"driver": "pc-dimm", "id": dimm_id,
                                                 "memdev": backend_id})
            except HypervisorError:
                await _ignore_errors(qmp.execute("object-del", {"id": backend_id}))
                raise
            return current + mib

    async def free_root_ports(self) -> list[str]:
        """Root ports with nothing plugged in (for tests and diagnostics)."""
        return await self._free_root_ports(self._running_qmp())

    # -- internals -----------------------------------------------------------
    async def _launch(self, *, incoming: bool, timeout: float) -> QmpMonitor:
        self._claim_launch()
        self._check_inputs()
        requested = self.config.accelerator
        accelerator = resolve_accelerator(
            requested, self._probe() if requested is Accelerator.AUTO else None)
        self.paths.run_dir.mkdir(parents=True, exist_ok=True)
        control = bind_listener(self.paths.control_socket)
        self._track(self.paths.control_socket)
        try:
            agent = bind_listener(self.paths.agent_socket)
            self._track(self.paths.agent_socket)
            self._track(self.paths.console_log)
            console, console_fd = console_log(self.paths.console_log)
            try:
                spec = LaunchSpec(accelerator=accelerator, control_fd=control.fileno(),
                                  agent_fd=agent.fileno(), incoming=incoming, qboot=self._qboot,
                                  nic_fd=self.boot_nic_fd if self.config.boot_nic_mac else None,
                                  console_fd=console_fd.fileno())
                try:
                    argv = build_argv(self.config, self.paths, spec, vm_name=f"graft-{self.vm_id}")
                except ValueError as exc:
                    console.close()
                    raise HypervisorError(f"VM {self.vm_id}: invalid config: {exc}") from exc
                log.debug("VM %s: launching %s", self.vm_id, shlex.join(argv))
                fds = [control.fileno(), agent.fileno(), console_fd.fileno()]
                if spec.nic_fd is not None:
                    fds.append(spec.nic_fd)
                process = await self._spawn(argv, pass_fds=fds, logs=[console])
            finally:
                agent.close()  # QEMU holds its own copies now
                console_fd.close()
        finally:
            control.close()
        self._qmp = QmpMonitor(process, self._describe)
        await self._qmp.connect(self.paths.control_socket, timeout)
        return self._qmp

    def _check_inputs(self) -> None:
        cfg = self.config
        self._check_boot_files()
        if not self.paths.shared_dir.is_dir():
            raise HypervisorError(f"VM {self.vm_id}: shared dir {self.paths.shared_dir} does not exist")
        fbm = cfg.file_backed_memory
        if fbm is not None:
            if not fbm.shared and not Path(fbm.path).is_file():
                # a private mapping of a missing file would be fresh zeroes
                raise HypervisorError(f"VM {self.vm_id}: private memory file {fbm.path} does not exist")
            if not Path(fbm.path).parent.is_dir():
                raise HypervisorError(f"VM {self.vm_id}: directory of memory file {fbm.path} missing")

    @staticmethod
    async def _set_migration_capabilities(qmp: QmpMonitor) -> None:
        # Must match on both sides: it changes the stream format.
        await qmp.execute("migrate-set-capabilities",
                          {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})

    def _running_qmp(self) -> QmpMonitor:
        if self._qmp is None:
            raise HypervisorError(f"VM {self.vm_id}: not running (not started, or stopped)")
        self._check_alive()
        return self._qmp

    async def _free_root_ports(self, qmp: QmpMonitor) -> list[str]:
        ours = root_port_ids(self.config.hotplug_root_ports)
        occupied: dict[str, bool] = {}

        def walk(devices: list[dict[str, Any]]) -> None:
            for dev in devices:
                bridge = dev.get("pci_bridge")
                if bridge is None:
                    continue
                if dev.get("qdev_id") in ours:
                    occupied[dev["qdev_id"]] = bool(bridge.get("devices"))
                walk(bridge.get("devices") or [])

        for bus in await qmp.execute("query-pci"):
            walk(bus.get("devices") or [])
        return [port for port in ours if occupied.get(port) is False]

    async def _free_root_port(self, qmp: QmpMonitor) -> str:
        free = await self._free_root_ports(qmp)
        if not free:
            raise HypervisorError(f"VM {self.vm_id}: no free PCIe root port for a hot-plugged "
                                  f"device: all [hypervisor] hotplug_root_ports "
                                  f"({self.config.hotplug_root_ports}) are in use")
        return free[0]

    async def _teardown(self, *, graceful: bool) -> None:
        """Stop QEMU (QMP quit, then SIGKILL), reap it, remove its files."""
        self._expect_exit()
        proc, qmp = self._process, self._qmp
        self._qmp = None
        if proc is not None and not proc.exited.is_set() and graceful and qmp is not None:
            try:
                await qmp.execute("quit", timeout=QUIT_TIMEOUT)
            except HypervisorError:
                pass  # QEMU closing the socket before answering counts as success
        if proc is not None:
            await proc.stop(grace=QUIT_TIMEOUT if graceful else 0)
            await proc.close()
        if qmp is not None:
            await qmp.close()
        self._remove_created()


async def _ignore_errors(aw: Any) -> None:
    try:
        await aw
    except HypervisorError:
        pass


def _validate_network_device(device: NetworkDevice) -> None:
    if not _ID_RE.match(device.id):
        raise HypervisorError(f"network device id {device.id!r}: use letters, digits, '_', '.', '-'")
    if not _MAC_RE.match(device.mac):
        raise HypervisorError(f"network device {device.id}: bad MAC {device.mac!r}")
    if not device.tap_fds and not 0 < len(device.tap_name) <= _IFNAMSIZ:
        raise HypervisorError(f"network device {device.id}: bad tap name {device.tap_name!r}")
    if any(fd < 0 for fd in device.tap_fds):
        raise HypervisorError(f"network device {device.id}: negative tap fd")

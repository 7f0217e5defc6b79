"""Clones restored ahead of demand (a warm pool, Kata's VMCache idea), handed to a pod later.

prepare_warm_vm() restores a clone of the current template into a run dir of its own under
<state_dir>/pool/, its NIC backed by a transient tap in the VMM's netns, resumes it and
connects its agent; then the VM waits, owned by the process that made it (a pool member of
the shim's fork server, see shim/shim_manager/pool_member.py). adopt_warm_vm() gives it a
pod's identity — the lessons of Kata's cache, which lost identities on the way:

  * its run dir is renamed to the pod's (the VMM's fds and connections follow: QMP and the
    agent are connected, its 9p export was opened by fd, its logs are host-written);
  * the tap device moves into the pod netns and is wired to the CNI veth (the VMM keeps its
    fd); the agent gives the NIC the pod's MAC, addresses and routes;
  * the RNG is reseeded and the clock set again (everything before was the template's);
  * the VM is sized to the pod, and CreateSandbox runs as for any other VM.

A warm VM that does not suit the pod (other config file, config changed since, template
rebuilt, VM gone) is stopped and the pod boots the usual way.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from shim import failpoints
from shim.config import GraftConfig
from shim.factory.boot import BootedVm, refresh_clone_identity, restore_clone
from shim.factory.boot_nic import transient_tap_name
from shim.factory.sizing import fit_to_request
from shim.factory.template import current_template_dir, find_usable_template
from shim.hypervisor.base import VmPaths
from shim.mounts import mount_tmpfs
from shim.network import (NoPodInterface, PodEndpoint, adopt_tap, detach_endpoint,
                          discover_pod_interface, endpoint_of)
from shim.network.tuntap import open_transient_tap
from shim.timeline import Timeline
from shim.ttrpc import TtrpcError
from shim.vmconfig.pod_resources import PodResources

from . import state
from .sandbox import SHARE_ROOT_BYTES, Sandbox
from .state import SandboxRef

log = logging.getLogger(__name__)

POOL_DIR = "pool"
MEMBER_FILE = "member.json"
READY_FILE = "ready"  # present while the warm VM waits for a pod (graft status shows it)


@dataclass
class WarmVm:
    booted: BootedVm
    paths: VmPaths
    tap_name: str          # the transient tap backing its NIC, in the VMM's netns
    template_dir: Path
    config_source: str     # the config file it was made for ("" = built-in defaults)
    config_mtime_ns: int   # and that file's mtime then

    def mark_ready(self) -> None:
        (self.paths.run_dir / READY_FILE).touch()

    async def discard(self) -> None:
        await self.booted.agent.close()
        await self.booted.hypervisor.stop_vm()
        state.remove_run_dir(self.paths.run_dir)


def pool_dir(config: GraftConfig) -> Path:
    return config.state_dir / POOL_DIR


def _mtime_ns(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns if path else 0
    except OSError:
        return -1


async def prepare_warm_vm(config: GraftConfig, config_source: str) -> WarmVm:
    """Restore, resume and connect a clone for a pod to come (raises when it cannot)."""
    state.check_socket_room(config)
    key = secrets.token_hex(state.KEY_LENGTH // 2)
    run_dir = pool_dir(config) / key
    paths = VmPaths(run_dir=run_dir, shared_dir=run_dir / "shared")
    paths.shared_dir.mkdir(parents=True, mode=0o700)
    (run_dir / MEMBER_FILE).write_text(json.dumps({"pid": os.getpid()}))
    tap_name = transient_tap_name(key)
    try:
        mount_tmpfs(paths.shared_dir, SHARE_ROOT_BYTES)
        template = await asyncio.to_thread(find_usable_template, config)

        async def tap() -> int:
            return await asyncio.to_thread(open_transient_tap, tap_name)

        booted = await restore_clone(config, f"pool-{key[:12]}", paths, None,
                                     template.directory, template.memory_file,
                                     f"template {template.directory} (warm pool)",
                                     nic_tap=tap, memory_readonly=template.metadata.hypervisor
                                     .private_readonly_memory)
    except BaseException:
        state.remove_run_dir(run_dir)
        raise
    if booted.hypervisor.pid is not None:
        state.record_vmm(run_dir, booted.hypervisor.pid)
    warm = WarmVm(booted, paths, tap_name, template.directory, config_source,
                  _mtime_ns(config_source))
    await _warm_up_guest(warm)
    return warm


async def _warm_up_guest(warm: WarmVm) -> None:
    """A clone's pod pays for what its VMM process does the first time (under TCG:
    translating the guest's code again): the agent's WarmUp pays it now."""
    try:
        await warm.booted.agent.warm_up(warm.booted.hypervisor.config.share_mount_tag)
    except TtrpcError as exc:   # e.g. an older agent: the pod's first container pays
        log.warning("warm VM: the guest's warm-up failed: %s", exc.message)
    except BaseException:
        await warm.discard()
        raise


def unsuitable(warm: WarmVm, config: GraftConfig) -> str | None:
    """Why *warm* must not become a pod with *config* now (None: it may)."""
    source = str(config.source or "")
    if source != warm.config_source or _mtime_ns(source) != warm.config_mtime_ns:
        return "the config changed since the VM was prepared"
    if not config.enable_template:
        return "templates are disabled"
    if current_template_dir(config.template_path) != warm.template_dir:
        return "the template was rebuilt or removed since"
    if warm.booted.hypervisor.pid is None:
        return "the VM is gone"
    return None


async def adopt_warm_vm(warm: WarmVm, ref: SandboxRef, config: GraftConfig,
                        netns: Path | None = None, hostname: str = "",
                        dns: list[str] | None = None, resources: PodResources | None = None,
                        timeline: Timeline | None = None) -> Sandbox | None:
    """*warm* as sandbox *ref*; None (the VM stopped) when it does not suit the pod."""
    timeline = timeline or Timeline()
    why = unsuitable(warm, config)
    if why is not None:
        log.info("sandbox %s: warm VM not used: %s", ref.describe(), why)
        await warm.discard()
        return None
    run_dir = state.run_dir(config, ref)
    if run_dir.exists():
        await warm.discard()
        raise FileExistsError(f"sandbox {ref.describe()} already exists at {run_dir}")
    try:
        state.write_owner(warm.paths.run_dir, ref)
        for name in (MEMBER_FILE, READY_FILE):
            (warm.paths.run_dir / name).unlink(missing_ok=True)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        os.rename(warm.paths.run_dir, run_dir)  # complete when it appears: owner included
    except BaseException:
        await warm.discard()
        raise
    paths = VmPaths(run_dir=run_dir, shared_dir=run_dir / "shared")
    vm, agent = warm.booted.hypervisor, warm.booted.agent
    vm.relocate(paths)
    timeline.attach(run_dir)
    timeline.mark("warm vm adopted")
    endpoint: PodEndpoint | None = None
    # Everything the pod's identity needs runs together; all of it is done before the
    # sandbox is returned (no container runs before the RNG is reseeded).
    refreshing = asyncio.ensure_future(_marked(refresh_clone_identity(agent), timeline,
                                               "clone identity refreshed"))
    wiring: asyncio.Future | None = None
    try:
        # The guest needs what CNI configured (MAC, addresses, routes), not the tap: it is
        # moved and wired while the guest takes its new identity and network config.
        pod = await asyncio.to_thread(_discover, netns) if netns is not None else None
        if pod is not None:
            endpoint = endpoint_of(netns, pod)
            wiring = asyncio.ensure_future(_wire(netns, warm.tap_name, pod, timeline))
        warm.booted.size = await fit_to_request(vm, agent, resources or PodResources())
        timeline.mark("vm sized")
    except BaseException:
        timeline.detach()
        await _settled(wiring, refreshing)
        if endpoint is not None:
            await asyncio.to_thread(detach_endpoint, endpoint.netns, endpoint.tap_name)
        await agent.close()
        await vm.stop_vm()
        state.remove_run_dir(run_dir)
        raise
    try:
        sandbox = await Sandbox.complete(ref, config, paths, warm.booted, endpoint, hostname,
                                         dns, timeline)
    except BaseException:
        await _settled(wiring, refreshing)  # complete() stopped the VM; wiring leftovers go
        if endpoint is not None:
            await asyncio.to_thread(detach_endpoint, endpoint.netns, endpoint.tap_name)
        raise
    try:
        await refreshing
        if wiring is not None:
            await wiring
    except BaseException:
        await _settled(wiring)
        await sandbox.stop()
        raise
    return sandbox


async def _wire(netns: Path, tap_name: str, pod, timeline: Timeline) -> None:
    await asyncio.to_thread(adopt_tap, netns, tap_name, pod=pod)
    timeline.mark("network attached")
    failpoints.reach(failpoints.NETWORK_ATTACHED)


def _discover(netns: Path):
    """The pod's CNI interface; None when the netns has none (loopback-only pod)."""
    try:
        return discover_pod_interface(netns)
    except NoPodInterface:
        log.info("netns %s has no configured interface: the VM gets loopback only", netns)
        return None


async def _settled(*tasks: asyncio.Future | None) -> None:
    await asyncio.gather(*(t for t in tasks if t is not None), return_exceptions=True)


async def _marked(step, timeline: Timeline, name: str):
    result = await step
    timeline.mark(name)
    return result


def waiting_vms(config: GraftConfig) -> int:
    """How many warm VMs wait for a pod in this config's state dir."""
    root = pool_dir(config)
    return sum(1 for e in root.iterdir() if (e / READY_FILE).exists()) if root.is_dir() else 0


def remove_stale_pool_dirs(config: GraftConfig) -> list[Path]:
    """Pool run dirs whose preparing process died (with their VMM killed): removed."""
    import psutil

    removed = []
    root = pool_dir(config)
    if not root.is_dir():
        return removed
    for entry in root.iterdir():
        try:
            pid = int(json.loads((entry / MEMBER_FILE).read_text())["pid"])
            if psutil.pid_exists(pid):
                continue
        except (OSError, ValueError, KeyError, TypeError):
            pass
        proc = state.recorded_vmm(entry)
        if proc is not None:
            proc.kill()
        state.remove_run_dir(entry)
        removed.append(entry)
    return removed

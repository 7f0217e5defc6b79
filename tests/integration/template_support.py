"""Helpers shared by the template integration tests."""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from shim.agent.streams import copy_output
from shim.config import GraftConfig
from shim.oci import default_spec
from shim.sandbox.sandbox import Sandbox


def factory_config(base: GraftConfig, template_path: Path, **hypervisor: object) -> GraftConfig:
    """*base* with templates enabled at *template_path* (and hypervisor keys changed)."""
    overrides: dict[tuple[str, str], object] = {
        ("factory", "enable_template"): True,
        ("factory", "template_path"): str(template_path),
    }
    overrides.update({("hypervisor", name): value for name, value in hypervisor.items()})
    return base.with_values(overrides)


async def run_in(box: Sandbox, cid: str, rootfs: Path, args: list[str]) -> tuple[int, bytes]:
    """Run a container to completion in *box*; its exit status and stdout."""
    guest_rootfs = box.add_container_rootfs(cid, rootfs)
    out = bytearray()

    async def sink(data: bytes) -> None:
        out.extend(data)
    try:
        await box.agent.create_container(cid, json.dumps(default_spec(args)).encode(),
                                         guest_rootfs, stdin=False)
        reader = asyncio.ensure_future(copy_output(box.agent, cid, "", "stdout", sink))
        await box.agent.start_container(cid)
        status = await asyncio.wait_for(box.agent.wait_process(cid, ""), 120)
        await asyncio.wait_for(reader, 30)
        return status.exit_status, bytes(out)
    finally:
        await box.agent.remove_container(cid, force=True)
        box.remove_container_rootfs(cid)


def open_modes(pid: int, path: Path) -> list[int]:
    """The access modes (O_RDONLY/O_WRONLY/O_RDWR) of every fd of *pid* open on *path*."""
    modes = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != str(path):
                continue
            fdinfo = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except FileNotFoundError:
            continue
        flags = next(line for line in fdinfo.splitlines() if line.startswith("flags:"))
        modes.append(int(flags.split()[1], 8) & os.O_ACCMODE)
    return modes

"""A native container's cgroup v2 directory: creation with every controller delegated,
limits, the device filter, freezing, killing and removal."""

from __future__ import annotations

import asyncio
import errno
import os

from ..cgroup import CGROUP_ROOT
from ..errors import FailedPrecondition, InvalidArgument
from ..fsutil import read_text, write_raw
from . import device_filter
from .resources import CgroupWrite, ResourcePlan

_EMPTY_POLL_S = 0.002
# The controllers delegated down to containers (crun's set: rdma and misc stay at the root).
DELEGATED = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids")


_delegated_parents: set[str] = set()
_device_programs: dict[bytes, int] = {}   # loaded filters, shared by containers with equal rules
_PROGRAM_CACHE_SIZE = 8


def enable_controllers(path: str) -> None:
    """mkdir every ancestor of `path` and delegate the controllers down to it (as crun does:
    the container's own directory gets them all available)."""
    available = read_text(os.path.join(CGROUP_ROOT, "cgroup.controllers")).split()
    wanted = [c for c in DELEGATED if c in available]
    parts = [p for p in path.strip("/").split("/") if p]
    parent = "/".join(parts[:-1])
    if parent in _delegated_parents and os.path.isdir(os.path.join(CGROUP_ROOT, parent)):
        return
    current = CGROUP_ROOT
    for part in parts[:-1]:
        _delegate(current, wanted)
        current = os.path.join(current, part)
        try:
            os.mkdir(current, 0o755)
        except FileExistsError:
            pass
    _delegate(current, wanted)
    _delegated_parents.add(parent)


def _delegate(directory: str, wanted: list[str]) -> None:
    control = os.path.join(directory, "cgroup.subtree_control")
    missing = [c for c in wanted if c not in read_text(control).split()]
    if not missing:
        return
    try:
        write_raw(control, " ".join("+" + c for c in missing))
    except OSError:
        for controller in missing:  # one at a time: some (e.g. cpu with RT tasks) may refuse
            try:
                write_raw(control, "+" + controller)
            except OSError:
                pass


class NativeCgroup:
    def __init__(self, path: str) -> None:
        self.path = "/" + path.strip("/")
        self.dir = os.path.join(CGROUP_ROOT, self.path.lstrip("/"))
        self.fd = -1
        self._device_program = -1
        self._owned_program = -1   # a filter loaded for this cgroup alone (cache full)

    @classmethod
    def create(cls, path: str, plan: ResourcePlan) -> "NativeCgroup":
        cgroup = cls(path)
        enable_controllers(cgroup.path)
        try:
            os.mkdir(cgroup.dir, 0o755)
        except FileExistsError:
            raise FailedPrecondition(f"cgroup {cgroup.path} already exists") from None
        try:
            cgroup.fd = os.open(cgroup.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            cgroup.apply(plan)
        except BaseException:
            cgroup.close()
            try:
                os.rmdir(cgroup.dir)
            except OSError:
                pass
            raise
        return cgroup

    def apply(self, plan: ResourcePlan) -> None:
        """Write the limits (also for UpdateContainer); device rules replace the old filter."""
        if plan.devices is not None:
            self._set_devices(plan)
        for write in plan.writes:
            self._write(write)

    def _set_devices(self, plan: ResourcePlan) -> None:
        code = device_filter.assemble(plan.devices or [])
        program = _device_programs.get(code, -1)
        owned = program < 0 and len(_device_programs) >= _PROGRAM_CACHE_SIZE
        if program < 0:
            program = device_filter.load(code)
            if not owned:
                _device_programs[code] = program
        if program == self._device_program:
            return
        try:
            device_filter.attach(program, self.fd)
        except BaseException:
            if owned:
                os.close(program)
            raise
        old, old_owned = self._device_program, self._owned_program
        self._device_program, self._owned_program = program, program if owned else -1
        if old >= 0:  # both were attached for a moment: the stricter of the two applied
            device_filter.detach(old, self.fd)
        if old_owned >= 0:
            os.close(old_owned)

    def _write(self, write: CgroupWrite) -> None:
        try:
            write_raw(os.path.join(self.dir, write.file), write.value)
        except FileNotFoundError:
            if write.fallback is not None:
                self._write(write.fallback)
            elif not write.optional:
                raise InvalidArgument(f"cgroup file {write.file} does not exist in the guest "
                                      "(controller not available)") from None
        except OSError as exc:
            raise InvalidArgument(f"cannot write {write.value!r} to {write.file}: "
                                  f"{exc.strerror}") from None

    # -- lifecycle ------------------------------------------------------------------------------

    def events(self) -> dict[str, str]:
        return dict(line.split(" ", 1) for line in read_text(os.path.join(self.dir, "cgroup.events")).splitlines()
                    if " " in line)

    async def freeze(self, frozen: bool, timeout: float = 10.0) -> None:
        write_raw(os.path.join(self.dir, "cgroup.freeze"), "1" if frozen else "0")
        want = "1" if frozen else "0"
        async with asyncio.timeout(timeout):
            while self.events().get("frozen") != want:
                await asyncio.sleep(_EMPTY_POLL_S)

    def kill(self) -> None:
        try:
            write_raw(os.path.join(self.dir, "cgroup.kill"), "1")
        except FileNotFoundError:
            pass

    async def remove(self, timeout: float = 10.0) -> None:
        """Kill what is left, wait until the cgroup is empty, remove it."""
        if not os.path.isdir(self.dir):
            self.close()
            return
        self.kill()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                os.rmdir(self.dir)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or loop.time() > deadline:
                    raise FailedPrecondition(f"cannot remove cgroup {self.path}: {exc.strerror}") from None
                await asyncio.sleep(_EMPTY_POLL_S)
        self.close()

    def close(self) -> None:
        """(A cached device filter stays loaded for other containers; the cgroup's removal
        detaches it.)"""
        for fd in (self._owned_program, self.fd):
            if fd >= 0:
                os.close(fd)
        self._device_program = self._owned_program = self.fd = -1

"""What every process-based VMM driver shares: one VMM process per object,
its exit event, error messages with log tails, wait_exit and pid."""
from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from .base import Hypervisor, HypervisorConfig, HypervisorError, VmExited, VmPaths
from .bounded_log import BoundedLog, rotated
from .process import Describer, VmmProcess

log = logging.getLogger(__name__)

# How long a VMM gets to exit after a polite request, before SIGKILL.
QUIT_TIMEOUT = 1.0


class SupervisedHypervisor(Hypervisor):
    """Base of the QEMU and CLH drivers. An object runs at most one VMM
    process: start_vm() or restore_vm(), later stop_vm()."""

    PROCESS_NAME: ClassVar[str] = "vmm"
    PROCESS_LOG: ClassVar[str] = "vmm.log"  # VMM stdout+stderr, under run_dir

    def __init__(self, vm_id: str, config: HypervisorConfig, paths: VmPaths,
                 netns: Path | None = None) -> None:
        super().__init__(vm_id, config, paths, netns)
        self._process: VmmProcess | None = None
        self._launched = False
        self._lifecycle = asyncio.Lock()  # start/restore/save/stop do not interleave
        self._devices = asyncio.Lock()  # one hot-plug at a time
        #: set when the VMM process has exited (expectedly or not)
        self.exited = asyncio.Event()
        self._describe = Describer(vm_id, self.process_log, paths.console_log)
        # Files/dirs this object created (only these are removed at teardown).
        self._created: list[Path] = []
        self._exit_expected = False  # set once we stop the VMM ourselves

    @property
    def process_log(self) -> Path:
        return self.paths.run_dir / self.PROCESS_LOG

    async def stop_vm(self) -> None:
        async with self._lifecycle:
            await self._teardown(graceful=True)

    async def _teardown(self, *, graceful: bool) -> None:
        """Stop the VMM (politely first when *graceful*) and remove what it
        created. Idempotent."""
        raise NotImplementedError

    def _expect_exit(self) -> None:
        """Called by _teardown before it stops the VMM: that exit is ours."""
        self._exit_expected = True

    def _vmm_exited(self, status: int) -> None:
        # The console log and the VMM's output are removed at teardown: an exit
        # nobody asked for (guest panic, poweroff, VMM crash, kill) is reported
        # now, with their tails, so the reason survives in the owner's log.
        if not self._exit_expected:
            log.warning("%s", self._describe(
                f"{self.PROCESS_NAME} exited unexpectedly (status {status})"))

    def relocate(self, paths: VmPaths) -> None:
        """The caller renamed the run dir (paths.run_dir, which is new) while the VM runs:
        the VMM's fds and connections do not care; paths this object keeps follow."""
        old = self.paths.run_dir
        rebase = lambda p: paths.run_dir / p.relative_to(old) if p.is_relative_to(old) else p  # noqa: E731
        self._created = [rebase(p) for p in self._created]
        self.paths = paths
        self._describe.process_log = self.process_log
        self._describe.console_log = paths.console_log
        if self._process is not None:
            self._process.relocate_logs(old, paths.run_dir)

    def _claim_launch(self) -> None:
        if self._launched:
            raise HypervisorError(f"VM {self.vm_id}: already launched (one VMM per object)")
        self._launched = True

    def _track(self, *paths: Path) -> None:
        self._created.extend(p for p in paths if p not in self._created)

    def _remove_created(self) -> None:
        for path in self._created:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        self._created.clear()

    async def _spawn(self, argv: Sequence[str], pass_fds: Sequence[int] = (),
                     logs: Sequence[BoundedLog] = ()) -> VmmProcess:
        # the VMM's output (the log is created by VmmProcess.spawn), rotated parts included
        for path in (self.process_log, self.paths.console_log):
            self._track(path, rotated(path))
        self._process = await VmmProcess.spawn(
            argv, name=self.PROCESS_NAME, log_path=self.process_log, netns=self.netns,
            pass_fds=pass_fds, logs=logs, exited=self.exited, on_exit=self._vmm_exited)
        return self._process

    def _check_alive(self) -> VmmProcess:
        proc = self._process
        if proc is None:
            raise HypervisorError(f"VM {self.vm_id}: not running (not started, or stopped)")
        if proc.exited.is_set():
            raise VmExited(self._describe(f"{self.PROCESS_NAME} exited (status {proc.returncode})"))
        return proc

    async def wait_exit(self) -> int:
        if self._process is None:
            raise HypervisorError(f"VM {self.vm_id}: not started")
        return await self._process.wait()

    @property
    def pid(self) -> int | None:
        proc = self._process
        if proc is None or proc.exited.is_set():
            return None
        return proc.pid

    def _check_boot_files(self) -> None:
        for what, path in (("kernel", self.config.kernel), ("initrd", self.config.initrd)):
            if not Path(path).is_file():
                raise HypervisorError(f"VM {self.vm_id}: {what} {path} does not exist")

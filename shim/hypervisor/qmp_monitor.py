"""A QEMU's QMP session (qemu.qmp QMPClient) with graft's error handling:
every failure becomes HypervisorError / VmExited carrying the log tails."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError, QMPClient, QMPError

from .base import HypervisorError
from .process import VmmProcess, race_exit

# Poll interval of migration status: a template save/restore takes tens of ms.
MIGRATION_POLL_INTERVAL = 0.01


class QmpMonitor:
    def __init__(self, process: VmmProcess, describe: Callable[[str], str]) -> None:
        self._process = process
        self._describe = describe
        self._client = QMPClient(process.name)

    async def connect(self, socket_path: Path, timeout: float) -> None:
        await race_exit(self._client.connect(str(socket_path)), self._process,
                        timeout=timeout, what="QMP connect", describe=self._describe)

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None,
                      timeout: float | None = 10.0, what: str | None = None) -> Any:
        """Run one QMP command; *what* names the operation in error messages."""
        what = what or f"QMP {command}"
        try:
            return await race_exit(self._client.execute(command, arguments), self._process,
                                   timeout=timeout, what=what, describe=self._describe)
        except ExecuteError as exc:
            raise HypervisorError(self._describe(f"QMP {command} failed: {exc}")) from exc
        except QMPError as exc:
            raise HypervisorError(self._describe(f"QMP {command}: {type(exc).__name__}: {exc}")) from exc

    def send_fd(self, fd: int) -> None:
        try:
            self._client.send_fd_scm(fd)
        except (QMPError, OSError) as exc:
            raise HypervisorError(self._describe(f"passing fd {fd} over QMP failed: {exc}")) from exc

    async def run_state(self) -> str:
        status = await self.execute("query-status")
        return str(status["status"])

    async def wait_migration(self, timeout: float, what: str) -> dict[str, Any]:
        """Poll query-migrate until completed; raise on failed/cancelled."""
        deadline = time.monotonic() + timeout
        while True:
            info = await self.execute("query-migrate", what=what)
            status = info.get("status")
            if status == "completed":
                return dict(info)
            if status in ("failed", "cancelled", "cancelling"):
                detail = info.get("error-desc", "no detail from QEMU")
                raise HypervisorError(self._describe(f"{what} {status}: {detail}"))
            if time.monotonic() >= deadline:
                raise HypervisorError(self._describe(f"{what} not completed after {timeout:.1f}s "
                                                     f"(status {status})"))
            await asyncio.sleep(MIGRATION_POLL_INTERVAL)

    async def close(self) -> None:
        try:
            await self._client.disconnect()
        except Exception:  # the reader's failure (EOF after QEMU exit) is expected here
            pass

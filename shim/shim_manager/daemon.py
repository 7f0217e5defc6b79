"""The shim daemon: serves the task API for every container of one pod on one socket, and the
Sandbox API (containerd 2.x, `sandboxer = "shim"`) for the pod itself.

It exits (removing its socket first) when ShutdownSandbox arrives, when Shutdown arrives with no
task left and no sandbox created through the Sandbox API, on SIGTERM, or when it has had neither
a client connection nor a task nor such a sandbox for IDLE_SECONDS — e.g. containerd could not
connect after `start`, removed the bundle and will never call `delete`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from shim.events import Publisher
from shim.task.backend import PodBackend
from shim.task.manager import TaskManager
from shim.task.sandbox_controller import SandboxController
from shim.timeline import START_EXEC_ENV, Timeline
from shim.ttrpc import Server

from .args import ShimArgs

if TYPE_CHECKING:
    from shim.sandbox.warm import WarmVm
from .reaper import Reaper, become_subreaper
from . import socket_address

log = logging.getLogger(__name__)

IDLE_SECONDS = 5.0
EVENT_DRAIN_SECONDS = 10.0
CONNECTION_GRACE_SECONDS = 1.0


class Daemon:
    def __init__(self, args: ShimArgs, listener: socket.socket,
                 backend_factory: Callable[[], PodBackend],
                 idle_seconds: float = IDLE_SECONDS, timeline: Timeline | None = None) -> None:
        self.args = args
        self._listener = listener
        self._socket_path = Path(listener.getsockname())
        self._backend_factory = backend_factory
        self._idle_seconds = idle_seconds
        self._connections = 0
        self._stop = asyncio.Event()
        self.timeline = timeline or Timeline()

    @property
    def socket_path(self) -> Path:
        return self._socket_path

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        from shim.api.containerd import SANDBOX_SERVICE, TASK_SERVICE
        from shim.sandbox_service import SandboxService
        from shim.task_service import TaskService

        ttrpc_address = os.environ.get("TTRPC_ADDRESS") or f"{self.args.address}.ttrpc"
        events = Publisher(self.args.namespace, ttrpc_address, self.args.publish_binary,
                           self.args.address)
        backend = self._backend_factory()
        manager = TaskManager(backend, events, self.args.namespace)
        sandboxes = SandboxController(backend, self.args.id)

        def on_task_shutdown() -> None:
            # A Sandbox API pod outlives its containers: ShutdownSandbox ends it.
            if not sandboxes.active:
                self.request_stop()

        server = Server()
        server.register_service(TASK_SERVICE, TaskService(manager, on_task_shutdown))
        server.register_service(SANDBOX_SERVICE, SandboxService(sandboxes, self.request_stop))

        connections: set[asyncio.Task] = set()

        async def on_connection(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.add(task)
            self._connections += 1
            try:
                await server.serve_connection(reader, writer)
            except asyncio.CancelledError:
                pass  # daemon shutdown ends the connection; asyncio's stream callback
                # would log a cancelled connection task as an error
            finally:
                self._connections -= 1
                connections.discard(task)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        listener = await asyncio.start_unix_server(on_connection, sock=self._listener)
        background = [asyncio.ensure_future(events.run()), asyncio.ensure_future(Reaper().run()),
                      asyncio.ensure_future(self._idle_watch(manager, sandboxes))]
        for task in background:
            task.add_done_callback(self._background_ended)
        self.timeline.mark("shim serving")
        log.info("shim %s serving %s on %s", os.getpid(), self.args.id, self._socket_path)
        try:
            await self._stop.wait()
        finally:
            log.info("shim %s shutting down", os.getpid())
            socket_address.remove(self._socket_path)  # first: nobody may dial a dying shim
            listener.close()
            if connections:  # let the Shutdown answer go out; containerd then hangs up
                await asyncio.wait(set(connections), timeout=CONNECTION_GRACE_SECONDS)
            for task in connections:
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)
            try:
                await sandboxes.close()
                await manager.close()
            except Exception:
                log.exception("tearing down the pod failed")
            await events.close()
            try:
                await asyncio.wait_for(asyncio.shield(background[0]), EVENT_DRAIN_SECONDS)
            except TimeoutError:
                log.warning("events still queued at exit were dropped")
            except Exception:
                pass  # already logged by _background_ended
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await server.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def _background_ended(self, task: asyncio.Task) -> None:
        # Logged when it happens, not at exit; the pods keep running (CRI learns of exits
        # through Wait, which does not depend on these tasks).
        if not task.cancelled() and task.exception() is not None:
            log.error("shim background task %s failed", task.get_coro().__qualname__,
                      exc_info=task.exception())

    async def _idle_watch(self, manager: TaskManager, sandboxes: SandboxController) -> None:
        idle_since: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self._idle_seconds / 2))
            if self._connections or not manager.empty.is_set() or sandboxes.active:
                idle_since = None
            elif idle_since is None:
                idle_since = loop.time()
            elif loop.time() - idle_since >= self._idle_seconds:
                log.info("no client and no task for %ss: exiting", self._idle_seconds)
                self.request_stop()
                return


async def serve_async(args: ShimArgs, listen_fd: int, config_path: str,
                      warm: "WarmVm | None" = None) -> int:
    """Serve the pod on *listen_fd* until the daemon stops; the exit status. *warm*: a VM
    restored ahead of this pod (warm pool), used if it suits the pod's config."""
    from shim.task.vm_backend import VmBackend

    become_subreaper()
    listener = socket.socket(fileno=listen_fd)
    listener.setblocking(False)
    timeline = Timeline()
    if os.environ.get(START_EXEC_ENV):
        timeline.mark("shim exec", float(os.environ[START_EXEC_ENV]))
    daemon = Daemon(args, listener, lambda: VmBackend(config_path, args.namespace, args.address,
                                                      timeline, warm), timeline=timeline)
    try:
        await daemon.run()
    except BaseException:
        log.exception("shim daemon failed")
        socket_address.remove(daemon.socket_path)  # run() may have failed before owning it
        return 1
    return 0


def serve(args: ShimArgs, listen_fd: int, config_path: str) -> int:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(serve_async(args, listen_fd, config_path))
    finally:
        # Everything we own is cleaned up by now. The caller exits with os._exit: a worker
        # thread stuck in a blocking call (asyncio.run would join it) must not keep a
        # finished shim alive.
        logging.shutdown()

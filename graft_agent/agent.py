"""The agent's parts wired together, and how it serves until told to stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

from .config import Config
from .containers import ContainerManager
from .guest import Sandbox
from .network import Network
from .oom import OomMonitor
from .reaper import ChildReaper
from .spawn import Spawner

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, config: Config, reaper: ChildReaper, spawner: Spawner, no_pivot: bool) -> None:
        self.config = config
        self.started_at = time.monotonic()
        self.oom = OomMonitor()
        self.sandbox = Sandbox(config.resolv_conf_path)
        self.network = Network()
        self.containers = ContainerManager(config.run_dir, config.cgroup_parent,
                                           config.default_runtime, no_pivot, spawner, reaper,
                                           self.oom)
        self._warmup: asyncio.Task | None = None

    def start_warmup(self) -> None:
        """Do what a pod's start would do first while nobody waits yet (graft_agent/warmup.py):
        on a template that work is then already done in every clone."""
        from .warmup import warm

        self._warmup = asyncio.ensure_future(warm(self))

    async def warm_up_clone(self, share_tag: str) -> None:
        from .clone_warmup import warm_clone
        from .errors import FailedPrecondition

        await self.ready()
        if self.sandbox.created:
            raise FailedPrecondition("the VM already serves a pod")
        await warm_clone(self, share_tag)

    async def ready(self) -> None:
        if self._warmup is not None:
            await asyncio.shield(self._warmup)

    def create_sandbox(self, sandbox_id: str, hostname: str, share_tag: str, share_point: str,
                       dns: list[str]) -> None:
        self.sandbox.create(sandbox_id, hostname, share_tag, share_point, dns)
        if hostname:
            self.containers.pod.set_hostname(hostname)

    async def destroy_sandbox(self) -> None:
        await self.containers.remove_all()
        self.sandbox.destroy()

    async def shutdown(self) -> None:
        if self._warmup is not None and not self._warmup.done():
            self._warmup.cancel()   # and let it undo what it began (its throwaway container)
            await asyncio.gather(self._warmup, return_exceptions=True)
        await self.containers.remove_all()
        self.network.close()
        try:
            self.sandbox.destroy()
        except Exception as exc:
            log.error("sandbox teardown: %s", exc)
        parent = os.path.join("/sys/fs/cgroup", self.config.cgroup_parent.strip("/"))
        try:
            os.rmdir(parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove cgroup %s: %s", parent, exc.strerror)


async def serve(config: Config, no_pivot: bool) -> None:
    """Serve the agent API until cancelled (or, for a unix listener, SIGTERM/SIGINT)."""
    from shim.ttrpc import Server

    from .api import agent_pb2
    from .service import AgentService

    loop = asyncio.get_running_loop()
    os.makedirs(config.run_dir, mode=0o755, exist_ok=True)
    reaper = ChildReaper()
    reaper.start()
    spawner = Spawner(reaper)
    agent = Agent(config, reaper, spawner, no_pivot)
    server = Server(max_in_flight=4096)  # every process of the pod keeps ~3 long polls open
    server.register_service(agent_pb2.DESCRIPTOR.services_by_name["AgentService"],
                            AgentService(agent))
    stop = asyncio.Event()
    try:
        if config.listen_path is not None:
            # As PID 1 only SIGTERM (its owner's): SIGINT may come from a container.
            stop_signals = (signal.SIGTERM,) if os.getpid() == 1 else (signal.SIGTERM, signal.SIGINT)
            for sig in stop_signals:
                loop.add_signal_handler(sig, stop.set)
            _remove_stale_socket(config.listen_path)
            await server.serve_unix(config.listen_path)
            log.info("serving on unix:%s", config.listen_path)
            agent.start_warmup()
            await stop.wait()
        elif config.listen_vsock_port is not None:
            await server.serve_listener(_vsock_listener(config.listen_vsock_port))
            log.info("serving on vsock port %d", config.listen_vsock_port)
            agent.start_warmup()
            await asyncio.Event().wait()  # until cancelled: PID 1 never returns
        else:
            from .channel import serve_port, wait_for_port

            port = await wait_for_port(config.port_name)
            log.info("serving on %s (%s)", port, config.port_name)
            agent.start_warmup()
            await serve_port(port, server.serve_connection)
    finally:
        log.info("agent stopping")
        await server.close()
        await agent.shutdown()
        if config.listen_path is not None:
            _remove_stale_socket(config.listen_path)
        reaper.stop()


def _vsock_listener(port: int):
    import socket

    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    sock.bind((socket.VMADDR_CID_ANY, port))
    sock.listen(16)
    sock.setblocking(False)
    return sock


def _remove_stale_socket(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

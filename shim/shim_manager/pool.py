"""The fork server's warm pools: per graft config with `[factory] cache_size` > 0, that many
pool members (pool_member.py) each holding a VM restored ahead of demand.

The fork server owns them explicitly: each member is forked off it (double fork, like a
daemon) with one end of a socketpair the server keeps; "ready", "failed" and hang-ups arrive
there. A pod's `start` request goes to a ready member when its config's pool has one (else
a daemon is forked as without a pool), and the pool is refilled right after. A member that
fails makes its pool back off (doubling, up to MAX_BACKOFF), so a broken template or VMM
never turns into a restore loop; a success resets it. Members outlive nothing: when the
server exits, they see the hang-up, stop their VM and exit.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0
HANDOFF_TIMEOUT = 5.0
# How often a pool's config file is looked at again: edited → members replaced; removed or
# pools turned off → members stopped.
RECHECK_SECONDS = 5.0
_MAX_MESSAGE = 1 << 20


@dataclass
class Member:
    sock: socket.socket
    pid: int
    ready: bool = False


@dataclass
class Pool:
    config_path: str
    size: int
    stamp: str  # (path, mtime) of the config the size was read from
    # The environment of the latest pod start for this config: members prepare their VM in
    # it (e.g. GRAFT_GUEST_DIR), as a daemon forked for that pod would.
    environ: dict[str, str] = field(default_factory=dict)
    members: list[Member] = field(default_factory=list)
    failures: int = 0
    retry_at: float = 0.0

    def take(self) -> Member | None:
        for member in self.members:
            if member.ready:
                self.members.remove(member)
                return member
        return None


def pool_size(config_path: str) -> tuple[int, str]:
    """(cache_size for this config, its stamp); 0 when pools do not apply."""
    from shim.config import ConfigError, load_config

    try:
        config = load_config(config_path or None)
    except (ConfigError, OSError):
        return 0, ""
    try:
        mtime = os.stat(config.source).st_mtime_ns if config.source else 0
    except OSError:
        return 0, ""
    stamp = f"{config.source}:{mtime}"
    if not config.enable_template or config.get("hypervisor", "kind") != "qemu":
        return 0, stamp
    return int(config.get("factory", "cache_size")), stamp


class Pools:
    def __init__(self, close_in_children: tuple[int, ...]) -> None:
        self._pools: dict[str, Pool] = {}
        self._close = close_in_children  # the server's own fds, never a member's
        self._checked = time.monotonic()

    def sockets(self) -> list[socket.socket]:
        return [m.sock for pool in self._pools.values() for m in pool.members]

    def fds(self) -> tuple[int, ...]:
        """What a process forked off the server must close: members' sockets."""
        return tuple(sock.fileno() for sock in self.sockets())

    def note_config(self, config_path: str, environ: dict[str, str] | None = None) -> None:
        """A pod used this config (with *environ*): (re)size its pool from the config as it
        is now."""
        size, stamp = pool_size(config_path)
        pool = self._pools.get(config_path)
        if pool is not None and pool.stamp == stamp:
            if environ is not None:
                pool.environ = environ
            return
        if pool is not None:  # the config changed (or went): members of the old one go
            for member in pool.members:
                member.sock.close()
            log.info("pool for %s: config changed, %d members stopped",
                     config_path or "defaults", len(pool.members))
        if size > 0:
            self._pools[config_path] = Pool(
                config_path, size, stamp,
                environ if environ is not None else (pool.environ if pool else {}))
            _clean_stale(config_path)
        else:
            self._pools.pop(config_path, None)

    def hand_over(self, config_path: str, request: dict, listen_fd: int) -> int | None:
        """Give the pod to a ready member of its config's pool; its pid, or None."""
        pool = self._pools.get(config_path)
        member = pool.take() if pool is not None else None
        if member is None:
            return None
        try:
            member.sock.settimeout(HANDOFF_TIMEOUT)
            socket.send_fds(member.sock, [json.dumps(request).encode()], [listen_fd])
            reply = json.loads(member.sock.recv(_MAX_MESSAGE) or b"{}")
        except (OSError, ValueError) as exc:
            log.warning("pool member %d did not take the pod: %s", member.pid, exc)
            reply = {}
        member.sock.close()
        pid = reply.get("pid")
        return pid if isinstance(pid, int) else None

    def on_readable(self, sock: socket.socket) -> None:
        for pool in self._pools.values():
            for member in pool.members:
                if member.sock is sock:
                    self._heard(pool, member)
                    return

    def _heard(self, pool: Pool, member: Member) -> None:
        try:
            message = json.loads(member.sock.recv(_MAX_MESSAGE) or b"{}")
        except (OSError, ValueError):
            message = {}
        if message.get("ready"):
            member.ready = True
            pool.failures = 0
            return
        # failed, or gone (its VM died while waiting, or it crashed)
        pool.members.remove(member)
        member.sock.close()
        if "failed" in message or not member.ready:
            pool.failures += 1
            delay = min(MAX_BACKOFF, 2.0 ** pool.failures)
            pool.retry_at = time.monotonic() + delay
            log.warning("pool member for %s failed (%s); next try in %.0fs",
                        pool.config_path or "defaults", message.get("failed", "exited"), delay)

    def fill(self) -> None:
        now = time.monotonic()
        if now - self._checked >= RECHECK_SECONDS:
            self._checked = now
            for config_path in list(self._pools):
                self.note_config(config_path)
        for pool in self._pools.values():
            while len(pool.members) < pool.size and now >= pool.retry_at:
                try:
                    pool.members.append(_fork_member(pool.config_path, pool.environ,
                                                     (*self._close, *self.fds())))
                except OSError as exc:
                    log.warning("cannot fork a pool member: %s", exc)
                    pool.retry_at = now + MAX_BACKOFF
                    break

    def next_wakeup(self) -> float | None:
        """Seconds until a pool needs the server again (refill after a back-off, config
        recheck), for its select; None without pools."""
        if not self._pools:
            return None
        now = time.monotonic()
        waits = [p.retry_at - now for p in self._pools.values() if len(p.members) < p.size]
        waits.append(self._checked + RECHECK_SECONDS - now)
        return max(0.0, min(waits))

    @property
    def active(self) -> bool:
        return any(pool.members for pool in self._pools.values())


def _fork_member(config_path: str, environ: dict[str, str],
                 close: tuple[int, ...]) -> Member:
    from .daemon_process import fork_detached
    from .pool_member import run_member

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = fork_detached(lambda: run_member(theirs, config_path, environ),
                            (*close, ours.fileno()))
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return Member(ours, pid)


def _clean_stale(config_path: str) -> None:
    from shim.config import load_config
    from shim.sandbox.warm import remove_stale_pool_dirs

    try:
        for path in remove_stale_pool_dirs(load_config(config_path or None)):
            log.info("removed stale pool dir %s", path)
    except Exception as exc:  # noqa: BLE001 - cleanup must never stop the server
        log.warning("cleaning stale pool dirs: %s", exc)

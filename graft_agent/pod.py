"""The pod's shared parts in the guest: its IPC, UTS and PID namespaces and its /dev/shm.

Container specs name them with the paths of graft_agent.pod_paths (the shim maps CRI's
sandbox namespaces to those). The agent's warm-up prepares them (so a template VM is saved
with them and no clone's first container waits for them: each clone is one pod, in a VM of
its own, so no two pods ever share them); whatever is missing then, e.g. after
DestroySandbox, is created on first use, for every runtime alike:
  * a holder process, cloned into new IPC, UTS and PID namespaces (it inherits the VM's
    hostname, the pod's), is the PID namespace's init: it reaps what is orphaned in it and
    keeps the namespace alive. It runs busybox's sh, not a copy of the agent, so containers
    that share its PID namespace see (and could trace) nothing of the agent's memory; the
    agent itself is in none of these namespaces;
  * its namespace files are bind-mounted under <run_dir>/pod/ns, the paths runtimes join;
  * a tmpfs at <run_dir>/pod/shm is the /dev/shm the pod's containers bind-mount.
The pod's hostname (CreateSandbox) is set in the VM's UTS namespace and in the pod's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import NoReturn

from .errors import FailedPrecondition
from .fsutil import remove_tree, which
from .pod_paths import POD_DIR, POD_NAMESPACES, POD_SHM, SHARED_NAMESPACES
from .reaper import ChildReaper, ExitInfo

log = logging.getLogger(__name__)

# The holder: PID 1 of the pod's PID namespace. ash reaps every child in `wait`, orphans
# included; signals from inside the namespace cannot end an init that ignores them.
_HOLDER_SCRIPT = 'trap "" HUP INT QUIT TERM USR1 USR2; while :; do sleep 2147483647 & wait; done'
_SHM_OPTIONS = "mode=1777,size=65536k"
_STOP_TIMEOUT_S = 10.0


class PodNamespaces:
    def __init__(self, run_dir: str, reaper: ChildReaper) -> None:
        self.dir = os.path.join(run_dir, "pod")
        self._reaper = reaper
        self._holder_pid = 0
        self._holder_exit: asyncio.Future[ExitInfo] | None = None
        self._mounted: list[str] = []

    def _local(self, path: str) -> str:
        return self.dir + path[len(POD_DIR):]

    def adapt(self, spec: dict) -> set[str]:
        """Point the spec's pod paths at this agent's pod directory; what they name."""
        needed = set()
        for ns in (spec.get("linux") or {}).get("namespaces") or []:
            path = ns.get("path") if isinstance(ns, dict) else None
            if isinstance(path, str) and path.startswith(POD_NAMESPACES + "/"):
                if path[len(POD_NAMESPACES) + 1:] not in SHARED_NAMESPACES:
                    raise FailedPrecondition(f"linux.namespaces: the pod has no {path!r}")
                ns["path"] = self._local(path)
                needed.add("namespaces")
        for mount in spec.get("mounts") or []:
            if isinstance(mount, dict) and mount.get("source") == POD_SHM:
                mount["source"] = self._local(POD_SHM)
                needed.add("shm")
        return needed

    def prepare(self) -> None:
        """Everything a pod may name, made ahead of its first container."""
        self.ensure({"namespaces", "shm"})

    def set_hostname(self, name: str) -> None:
        """The pod's UTS namespace gets `name` too (a holder made before CreateSandbox has
        the hostname the VM had then). setns(CLONE_NEWUTS) moves only this thread."""
        if not self._holder_running():
            return   # a holder made later inherits the VM's, already set
        from .native import linux as L

        pod_uts = os.open(f"{self._local(POD_NAMESPACES)}/uts", os.O_RDONLY | os.O_CLOEXEC)
        own_uts = os.open("/proc/thread-self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
        try:
            L.setns(pod_uts, L.CLONE_NEWUTS)
            try:
                L.sethostname(name)
            finally:
                L.setns(own_uts, L.CLONE_NEWUTS)
        finally:
            os.close(pod_uts)
            os.close(own_uts)

    def ensure(self, needed: set[str]) -> None:
        if "namespaces" in needed and not self._holder_running():
            self._start_holder()
        if "shm" in needed and self._local(POD_SHM) not in self._mounted:
            self._mount_shm()

    def _holder_running(self) -> bool:
        return self._holder_exit is not None and not self._holder_exit.done()

    # -- creation ---------------------------------------------------------------------------------

    def _start_holder(self) -> None:
        from .native import linux as L
        from .native.fork import clone_child, handled_signals

        busybox = which("busybox")
        if busybox is None:
            raise FailedPrecondition("the pod's namespaces need busybox in the guest")
        self._release_namespaces()   # a holder that died left dead namespaces behind
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        handled = handled_signals()
        try:
            pid = clone_child(lambda: _holder(busybox, null, handled),
                              L.CLONE_NEWIPC | L.CLONE_NEWUTS | L.CLONE_NEWPID)
        finally:
            os.close(null)
        self._holder_pid, self._holder_exit = pid, self._reaper.watch_spawned(pid)
        try:
            os.makedirs(self._local(POD_NAMESPACES), mode=0o755, exist_ok=True)
            for kind in SHARED_NAMESPACES:
                target = f"{self._local(POD_NAMESPACES)}/{kind}"
                os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o444))
                L.mount(f"/proc/{pid}/ns/{kind}", target, None, L.MS_BIND)
                self._mounted.append(target)
        except BaseException:
            self._kill_holder()
            raise
        log.info("pod namespaces (ipc, uts, pid) held by pid %d", pid)

    def _mount_shm(self) -> None:
        from .native import linux as L

        target = self._local(POD_SHM)
        os.makedirs(target, mode=0o1777, exist_ok=True)
        L.mount("shm", target, "tmpfs", L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC, _SHM_OPTIONS)
        self._mounted.append(target)

    # -- teardown ---------------------------------------------------------------------------------

    async def destroy(self) -> None:
        """End the holder (its PID namespace with it) and unmount everything of the pod."""
        exit_future = self._holder_exit
        self._kill_holder()
        if exit_future is not None:
            try:
                await asyncio.wait_for(asyncio.shield(exit_future), _STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("the pod namespace holder did not exit")
        self._release_namespaces()
        for target in reversed(self._mounted):
            self._unmount(target)
        self._mounted.clear()
        remove_tree(self.dir)

    def _kill_holder(self) -> None:
        if self._holder_running():
            try:
                os.kill(self._holder_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._holder_pid, self._holder_exit = 0, None

    def _release_namespaces(self) -> None:
        for kind in SHARED_NAMESPACES:
            target = f"{self._local(POD_NAMESPACES)}/{kind}"
            if target in self._mounted:
                self._unmount(target)
                self._mounted.remove(target)

    @staticmethod
    def _unmount(target: str) -> None:
        from .native import linux as L

        try:
            L.umount2(target, L.MNT_DETACH)
        except OSError as exc:
            log.warning("cannot unmount %s: %s", target, exc.strerror)


def _holder(busybox: str, null: int, handled: list[int]) -> NoReturn:
    """In the cloned child: become the busybox holder (stdio on /dev/null, default signals)."""
    from .native import linux as L

    L.prctl(L.PR_SET_DUMPABLE, 0)
    signal.set_wakeup_fd(-1)
    for sig in handled:
        signal.signal(sig, signal.SIG_DFL)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    L.close_range_cloexec(3)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    os.execve(busybox, ["sh", "-c", _HOLDER_SCRIPT], {"PATH": "/usr/bin:/bin"})
    raise AssertionError("unreachable")

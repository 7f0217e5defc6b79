"""Stop everything the demo started, whatever state it got to, then check the host for
anything left (leftovers.py). Every step runs even when an earlier one failed."""
from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable

import psutil

import private_containerd
from leaks import TASK_DIR
from shim.shim_manager.socket_address import socket_path

from .leftovers import Footprint, leftovers
from .progress import Progress, StepFailed
from .stack import CRI_NAMESPACE, Stack
from .web_pods import RUNC_SHIM

SHIMS_EXIT_WAIT_S = 20.0
LEFTOVER_WAIT_S = 10.0


def _note_shim_sockets(stack: Stack, fp: Footprint) -> None:
    """The shim socket of every task containerd has a bundle for, also of a pod whose start
    was abandoned (CRI never named it to us)."""
    tasks = stack.layout.base / "state" / TASK_DIR
    for namespace in tasks.iterdir() if tasks.is_dir() else ():
        for bundle in namespace.iterdir():
            fp.shim_sockets.add(socket_path(stack.address, namespace.name, bundle.name))


def _stop_pods(stack: Stack, fp: Footprint, progress: Progress) -> None:
    _note_shim_sockets(stack, fp)
    if not stack.connect_cri():
        progress.detail("containerd is not running: no pods to remove")
        return
    for pod_id in stack.pod_ids():
        fp.shim_sockets.add(socket_path(stack.address, CRI_NAMESPACE, pod_id))
        stack.remove_pod(pod_id)
        progress.detail(f"removed pod {pod_id[:12]}")


def _shims_of(address: str) -> list[psutil.Process]:
    """graft and runc shims serving this containerd (pods it has not finished removing)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        joined = " ".join(proc.info["cmdline"] or []) + " "
        if f" -address {address} " in joined and ("containerd-shim-graft-v2 " in joined
                                                   or RUNC_SHIM in joined):
            found.append(proc)
    return found


def _stop_containerd(stack: Stack, progress: Progress) -> None:
    deadline = time.monotonic() + SHIMS_EXIT_WAIT_S
    while _shims_of(stack.address) and time.monotonic() < deadline:
        time.sleep(0.2)  # containerd may still be undoing a pod start the demo abandoned
    stack.purge_containerd()  # graft shims: SIGTERM, each stops its VM
    for shim in _shims_of(stack.address):  # runc shims: what is under them goes first
        for proc in [*shim.children(recursive=True), shim]:
            try:
                proc.kill()
            except psutil.Error:
                pass
        progress.detail(f"killed runc shim pid {shim.pid} and its processes")


def _remove_directory(stack: Stack, progress: Progress) -> None:
    base = stack.dirs.base
    if base.exists():
        private_containerd.unmount_under(base)
        shutil.rmtree(base)
        progress.detail(f"removed {base}")


def teardown(stack: Stack, fp: Footprint, progress: Progress) -> list[str]:
    """Run every step; the problems (failed steps, then leftovers), empty if clean."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
    progress.plain()
    progress.line("cleaning up (Ctrl-C is ignored until done)")
    if fp.bridge is None and (network := stack.network()) is not None:
        fp.bridge = network.bridge
    problems: list[str] = []
    steps: list[tuple[str, str, Callable[[], None]]] = [
        ("removing the pods", "StopPodSandbox + RemovePodSandbox",
         lambda: _stop_pods(stack, fp, progress)),
        ("graft factory destroy", "", lambda: _destroy_template(stack, progress)),
        ("stopping the private containerd", "its shims, bridge and mounts go too",
         lambda: _stop_containerd(stack, progress)),
        ("graft fork-server stop", "", lambda: _print_lines(progress, stack.graft(
            "fork-server", "stop"))),
        (f"removing {stack.dirs.base}", "", lambda: _remove_directory(stack, progress)),
    ]
    for what, how, run in steps:
        try:
            with progress.step(what, how):
                run()
        except StepFailed as exc:
            problems.append(str(exc))
            progress.detail(f"FAILED: {exc}")
    with progress.step("checking that nothing is left"):
        deadline = time.monotonic() + LEFTOVER_WAIT_S
        while (left := leftovers(fp)) and time.monotonic() < deadline:
            time.sleep(0.3)
        progress.detail(_summary(fp, left))
    problems += [f"left behind: {item}" for item in left]
    return problems


def _destroy_template(stack: Stack, progress: Progress) -> None:
    if not stack.config_path.exists():
        progress.detail("no graft config was written: no template either")
        return
    _print_lines(progress, stack.graft("factory", "destroy"))


def _print_lines(progress: Progress, text: str) -> None:
    for line in text.splitlines():
        progress.detail(line)


def _summary(fp: Footprint, left: list[str]) -> str:
    if left:
        return "LEFT BEHIND: " + "; ".join(left)
    checked = ["QEMU", "graft or runc shim", "containerd", "fork server",
               f"mount under {fp.base}", f"bridge {fp.bridge or '(none made)'}",
               f"socket of the demo ({len(fp.shim_sockets)} shim sockets, containerd's, "
               f"the fork server's)", f"directory {fp.base}"]
    return "nothing left: no " + ", no ".join(checked)

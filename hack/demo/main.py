"""The demo behind `hack/demo.sh` (after hack/setup.sh): graft end to end through
containerd's CRI, the way kubelet drives it.

    python3 -m hack.demo [--dir DIR]     # DIR: default $GRAFT_DEMO_DIR or /run/graft-demo

A private containerd 1.6 (CRI plugin, bridge CNI, runc + graft handlers); a runc pod; a graft
pod with templates disabled (cold boot); `graft factory init`; a graft pod restored from the
template. Each pod's container serves a page over HTTP that the demo fetches from the pod IP.
Then a table (pod start, VM boot, memory, boot path and why) and the cleanup: pods, template,
containerd, the shim's fork server, DIR — and a check that nothing of it is left. A failure
or Ctrl-C prints one line and still cleans up. Exit status: 0, 1 (failed or something was
left), 130 (interrupted).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import private_containerd
from shim.shim_manager.handoff import server_path

from .leftovers import Footprint
from .progress import Progress, StepFailed
from .report import PodRow, notes, table
from .stack import Stack
from .teardown import teardown
from .web_pods import fetch_page, graft_pod_memory, runc_pod_memory, start_web_pod

DEFAULT_DIR = "/run/graft-demo"  # short: socket paths below it stay under 108 bytes
INTERRUPTED = 130

INTRO = """\
graft demo: pods in VMs through containerd's CRI, as kubelet starts them
  1. a runc pod (for comparison)     2. a graft pod, cold-booted (templates disabled)
  3. graft factory init (template)   4. a graft pod restored from the template
  each pod serves HTTP on its pod IP; everything lives under {base} and is removed at the end
"""


@dataclass
class Outcome:
    rows: list[PodRow] = field(default_factory=list)
    template_s: float | None = None
    problems: list[str] = field(default_factory=list)


def _start_pod(stack: Stack, progress: Progress, name: str, handler: str):
    assert stack.cri is not None
    pod = start_web_pod(stack.cri, name, handler)
    progress.detail(f"pod {pod.pod_id[:12]} ({handler}) at {pod.ip}: serving "
                    f"{pod.start_s:.2f} s after RunPodSandbox")
    fetch_page(pod)
    progress.detail(f"GET http://{pod.ip}:8080/ → {pod.page!r}")
    return pod


def _config_note(stack: Stack, progress: Progress, enable: bool) -> None:
    stack.write_graft_config(enable_template=enable)
    progress.detail(f"graft config {stack.config_path} (the graft handler's ConfigPath, read "
                    f"by the shim at each sandbox create): [factory] enable_template = "
                    f"{str(enable).lower()}")


def run_flow(stack: Stack, fp: Footprint, progress: Progress, outcome: Outcome) -> None:
    with progress.step("private containerd", f"1.6 with the CRI plugin, in {stack.layout.base}"):
        stack.start_containerd()
        network = stack.layout.network
        fp.bridge = network.bridge
        progress.detail(f"bridge CNI {network.bridge} {network.subnet}; handlers runc and "
                        f"graft (io.containerd.graft.v2); images {private_containerd.BUSYBOX_IMAGE}"
                        f", {private_containerd.PAUSE_IMAGE} (built locally)")
        _config_note(stack, progress, enable=False)
    pods = []
    with progress.step("runc pod", "RunPodSandbox, then a busybox container serving HTTP"):
        pods.append(_start_pod(stack, progress, "demo-runc", "runc"))
    with progress.step("cold graft pod", "QEMU boots the guest kernel and agent from scratch"):
        pods.append(_start_pod(stack, progress, "demo-cold", "graft"))
    with progress.step("graft factory init", "boot a template VM, save it to a tmpfs"):
        began = time.monotonic()
        for line in stack.graft("factory", "init").splitlines():
            progress.detail(line)
        outcome.template_s = time.monotonic() - began
        _config_note(stack, progress, enable=True)
    with progress.step("graft pod from the template", "the VM is restored, not booted"):
        pods.append(_start_pod(stack, progress, "demo-template", "graft"))
    with progress.step("measuring", "graft status --json (boot path and why), PSS of each pod"):
        sandboxes = {s["id"]: s for s in json.loads(stack.graft("status", "--json"))["sandboxes"]}
        for pod in pods:
            if pod.handler == "runc":
                row = PodRow(pod, runc_pod_memory(stack.address, pod.pod_id))
            else:
                row = PodRow(pod, graft_pod_memory(stack.config, stack.address, pod.pod_id),
                             sandboxes.get(pod.pod_id))
            outcome.rows.append(row)
            progress.detail(f"{pod.name}: {row.boot_path}; PSS {row.memory_detail}")
    for row, expected in zip(outcome.rows[1:], ("cold", "restored")):
        got = (row.boot or {}).get("boot_path")
        if got != expected:
            outcome.problems.append(f"{row.pod.name} was expected to be {expected}, "
                                    f"graft status says {row.boot_path}")


def _lock(base: Path) -> int | None:
    """One demo per directory at a time; the fd holding the lock, or None if taken."""
    fd = os.open(f"{base}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None


class _Interrupt:
    """SIGINT, SIGTERM and SIGHUP stop the demo once (it then cleans up); a repeat while a
    graft command undoes what it started is ignored."""
    seen = False

    @classmethod
    def handle(cls, signum: int, frame: object) -> None:
        if not cls.seen:
            cls.seen = True
            raise KeyboardInterrupt

    @classmethod
    def install(cls) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, cls.handle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/demo.sh", description="graft end to end "
                                     "through containerd's CRI, then cleaned up")
    parser.add_argument("--dir", type=Path,
                        default=Path(os.environ.get("GRAFT_DEMO_DIR", DEFAULT_DIR)))
    base = parser.parse_args(argv).dir.resolve()
    progress = Progress()
    if os.geteuid() != 0:
        print("demo: FAILED: run it as root (containerd, QEMU, CNI)", file=sys.stderr)
        return 1
    base.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock(base)
    if lock is None:
        print(f"demo: FAILED: another demo is running in {base} ({base}.lock)", file=sys.stderr)
        return 1
    _Interrupt.install()
    stack = Stack(base)
    fp = Footprint(base, stack.address, stack.layout.config, server_path())
    outcome, failure, status = Outcome(), "", 0
    try:
        progress.plain(INTRO.format(base=base))
        if base.exists():
            progress.line(f"{base} is left from an earlier run: cleaning it up first")
            if problems := teardown(stack, fp, progress):
                raise StepFailed("could not clean up the earlier run: " + "; ".join(problems))
            _Interrupt.install()  # the cleanup ignored them
        run_flow(stack, fp, progress, outcome)
    except KeyboardInterrupt:
        failure, status = "interrupted", INTERRUPTED
    except StepFailed as exc:
        failure, status = str(exc), 1
    finally:
        problems = teardown(stack, fp, progress)
        os.unlink(f"{base}.lock")
        os.close(lock)
    if len(outcome.rows) == 3:  # all pods measured: the table
        progress.plain()
        for line in table(outcome.rows) + [""] + notes(outcome.rows, outcome.template_s):
            progress.plain(line)
    problems = outcome.problems + problems
    progress.plain()
    for problem in problems:
        progress.plain(f"demo: problem: {problem}")
    if failure:
        progress.plain(f"demo: FAILED: {failure} (everything it started was stopped)"
                       if not problems else f"demo: FAILED: {failure}")
        return status
    if problems:
        return 1
    progress.plain(f"demo: OK in {progress.elapsed():.0f} s")
    return 0

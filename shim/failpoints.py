"""Test-only fault injection at the named steps of pod and container create.

Like the failpoint shims of containerd's runc integration tests, a test makes the shim fail or
die at one step and then checks that containerd still cleans everything up. Two things must
both hold before anything fires, so production can never enable it by accident:

  * the graft config sets ``[testing] failpoints = true`` (default false; nothing graft ships
    or installs sets it), and
  * the task's OCI spec carries the annotation ``io.graft.failpoint``, e.g.
    ``vm-restored=kill`` or ``network-attached=raise,container-created=exit`` (a CRI pod
    annotation reaches the sandbox's and its containers' specs, a container annotation only that
    container's: containerd passes ``io.graft.*`` when its runtime handler lists them in
    ``pod_annotations`` / ``container_annotations``).

An annotation without the config key is ignored (logged). The plan is per shim daemon (one
daemon serves one pod), armed by ``arm`` for each task being created (tests create one at a
time) and fired by ``reach`` at each step. Actions:

  raise  the step fails with FailpointError (the RPC answers an error; the shim lives on)
  exit   the shim process exits at once (status EXIT_STATUS), nothing torn down
  kill   the shim sends itself SIGKILL

Steps are named for what has just happened, so any path that runs the same step (a cold
boot, a restore, a warm pool handoff) reaches the same name.
"""
from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping

from shim.errors import GraftError, InvalidArgument

log = logging.getLogger(__name__)

ANNOTATION = "io.graft.failpoint"
EXIT_STATUS = 86

# -- sandbox create ---------------------------------------------------------------------------
NETWORK_ATTACHED = "network-attached"    # the pod's tap is joined to its CNI interface
VM_LAUNCHED = "vm-launched"              # cold boot: the VMM runs, the agent not yet asked
VM_RESTORED = "vm-restored"              # restore: the clone is restored, still paused
VM_RESUMED = "vm-resumed"                # restore: resumed, entropy and clock not yet pushed
NIC_ATTACHED = "nic-attached"            # the guest has the pod's NIC, address and routes
SANDBOX_CREATED = "sandbox-created"      # the agent's CreateSandbox answered
# -- container create -------------------------------------------------------------------------
ROOTFS_BOUND = "rootfs-bound"            # the container's rootfs is bound into the 9p share
CONTAINER_CREATED = "container-created"  # the agent's CreateContainer answered

SANDBOX_STEPS = (NETWORK_ATTACHED, VM_LAUNCHED, VM_RESTORED, VM_RESUMED, NIC_ATTACHED,
                 SANDBOX_CREATED)
CONTAINER_STEPS = (ROOTFS_BOUND, CONTAINER_CREATED)
STEPS = SANDBOX_STEPS + CONTAINER_STEPS
ACTIONS = ("raise", "exit", "kill")

_armed: dict[str, str] = {}  # step → action, for this process


class FailpointError(GraftError):
    """What the `raise` action raises."""


def parse(value: str) -> dict[str, str]:
    """``step=action[,step=action]`` → {step: action}; InvalidArgument names what is wrong."""
    plan: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        step, sep, action = item.partition("=")
        if not sep or step not in STEPS or action not in ACTIONS:
            raise InvalidArgument(
                f"annotation {ANNOTATION}: {item!r} is not <step>=<action> with a step of "
                f"{', '.join(STEPS)} and an action of {', '.join(ACTIONS)}")
        plan[step] = action
    return plan


def arm(config_path: str, spec: Mapping) -> None:
    """Arm what the annotation of the task being created (*spec*) asks for, if the config
    allows failpoints at all; a task without it disarms. The config is read only when the
    annotation is there: no cost for any other pod."""
    _armed.clear()
    wanted = (spec.get("annotations") or {}).get(ANNOTATION)
    if not wanted:
        return
    from shim.config import load_config

    if not load_config(config_path or None).get("testing", "failpoints"):
        log.warning("annotation %s=%r ignored: [testing] failpoints is not enabled",
                    ANNOTATION, wanted)
        return
    plan = parse(wanted)
    log.warning("TEST FAILPOINTS ARMED in this shim: %s", plan)
    _armed.update(plan)


def reach(step: str) -> None:
    """Called right after *step*; does nothing unless a failpoint is armed for it."""
    action = _armed.get(step)
    if action is None:
        return
    log.warning("failpoint %s: %s", step, action)
    if action == "raise":
        raise FailpointError(f"failpoint {step}: injected failure")
    for handler in logging.getLogger().handlers:  # the last words, for the test's reader
        handler.flush()
    if action == "exit":
        os._exit(EXIT_STATUS)
    os.kill(os.getpid(), signal.SIGKILL)


def disarm() -> None:
    _armed.clear()


__all__ = ["ACTIONS", "ANNOTATION", "CONTAINER_STEPS", "FailpointError", "SANDBOX_STEPS",
           "STEPS", "arm", "disarm", "parse", "reach"]

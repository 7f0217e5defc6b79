"""The NIC a template VM is built with, and what backs it in each clone.

A clone must not hot-plug its pod's NIC: the guest would probe a new PCI device at pod start
(~0.4-1 s under TCG). So the template VM boots with a virtio-net device, and every clone
restores it. QEMU migrates the device's state (its MAC, the features it negotiated with a
vnet_hdr tap) but not its backend: the template and each clone give it a tap by fd at
launch. The template's is a transient tap that is gone with its VMM; a clone's is the pod's
tap (joined to the CNI veth by tc redirects), or, for a pod without a network, a transient
tap of its own. In the clone the agent finds the device by TEMPLATE_MAC and gives it the
pod's MAC, addresses and routes (UpdateInterface.match_hw_addr).
"""
from __future__ import annotations

import hashlib
import os

from shim.network import PodEndpoint, open_tap_fds
from shim.network.tuntap import open_transient_tap

# Locally administered, unicast: "\x02graft". Every clone's NIC starts with it.
TEMPLATE_MAC = "02:67:72:61:66:74"


def transient_tap_name(tag: str) -> str:
    """An interface name (15 bytes at most) derived from *tag*."""
    return "gn" + hashlib.sha256(tag.encode()).hexdigest()[:12]


def open_template_tap(tag: str) -> int:
    """A tap for a template build (in the caller's netns), gone when its VMM is."""
    return open_transient_tap(transient_tap_name(tag))


def open_clone_tap(endpoint: PodEndpoint | None, tag: str) -> int:
    """An fd of the tap a clone's NIC uses: the pod's, or a transient one when the pod has
    no network (the NIC then stays down, as in the template). Blocks briefly (netns)."""
    if endpoint is None:
        return open_transient_tap(transient_tap_name(tag))
    fds = open_tap_fds(endpoint.netns, endpoint.tap_name)
    for extra in fds[1:]:
        os.close(extra)
    return fds[0]

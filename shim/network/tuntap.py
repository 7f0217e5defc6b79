"""Tap devices through /dev/net/tun ioctls.

The kernel creates a tap in the netns of the thread that opens
/dev/net/tun, so call these inside run_in_netns().
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct

from shim.errors import InvalidArgument

from .model import EndpointExists

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000  # create only: fail with EBUSY if the name exists

IFNAMSIZ = 16
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name + flags, padded to 40 bytes


def validate_ifname(name: str) -> None:
    """Linux interface names: 1..15 bytes, no '/', no whitespace, not . or .."""
    raw = name.encode()
    if (not raw or len(raw) >= IFNAMSIZ or name in (".", "..")
            or "/" in name or any(c.isspace() for c in name) or ":" in name):
        raise InvalidArgument(f"invalid interface name {name!r}")


def _tap_flags(multi_queue: bool, vnet_hdr: bool) -> int:
    flags = IFF_TAP | IFF_NO_PI
    if multi_queue:
        flags |= IFF_MULTI_QUEUE
    if vnet_hdr:
        flags |= IFF_VNET_HDR
    return flags


def _set_iff(fd: int, name: str, flags: int) -> None:
    fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), flags))


def create_persistent_tap(name: str, *, multi_queue: bool = False, vnet_hdr: bool = True) -> None:
    """Create tap *name* that outlives this process's fd (the VMM attaches
    later by name or through open_tap_queue). Fails if the name exists."""
    validate_ifname(name)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        try:
            _set_iff(fd, name, _tap_flags(multi_queue, vnet_hdr) | IFF_TUN_EXCL)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise EndpointExists(f"interface {name} already exists") from None
            raise
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)


def open_tap_queue(name: str, *, multi_queue: bool = False, vnet_hdr: bool = True) -> int:
    """Attach to the existing tap *name*; returns a queue fd (O_CLOEXEC,
    blocking, caller closes it). The caller must make sure the tap exists:
    TUNSETIFF would otherwise create a new, non-persistent one."""
    validate_ifname(name)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        _set_iff(fd, name, _tap_flags(multi_queue, vnet_hdr))
    except OSError as exc:
        os.close(fd)
        if exc.errno == errno.EINVAL:
            raise InvalidArgument(f"cannot attach to {name}: not a tap device, or its "
                                  f"multi-queue setting differs from {multi_queue}") from None
        raise
    return fd


def open_transient_tap(name: str, *, vnet_hdr: bool = True) -> int:
    """Create tap *name* that lives only as long as an fd of it is open (no TUNSETPERSIST):
    handed to a VMM, it goes away with that VMM, however it ends. Returns the fd (O_CLOEXEC,
    caller closes or hands it on). Fails if the name exists."""
    validate_ifname(name)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        _set_iff(fd, name, _tap_flags(False, vnet_hdr) | IFF_TUN_EXCL)
    except OSError as exc:
        os.close(fd)
        if exc.errno == errno.EBUSY:
            raise EndpointExists(f"interface {name} already exists") from None
        raise
    return fd

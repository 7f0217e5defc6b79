"""Run a function inside a network namespace without moving the caller.

setns(CLONE_NEWNET) affects only the calling thread, so the work runs in a
fresh thread that enters the namespace and then ends: no thread (least of all
the event loop's) is ever left in the wrong namespace, and nothing needs
restoring. Sockets, netlink handles and /dev/net/tun fds opened there stay
bound to that namespace after the thread is gone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .model import NetnsNotFound, NotANetns

CLONE_NEWNET = 0x40000000

T = TypeVar("T")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_netns(netns: Path) -> int:
    """An fd of the namespace at *netns* (caller closes it)."""
    try:
        return os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsNotFound(netns) from None


def run_in_netns(netns: Path, fn: Callable[[], T]) -> T:
    """Call *fn* in a short-lived thread inside *netns*; return its result or
    raise its exception. Blocks the caller (netlink work takes milliseconds);
    from async code use asyncio.to_thread."""
    netns = Path(netns)
    fd = open_netns(netns)
    outcome: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            try:
                _setns(fd)
            except OSError as exc:
                # EINVAL: the file is not a netns (e.g. an unmounted leftover).
                if exc.errno == errno.EINVAL:
                    raise NotANetns(netns) from None
                raise
            outcome.append(fn())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    try:
        worker = threading.Thread(target=body, name=f"netns:{netns.name}")
        worker.start()
        worker.join()
    finally:
        os.close(fd)
    if failure:
        raise failure[0]
    return outcome[0]


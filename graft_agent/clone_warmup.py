"""WarmUp: a clone restored ahead of its pod (a warm pool's) does now, once, what its pod's
start would otherwise do for the first time in this VMM process.

The clone's memory holds everything the template's warm-up (graft_agent/warmup.py) did, but
its VMM starts with nothing: under TCG every guest code path runs through the translator
again on first use (a pod's first container cost ~0.17 s more than its second), and each
first touch of a template page costs a copy. So, before any pod:
  * the throwaway container again (native runtime: namespaces, mounts, cgroup, exec);
  * the NIC the pod will get (the template's, down) brought up, given and relieved of an
    address, and brought down again: the driver's open and the address paths;
  * the 9p share (tag from the host) mounted at a private point: a directory, a file
    written, read and mapped, a symlink followed, a missing name looked up, all removed
    again, and the share unmounted (CreateSandbox mounts it for the pod).
Nothing of it remains for the pod to see. Refused once the VM has a sandbox.
"""

from __future__ import annotations

import logging
import mmap
import os
import socket

from .guest import NINEP_OPTIONS
from .warmup import throwaway_container

log = logging.getLogger(__name__)

# Link-local, held for a moment on a NIC that is down and has no address of the pod yet.
_PROBE_ADDRESS = "169.254.0.1"
_SHARE_DIR = ".graft-warmup"   # never a container id (they start with a letter or digit)
_PASSWD_LINE = b"root:x:0:0:root:/root:/bin/sh\n"


async def warm_clone(agent, share_tag: str) -> None:
    if agent.containers.runtime("").name == "native":
        await throwaway_container(agent.containers, os.path.join(agent.config.run_dir, "warmup"))
    await agent.network.list_links()
    await agent.network.list_routes()
    _cycle_down_links(agent.network.netlink())
    if share_tag:
        _exercise_share(share_tag, os.path.join(agent.config.run_dir, "warmup-share"))


def _cycle_down_links(nl) -> None:
    for link in nl.links():
        if link.name == "lo" or link.up:
            continue
        nl.set_link(link.index, up=True)
        try:
            nl.add_address(link.index, socket.AF_INET, _PROBE_ADDRESS, 32)
            for address in nl.addresses():
                if address.index == link.index and address.address == _PROBE_ADDRESS:
                    nl.delete_address(address)
        finally:
            nl.set_link(link.index, up=False)


def _exercise_share(tag: str, point: str) -> None:
    from . import syscalls

    os.makedirs(point, mode=0o700, exist_ok=True)
    try:
        syscalls.mount(tag, point, "9p", 0, NINEP_OPTIONS)
    except OSError as exc:
        os.rmdir(point)
        log.warning("warm-up: cannot mount the 9p share %r: %s", tag, exc.strerror)
        return
    try:
        _exercise_directory(os.path.join(point, _SHARE_DIR))
    finally:
        syscalls.umount(point, syscalls.MNT_DETACH)
        os.rmdir(point)


def _exercise_directory(directory: str) -> None:
    os.mkdir(directory, 0o700)
    file, link = os.path.join(directory, "file"), os.path.join(directory, "link")
    try:
        fd = os.open(file, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o755)
        try:
            os.write(fd, _PASSWD_LINE * 256)
        finally:
            os.close(fd)
        os.symlink("file", link)
        os.readlink(link)
        os.stat(link)
        try:
            os.stat(os.path.join(directory, "missing"))
        except FileNotFoundError:
            pass
        fd = os.open(link, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.read(fd, 65536)
            with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mapped:
                mapped[-1:]   # page faults through the page cache (cache=mmap)
        finally:
            os.close(fd)
    finally:
        for path in (link, file):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        os.rmdir(directory)

"""Guest housekeeping: RNG reseed, clock, CPU/memory onlining, guest facts, sandbox setup."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time

from . import __version__
from .errors import AlreadyExists, DeadlineExceeded, FailedPrecondition, InvalidArgument
from .fsutil import read_text, write_text

# include/uapi/linux/random.h
RNDADDENTROPY = 0x40085203   # _IOW('R', 0x03, int[2])
RNDRESEEDCRNG = 0x5207       # _IO('R', 0x07)
_MAX_SEED = 64 * 1024

_SYS_CPU = "/sys/devices/system/cpu"
_SYS_MEMORY = "/sys/devices/system/memory"
_CPU_DIR = re.compile(r"cpu[0-9]+")
_MEMORY_DIR = re.compile(r"memory[0-9]+")
# Hot-plugged CPUs/memory blocks appear a few ms apart (ACPI work queue): poll often.
_ONLINE_POLL_S = 0.01

DEFAULT_SHARE_POINT = "/run/graft/shared"
NINEP_MSIZE = 512000  # the largest the 6.1 virtio transport accepts
# cache=mmap: mmap'd pages go through the page cache, with readahead (with cache=none a
# container's binary is faulted in one 4 KiB read per page: ~100 round trips to the host
# for busybox's first output), and writable shared mappings work (cache=none refuses them
# with EINVAL); read(), write() and metadata stay uncached, as with cache=none, so the
# host's changes (volumes) show at once.
NINEP_OPTIONS = f"trans=virtio,version=9p2000.L,cache=mmap,msize={NINEP_MSIZE}"


def reseed_random(data: bytes, device: str = "/dev/random") -> None:
    """Mix host-provided bytes into the pool, credit them, and force a CRNG reseed, so a
    restored clone stops producing the same random numbers as its template siblings."""
    import fcntl
    import struct

    if not data:
        raise InvalidArgument("ReseedRandomDev needs at least one byte")
    if len(data) > _MAX_SEED:
        raise InvalidArgument(f"ReseedRandomDev takes at most {_MAX_SEED} bytes")
    # struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    info = bytearray(struct.pack("ii", len(data) * 8, len(data)) + data)
    fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, RNDADDENTROPY, info, True)  # mutable buffer: no 1 KiB ioctl arg limit
        fcntl.ioctl(fd, RNDRESEEDCRNG)
    finally:
        os.close(fd)


def set_wall_clock(sec: int, usec: int) -> None:
    if sec <= 0 or not 0 <= usec < 1_000_000:
        raise InvalidArgument(f"invalid time {sec}s + {usec}us")
    time.clock_settime_ns(time.CLOCK_REALTIME, sec * 1_000_000_000 + usec * 1000)


def online_cpus() -> int:
    return os.sysconf("SC_NPROCESSORS_ONLN")


def _bring_online(base: str, pattern: re.Pattern, state_file: str, offline: str,
                  online: str) -> None:
    """Write `online` into <base>/<entry>/<state_file> of every entry that reads `offline`."""
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(base, name, state_file)
        if not pattern.fullmatch(name) or read_text(path).strip() != offline:
            continue
        try:
            write_text(path, online)
        except OSError:
            pass  # the kernel may refuse for now (e.g. a block not ready); retried next round


def memory_block_size() -> int:
    """Bytes per memory block (0 when the kernel has no memory hot-plug)."""
    block = read_text(os.path.join(_SYS_MEMORY, "block_size_bytes")).strip()
    return int(block, 16) if block else 0


def online_memory_bytes() -> int:
    """Memory in online blocks (boot RAM included)."""
    try:
        names = os.listdir(_SYS_MEMORY)
    except FileNotFoundError:
        return 0
    online = sum(1 for name in names if _MEMORY_DIR.fullmatch(name)
                 and read_text(os.path.join(_SYS_MEMORY, name, "state")).strip() == "online")
    return online * memory_block_size()


async def online_cpu_mem(wanted_cpus: int, cpu_only: bool, wanted_memory: int = 0,
                         timeout: float = 10.0) -> None:
    """Online hot-plugged CPUs (and memory blocks unless cpu_only). Hot-plug
    notifications arrive asynchronously, so with wanted_cpus > 0 wait until
    that many CPUs are online, and with wanted_memory > 0 (bytes) until that
    much memory is."""
    if cpu_only:
        wanted_memory = 0
    deadline = time.monotonic() + timeout
    while True:
        _bring_online(_SYS_CPU, _CPU_DIR, "online", "0", "1")
        if not cpu_only:
            _bring_online(_SYS_MEMORY, _MEMORY_DIR, "state", "offline", "online")
        cpus_ok = wanted_cpus == 0 or online_cpus() >= wanted_cpus
        memory_ok = wanted_memory == 0 or online_memory_bytes() >= wanted_memory
        if cpus_ok and memory_ok:
            return
        if time.monotonic() > deadline:
            missing = [] if cpus_ok else [f"only {online_cpus()} of {wanted_cpus} CPUs"]
            if not memory_ok:
                missing.append(f"only {online_memory_bytes() >> 20} of "
                               f"{wanted_memory >> 20} MiB of memory")
            raise DeadlineExceeded(" and ".join(missing) + f" came online within {timeout:.0f}s")
        await asyncio.sleep(_ONLINE_POLL_S)


def guest_details(default_runtime: str, started_at: float) -> dict:
    mem_total = 0
    for line in read_text("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_total = int(line.split()[1]) * 1024
            break
    return {
        "agent_version": __version__,
        "kernel_release": os.uname().release,
        "boot_id": read_text("/proc/sys/kernel/random/boot_id").strip(),
        "online_cpus": online_cpus(),
        "memory_total_bytes": mem_total,
        "mem_block_size_bytes": memory_block_size(),
        "default_runtime": default_runtime,
        "agent_uptime_s": process_uptime(started_at),
    }


def process_uptime(started_at: float) -> float:
    """Seconds since this process started (python's own start-up included: the part of a
    cold boot the agent is responsible for); `started_at` (monotonic) is the fallback."""
    try:
        fields = read_text("/proc/self/stat").rsplit(")", 1)[1].split()
        start = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in ticks
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - start)
    except (IndexError, ValueError, OSError):
        return time.monotonic() - started_at


class Sandbox:
    """The VM-wide setup CreateSandbox asks for, and its undoing."""

    def __init__(self, resolv_conf: str = "/etc/resolv.conf") -> None:
        self._resolv_conf = resolv_conf
        self.sandbox_id: str | None = None
        self._share_point: str | None = None

    @property
    def created(self) -> bool:
        return self.sandbox_id is not None

    def create(self, sandbox_id: str, hostname: str, share_tag: str, share_point: str,
               dns: list[str]) -> None:
        if self.created:
            raise AlreadyExists(f"sandbox {self.sandbox_id} already exists")
        if hostname:
            try:
                socket.sethostname(hostname)
            except (OSError, ValueError) as exc:
                raise InvalidArgument(f"cannot set hostname {hostname!r}: {exc}") from None
        if share_tag:
            self._mount_share(share_tag, share_point or DEFAULT_SHARE_POINT)
        if dns:
            write_text(self._resolv_conf, "".join(line.rstrip("\n") + "\n" for line in dns))
        self.sandbox_id = sandbox_id or "sandbox"

    def _mount_share(self, tag: str, point: str) -> None:
        from . import syscalls

        if not os.path.isabs(point):
            raise InvalidArgument(f"share_mount_point must be absolute, got {point!r}")
        os.makedirs(point, exist_ok=True)
        try:
            # No nosuid/nodev: container rootfs trees live here and may need both.
            syscalls.mount(tag, point, "9p", 0, NINEP_OPTIONS)
        except OSError as exc:
            raise FailedPrecondition(f"cannot mount the 9p share {tag!r} on {point}: "
                                     f"{exc.strerror}") from None
        self._share_point = point

    def destroy(self) -> None:
        if self._share_point is not None:
            from . import syscalls

            try:
                syscalls.umount(self._share_point, syscalls.MNT_DETACH)
            except OSError as exc:
                raise FailedPrecondition(f"cannot unmount {self._share_point}: {exc.strerror}") from None
            self._share_point = None
        self.sandbox_id = None

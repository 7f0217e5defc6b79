"""What the demo could leave behind, looked for on the host after teardown: processes (QEMU,
graft and runc shims, containerd, the fork server), mounts under its directory, its bridge,
sockets (listening or as files) and the directory itself."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import psutil

from leaks import mount_points
from shim.shim_manager.daemon_process import SHIM_NAME, is_shim_process

from .web_pods import RUNC_SHIM

VMM_NAMES = ("qemu-system", "cloud-hypervisor")


@dataclass
class Footprint:
    """Everything that names the demo: its directory, its containerd, its network bridge,
    the fork server its shims used and the shim sockets of its pods."""
    base: Path
    containerd_address: str
    containerd_config: Path
    fork_server: str
    bridge: str | None = None
    shim_sockets: set[Path] = field(default_factory=set)


def _under(path: str, base: Path) -> bool:
    return path == str(base) or path.startswith(f"{base}/")


def _process_leftovers(fp: Footprint) -> list[str]:
    found = []
    fork_server_title = f"{SHIM_NAME} fork-server {fp.fork_server}"
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or []
        if not argv:
            continue
        joined = " ".join(a for a in argv if a)  # a set process title pads with ''
        exe = argv[0].rsplit("/", 1)[-1]
        if exe.startswith(VMM_NAMES) and f"{fp.base}/" in joined:
            found.append(f"VMM pid {proc.pid} ({exe})")
        elif is_shim_process(argv, fp.containerd_address):
            found.append(f"graft shim pid {proc.pid}")
        elif exe == RUNC_SHIM and f" -address {fp.containerd_address} " in f"{joined} ":
            found.append(f"runc shim pid {proc.pid}")
        elif str(fp.containerd_config) in argv:
            found.append(f"containerd pid {proc.pid}")
        elif joined == fork_server_title:
            found.append(f"fork server pid {proc.pid}")
    return found


def _bound_unix_paths() -> set[str]:
    """Paths of bound unix sockets on the host (/proc/net/unix: this netns)."""
    paths = set()
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            if len(fields) >= 8 and fields[7].startswith("/"):
                paths.add(fields[7])
    return paths


def leftovers(fp: Footprint) -> list[str]:
    """One line per thing that remains; empty when the host is as before the demo."""
    found = _process_leftovers(fp)
    found += [f"mount {point}" for point in mount_points() if _under(point, fp.base)]
    if fp.bridge and Path(f"/sys/class/net/{fp.bridge}").exists():
        found.append(f"network link {fp.bridge}")
    sockets = {str(p) for p in fp.shim_sockets} | {fp.fork_server, fp.containerd_address}
    bound = _bound_unix_paths()
    found += [f"listening socket {path}" for path in sorted(bound)
              if path in sockets or _under(path, fp.base)]
    found += [f"socket file {path}" for path in sorted(sockets)
              if Path(path).exists() and path not in bound]
    if fp.base.exists():
        found.append(f"directory {fp.base}")
    return found

"""`containerd-shim-graft-v2 start`: find or launch the pod's shim daemon, print its address.

containerd reads stdout+stderr together as the address, so nothing else may be printed. The
socket listens before we exit (containerd dials once); the daemon inherits it as LISTEN_FD.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .args import ShimArgs, to_argv
from shim.task.bundle import bundle_info, read_spec
from .runtime_options import CONFIG_ENV, save_config_path
from . import socket_address

LISTEN_FD_ENV = "GRAFT_SHIM_LISTEN_FD"
GROUP_ENV = "GRAFT_SHIM_GROUP"


def start(args: ShimArgs, config_path: str, socket_dir: Path = socket_address.SOCKET_DIR) -> str:
    """Return the address to print."""
    info = bundle_info(args.id, read_spec(args.bundle))
    save_config_path(args.bundle, config_path)
    path = socket_address.socket_path(args.address, args.namespace, info.sandbox_id, socket_dir)
    if not info.is_sandbox and socket_address.accepts(path):
        write_address_file(args.bundle, socket_address.to_uri(path))
        return socket_address.to_uri(path)

    sock = socket_address.bind_listening(path)
    try:
        _spawn_daemon(args, sock.fileno(), info.sandbox_id, config_path)
    except BaseException:
        socket_address.remove(path)
        raise
    finally:
        sock.close()  # the daemon holds its own copy
    write_address_file(args.bundle, socket_address.to_uri(path))
    return socket_address.to_uri(path)


def _spawn_daemon(args: ShimArgs, listen_fd: int, group_id: str, config_path: str) -> None:
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env[LISTEN_FD_ENV] = str(listen_fd)
    env[GROUP_ENV] = group_id
    if config_path:
        env[CONFIG_ENV] = config_path
    with open(os.devnull, "r+b") as devnull:
        # A new session, stdio on /dev/null: never hold containerd's pipes open.
        subprocess.Popen([sys.executable, "-m", "shim.cli.shim_main", *to_argv(args)],
                         stdin=devnull, stdout=devnull, stderr=devnull, pass_fds=(listen_fd,),
                         cwd=str(args.bundle), env=env, start_new_session=True, close_fds=True)
    # Not waited for: the daemon outlives us and is adopted by init (or containerd's subreaper).


def write_address_file(bundle: Path, address: str) -> None:
    """Atomically write bundle/address (containerd 1.6/1.7 reconnect through it)."""
    tmp = bundle / ".address.tmp"
    tmp.write_text(address)
    os.replace(tmp, bundle / "address")

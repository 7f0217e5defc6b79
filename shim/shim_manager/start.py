"""`containerd-shim-graft-v2 start`: find or launch the pod's shim daemon, print its address.

containerd reads stdout+stderr together as the address, so nothing else may be printed. The
socket listens before we exit (containerd dials once). For an app container of a running pod
`start` only finds the pod's socket; for a pod it binds the socket and hands it to a daemon:
forked by the fork server when one serves this code tree (the daemon is up in milliseconds),
else forked from this very process (no second interpreter start), starting a fork server in
the background for the next pod.

Kept to the standard library and a handful of modules: containerd runs this for every
container it creates (bench/shim_start.py).
"""
from __future__ import annotations

import os
from pathlib import Path

from . import handoff, socket_address
from .args import ShimArgs, to_argv
from .runtime_options import save_config_path
from shim.task.bundle import bundle_info, read_spec
from shim.timeline import START_EXEC_ENV, process_start_wall_time


def start(args: ShimArgs, config_path: str, socket_dir: Path = socket_address.SOCKET_DIR,
          use_fork_server: bool = True) -> str:
    """Return the address to print."""
    info = bundle_info(args.id, read_spec(args.bundle))
    save_config_path(args.bundle, config_path)
    path = socket_address.socket_path(args.address, args.namespace, info.sandbox_id, socket_dir)
    address = socket_address.to_uri(path)
    if not info.is_sandbox and socket_address.accepts(path):
        write_address_file(args.bundle, address)
        return address

    sock = socket_address.bind_listening(path)
    try:
        _launch_daemon(args, sock.fileno(), config_path, use_fork_server)
    except BaseException:
        socket_address.remove(path)
        raise
    finally:
        sock.close()  # the daemon holds its own copy
    write_address_file(args.bundle, address)
    return address


def _launch_daemon(args: ShimArgs, listen_fd: int, config_path: str,
                   use_fork_server: bool) -> None:
    environ = dict(os.environ)
    environ[START_EXEC_ENV] = repr(process_start_wall_time())
    if config_path:
        environ["GRAFT_CONFIG"] = config_path
    server = handoff.server_path()
    if use_fork_server:
        request = {"stamp": handoff.code_stamp(), "args": to_argv(args), "bundle": args.bundle,
                   "config_path": config_path, "env": environ}
        if handoff.request_daemon(server, request, listen_fd) is not None:
            return
    from .daemon_process import fork_daemon

    fork_daemon(args, listen_fd, config_path, environ, double_fork=False)
    if use_fork_server:
        handoff.spawn_server(server)


def write_address_file(bundle: str, address: str) -> None:
    """Atomically write bundle/address (containerd 1.6/1.7 reconnect through it)."""
    tmp = os.path.join(bundle, ".address.tmp")
    with open(tmp, "w") as f:
        f.write(address)
    os.replace(tmp, os.path.join(bundle, "address"))

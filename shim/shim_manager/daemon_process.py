"""Turning a freshly forked process into the pod's shim daemon.

Both ways a daemon comes to life end here: forked by the fork server (pre-imported, the fast
path) or forked by `start` itself (when no fork server answers). The process names itself
like every containerd shim (`containerd-shim-graft-v2 -namespace … -id … -address …`),
detaches from the caller's session and stdio, and serves until it exits.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable

from .args import ShimArgs, to_argv

SHIM_NAME = "containerd-shim-graft-v2"
# The dispositions a fresh Python daemon has, whatever the fork server set. SIGPIPE stays
# ignored: the log fifo loses its reader whenever containerd restarts, and a write to it must
# fail (the handler drops the line), not kill the shim.
_DISPOSITIONS = {signal.SIGCHLD: signal.SIG_DFL, signal.SIGTERM: signal.SIG_DFL,
                 signal.SIGHUP: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler,
                 signal.SIGPIPE: signal.SIG_IGN}


def detach_stdio() -> None:
    """stdin/stdout/stderr on /dev/null: containerd reads `start`'s output until EOF, so a
    daemon must never hold those pipes."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def process_title(args: ShimArgs) -> str:
    return " ".join([SHIM_NAME, *to_argv(args)])


def is_shim_process(cmdline: list[str], containerd_address: str | None = None) -> bool:
    """A graft shim daemon (by its title) or a start/delete run (by its argv), optionally of
    one containerd. The fork server names no containerd and never matches an address."""
    joined = " ".join(cmdline) + " "
    if SHIM_NAME + " " not in joined:
        return False
    return containerd_address is None or f" -address {containerd_address} " in joined


def become_pod_daemon(args: ShimArgs, config_path: str,
                      environ: dict[str, str] | None = None) -> None:
    """Name, signals, environment, cwd and logging of the pod's daemon (this process)."""
    import setproctitle

    # First: it finds the room for the title next to the original environment, which
    # replacing os.environ below moves away.
    setproctitle.setproctitle(process_title(args))
    for sig, disposition in _DISPOSITIONS.items():
        signal.signal(sig, disposition)
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    os.chdir(args.bundle)
    from .logging_setup import log_level, setup_logging

    setup_logging(args.bundle, log_level(config_path, args.debug), "serve")


def run_daemon(args: ShimArgs, listen_fd: int, config_path: str,
               environ: dict[str, str] | None = None) -> None:
    """Never returns: serves the pod on *listen_fd*, then exits the process."""
    status = 1
    try:
        become_pod_daemon(args, config_path, environ)
        from .daemon import serve

        status = serve(args, listen_fd, config_path)
    finally:
        os._exit(status)


def fork_daemon(args: ShimArgs, listen_fd: int, config_path: str,
                environ: dict[str, str] | None = None, *, double_fork: bool,
                close: tuple[int, ...] = ()) -> int:
    """Fork the daemon off the calling process; returns its pid (in the caller).

    double_fork: the daemon must not stay the caller's child (the fork server lives on);
    `start` exits right away, so one fork is enough there (the daemon is re-parented).
    close: the caller's fds the daemon must not keep (the fork server's sockets)."""
    def daemon() -> None:
        run_daemon(args, listen_fd, config_path, environ)

    if double_fork:
        return fork_detached(daemon, close)
    pid = os.fork()
    if pid == 0:
        os.setsid()
        detach_stdio()
        _close(close)
        daemon()
    return pid


def fork_detached(run: Callable[[], None], close: tuple[int, ...] = ()) -> int:
    """Run *run* (which never returns) in a grandchild in a session of its own, stdio on
    /dev/null, *close* closed: nobody's child once the middle process exits. Its pid."""
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(read_end)
            os.setsid()
            pid = os.fork()
            if pid == 0:
                os.close(write_end)
                detach_stdio()
                _close(close)
                run()
            os.write(write_end, str(pid).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        reported = os.read(read_end, 32)
    finally:
        os.close(read_end)
        os.waitpid(middle, 0)
    if not reported:
        raise OSError("the process could not be forked")
    return int(reported)


def _close(fds: tuple[int, ...]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass

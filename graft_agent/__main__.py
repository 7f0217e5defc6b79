"""Entry point: `python3 -m graft_agent` (PID 1 in the VM, or --listen unix:PATH for tests)."""

from __future__ import annotations

import logging
import os
import sys

from . import config as config_mod


class _FdHandler(logging.Handler):
    """Writes straight to fd 2: PID 1 may start without a usable sys.stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            os.write(2, (self.format(record) + "\n").encode(errors="replace"))
        except OSError:
            pass


def _setup_logging(level: str) -> None:
    # Under TCG a log call cost ~2 ms, mostly what the format never shows: the caller's
    # frame, file and line (a walk up the stack), thread and process names.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = _FdHandler()
    handler.setFormatter(logging.Formatter(
        f"graft-agent[{os.getpid()}] %(relativeCreated)7.0fms %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _read_cmdline() -> str:
    try:
        with open("/proc/cmdline") as f:
            return f.read()
    except OSError:
        return ""


def _isolate(config: config_mod.Config) -> None:
    """Development hosts: private namespaces so the agent can mount cgroup2 and set a
    hostname without touching the host (whose /sys/fs/cgroup may be cgroup v1)."""
    from . import pid1, syscalls

    flags = syscalls.CLONE_NEWNS | syscalls.CLONE_NEWUTS
    if config.isolate_net:
        flags |= syscalls.CLONE_NEWNET
    syscalls.unshare(flags)
    syscalls.mount("none", "/", "", syscalls.MS_REC | syscalls.MS_PRIVATE)
    if config.isolate_net:  # sysfs shows the links of the netns that mounted it
        syscalls.mount("sysfs", "/sys", "sysfs", syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC)
    if pid1.mount_type("/sys/fs/cgroup") != "cgroup2":
        syscalls.mount("cgroup2", "/sys/fs/cgroup", "cgroup2",
                       syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC)
    if config.isolate_net:
        pid1.loopback_up()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        config = config_mod.parse(argv)
    except config_mod.HelpRequested:
        sys.stdout.write(config_mod.USAGE)
        return 0
    except config_mod.UsageError as exc:
        sys.stderr.write(f"graft_agent: {exc}\n{config_mod.USAGE}")
        return 2
    _setup_logging(config.log_level)
    if config.init:
        return _run_as_init(argv, config.modules_list)
    from . import syscalls

    if config.isolate:
        _isolate(config)
    syscalls.set_child_subreaper()  # container processes reparent to us, not to the real init
    return _serve(config)


def _serve(config: config_mod.Config) -> int:
    import asyncio
    import signal

    from . import pid1
    from .agent import serve

    if os.getpid() == 1:
        # PID 1 receives only the signals it handles, and asyncio.run would handle SIGINT
        # (cancelling the server): a `kill -INT 1` from a container sharing our PID namespace
        # (hostPID) would power the VM off. asyncio.run leaves an ignored SIGINT alone.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        asyncio.run(serve(config, no_pivot=pid1.root_is_initramfs()))
    except KeyboardInterrupt:
        pass
    return 0


def _run_as_init(argv: list[str], modules_list: str) -> int:
    """PID 1 never returns: when serving ends for any reason the VM powers off."""
    from . import pid1

    log = logging.getLogger("graft_agent")
    try:
        pid1.early_init(modules_list)
        config = config_mod.parse(argv, _read_cmdline())  # /proc is mounted only now
        _setup_logging(config.log_level)
        _serve(config)
        log.critical("agent server ended")
    except BaseException as exc:  # noqa: BLE001 - PID 1 must survive to power off cleanly
        log.critical("agent failed: %s: %s", type(exc).__name__, exc, exc_info=True)
    pid1.power_off()
    import signal

    while True:  # poweroff failed: exiting would panic the kernel, so idle instead
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())

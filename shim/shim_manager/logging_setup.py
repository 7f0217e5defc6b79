"""Shim logs go to the bundle's `log` fifo, which containerd reads into its own log."""
from __future__ import annotations

import logging
import os
from pathlib import Path


class _FifoHandler(logging.Handler):
    """Non-blocking writes: a stalled or absent containerd reader drops lines, never blocks."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            os.write(self._fd, (self.format(record) + "\n").encode(errors="replace"))
        except OSError:
            pass

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass
        super().close()


def log_level(config_path: str, debug: bool) -> int:
    """-debug (containerd runs at debug level) forces DEBUG; else `[runtime] log_level` of the
    config. A config that cannot be read logs at INFO: the error itself is reported by whoever
    needs the config (`start` fails with it when the VM is launched)."""
    if debug:
        return logging.DEBUG
    from shim.config import ConfigError, load_config

    try:
        name = load_config(config_path or None).get("runtime", "log_level")
    except (ConfigError, OSError):
        return logging.INFO
    return logging.getLevelName(str(name).upper())


def replace_handlers(handler: logging.Handler) -> None:
    """*handler* becomes the only one; inherited ones (a process forked off the fork server
    inherits its log file) are closed here, not in their owner."""
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]


def setup_logging(bundle: str | Path, level: int, component: str) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    try:
        fd = os.open(os.path.join(bundle, "log"), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        # No fifo or no reader: stay silent. stdout/stderr are not ours to use (`start`'s are
        # read as the address), and without a handler logging's last resort writes warnings
        # to stderr.
        replace_handlers(logging.NullHandler())
        return
    handler = _FifoHandler(fd)
    handler.setFormatter(logging.Formatter(
        f'time="%(asctime)s" level=%(levelname)s msg="%(message)s" runtime=graft '
        f'component={component} logger=%(name)s'))
    replace_handlers(handler)

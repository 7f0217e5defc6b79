"""containerd-shim-graft-v2: the binary containerd runs for runtime io.containerd.graft.v2.

`start` runs for every container containerd creates, so this module and what `start` needs
import only a few standard modules; logging, the config and protobuf load only where needed.
"""
from __future__ import annotations

import os
import sys

VERSION = "0.1.0"


def main(argv: list[str] | None = None) -> int:
    from shim.shim_manager.args import Action, ArgsError, parse_args

    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except ArgsError as exc:
        # Only `start` output is read as the address; an argv error is not a start.
        print(f"containerd-shim-graft-v2: {exc}", file=sys.stderr)
        return 2
    if args.action is Action.VERSION:
        print(f"containerd-shim-graft-v2:\n  Version: {VERSION}\n  Runtime: io.containerd.graft.v2")
        return 0
    if args.action is Action.SERVE:
        print("containerd-shim-graft-v2: run by containerd with `start`", file=sys.stderr)
        return 2
    from shim.shim_manager.runtime_options import resolve_config_path, saved_config_path

    try:
        if args.action is Action.START:
            from shim.shim_manager.start import start

            address = start(args, resolve_config_path(sys.stdin.buffer.read()))
            sys.stdout.write(address)
        else:
            from shim.shim_manager.delete import delete

            config_path = saved_config_path(args.bundle) or resolve_config_path(b"")
            _log_to_containerd(args, config_path)
            sys.stdout.buffer.write(delete(args, config_path))
        sys.stdout.flush()
    except Exception as exc:  # one line; containerd shows it in its error
        _report(args, exc)
        return 1
    return 0


def _log_to_containerd(args, config_path: str) -> None:
    from shim.shim_manager.logging_setup import log_level, setup_logging

    setup_logging(args.bundle, log_level(config_path, args.debug), args.action.value)


def _report(args, exc: Exception) -> None:
    """A failure: the traceback to containerd's log (the bundle's fifo), one line to stderr."""
    import logging

    if not logging.getLogger().handlers:
        try:
            _log_to_containerd(args, os.environ.get("GRAFT_CONFIG", ""))
        except Exception:  # noqa: BLE001 - the one line below still reaches containerd
            pass
    logging.getLogger(__name__).error("%s failed", args.action.value, exc_info=exc)
    print(f"{args.action.value}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

"""containerd-shim-graft-v2: the binary containerd runs for runtime io.containerd.graft.v2."""
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

    from shim.shim_manager.logging_setup import log_level, setup_logging
    from shim.shim_manager.runtime_options import (CONFIG_ENV, resolve_config_path,
                                                   saved_config_path)

    # The config decides the log level, so find it before logging starts.
    if args.action is Action.SERVE:
        config_path = os.environ.get(CONFIG_ENV, "")
    elif args.action is Action.START:
        config_path = resolve_config_path(sys.stdin.buffer.read())
    else:  # delete: `start` left the path in the bundle
        config_path = saved_config_path(args.bundle) or resolve_config_path(b"")
    setup_logging(args.bundle, log_level(config_path, args.debug), args.action.value)
    if args.action is Action.SERVE:
        from shim.shim_manager.daemon import serve
        from shim.shim_manager.start import LISTEN_FD_ENV

        fd = os.environ.get(LISTEN_FD_ENV)
        if not fd:
            print("containerd-shim-graft-v2: run by containerd with `start`", file=sys.stderr)
            return 2
        return serve(args, int(fd), config_path)

    try:
        if args.action is Action.START:
            from shim.shim_manager.start import start

            sys.stdout.write(start(args, config_path))
        else:
            from shim.shim_manager.delete import delete

            sys.stdout.buffer.write(delete(args, config_path))
        sys.stdout.flush()
    except Exception as exc:  # one line; containerd shows it in its error
        import logging

        logging.getLogger(__name__).exception("%s failed", args.action.value)
        print(f"{args.action.value}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

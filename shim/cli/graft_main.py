"""`graft`: the admin and developer CLI.

    graft guest build [--output DIR] [--force]
    graft debug run [-t] [-e K=V]... [-w DIR] ROOTFS -- CMD [ARGS...]
    graft factory init|status|destroy
    graft fork-server stop [--socket PATH]
    graft check | status [--json] | metrics | config
Exit status 125 means graft itself failed (as with docker/runsc); anything
else from `debug run` is the container command's own status.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

GRAFT_FAILED = 125


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graft", description="graft: pods in VMs restored "
                                "from templates")
    p.add_argument("--config", help="configuration file (default: $GRAFT_CONFIG or "
                   "/etc/graft/configuration.toml)")
    p.add_argument("--log-level", default="warning",
                   choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)

    guest = sub.add_parser("guest", help="guest image").add_subparsers(dest="action",
                                                                        required=True)
    build = guest.add_parser("build", help="build the guest kernel + initramfs")
    build.add_argument("--output", type=Path, help="output directory "
                       "(default: [guest] image_dir, /var/lib/graft/guest)")
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")

    debug = sub.add_parser("debug", help="developer tools").add_subparsers(dest="action",
                                                                           required=True)
    run = debug.add_parser("run", help="run CMD in a container on ROOTFS inside a fresh VM")
    run.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    run.add_argument("-e", "--env", action="append", default=[], help="KEY=VALUE")
    run.add_argument("-w", "--cwd", default="/", help="working directory in the container")
    run.add_argument("rootfs", type=Path)
    run.add_argument("cmd", nargs=argparse.REMAINDER)

    factory = sub.add_parser("factory", help="VM templates").add_subparsers(dest="action",
                                                                           required=True)
    factory.add_parser("init", help="build the template (idempotent)")
    factory.add_parser("status", help="is a usable template there, and if not why")
    factory.add_parser("destroy", help="remove the template")

    fork = sub.add_parser("fork-server", help="the shim's fork server").add_subparsers(
        dest="action", required=True)
    stop = fork.add_parser("stop", help="make it exit now (running pods are not affected)")
    stop.add_argument("--socket", help="its socket (default: this interpreter's and graft "
                      "tree's, under /run/graft-shim)")

    sub.add_parser("check", help="report host readiness")
    status = sub.add_parser("status", help="list sandboxes and how each VM was booted")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("metrics", help="boot path of every sandbox, Prometheus text format")
    sub.add_parser("config", help="print the default configuration, every key documented")
    return p


def _dispatch(args: argparse.Namespace) -> int:
    from shim.config import load_config, render_default_config

    if args.command == "config":
        sys.stdout.write(render_default_config())
        return 0
    if args.command == "fork-server":
        from shim.cli.fork_server import run_fork_server
        return run_fork_server(args.action, args.socket)
    config = load_config(args.config)
    if args.command == "guest":
        from shim.guest_image.cli import run_build
        return run_build(config, output=args.output, force=args.force)
    if args.command == "debug":
        from shim.cli.debug_run import DebugRunRequest, debug_run
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            raise ValueError("debug run: no command given (usage: graft debug run ROOTFS -- "
                             "CMD [ARGS...])")
        return debug_run(config, DebugRunRequest(rootfs=args.rootfs, command=tuple(cmd),
                                                 terminal=args.tty, env=tuple(args.env),
                                                 cwd=args.cwd))
    if args.command == "factory":
        from shim.factory.cli import run_factory
        return run_factory(config, args.action)
    if args.command == "check":
        from shim.cli.check import run_check
        return run_check(config)
    if args.command == "status":
        from shim.cli.status import run_status
        return run_status(config, as_json=args.json)
    if args.command == "metrics":
        from shim.cli.status import run_metrics
        return run_metrics(config)
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="graft: %(levelname)s %(name)s: %(message)s")
    from shim.errors import describe_failure

    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = describe_failure(exc)
        if message is None:
            raise
        print(f"graft: error: {message}", file=sys.stderr)
        return GRAFT_FAILED


if __name__ == "__main__":
    sys.exit(main())

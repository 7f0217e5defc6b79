"""containerd-shim-graft-v2 command line → one frozen dataclass (no flag globals)."""
from __future__ import annotations

import argparse
import enum
import os
from dataclasses import dataclass
from pathlib import Path


class Action(enum.Enum):
    START = "start"
    DELETE = "delete"
    SERVE = "serve"      # the long-running daemon (`start` re-executes us without an action)
    VERSION = "version"


@dataclass(frozen=True)
class ShimArgs:
    action: Action
    namespace: str
    address: str          # containerd's grpc socket
    publish_binary: str   # containerd binary, used as fallback event publisher
    id: str
    bundle: Path
    debug: bool


class ArgsError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # never print usage to stderr: `start` output must stay clean
        raise ArgsError(message)


def parse_args(argv: list[str], cwd: Path | None = None) -> ShimArgs:
    """Parse Go-style single-dash flags and the trailing action word."""
    parser = _Parser(prog="containerd-shim-graft-v2", add_help=False, allow_abbrev=False)
    parser.add_argument("-namespace", "--namespace", default="")
    parser.add_argument("-address", "--address", default="")
    parser.add_argument("-publish-binary", "--publish-binary", dest="publish_binary", default="")
    parser.add_argument("-id", "--id", default="")
    parser.add_argument("-bundle", "--bundle", default="")
    parser.add_argument("-socket", "--socket", default="")  # passed by some containerd versions
    parser.add_argument("-debug", "--debug", action="store_true")
    parser.add_argument("-v", "--version", action="store_true")
    parser.add_argument("action", nargs="?", default="")
    ns = parser.parse_args(_normalise_bool_flags(argv))

    if ns.version:
        action = Action.VERSION
    elif ns.action in ("start", "delete"):
        action = Action(ns.action)
    elif ns.action == "":
        action = Action.SERVE
    else:
        raise ArgsError(f"unknown action {ns.action!r} (expected start or delete)")
    if action is not Action.VERSION:
        if not ns.namespace:
            raise ArgsError("-namespace is required")
        if not ns.id:
            raise ArgsError("-id is required")
    bundle = Path(ns.bundle) if ns.bundle else (cwd or Path(os.getcwd()))
    return ShimArgs(action=action, namespace=ns.namespace, address=ns.address,
                    publish_binary=ns.publish_binary, id=ns.id, bundle=bundle.resolve(),
                    debug=ns.debug)


def _normalise_bool_flags(argv: list[str]) -> list[str]:
    # Go accepts "-debug=true"/"-debug=false"; argparse store_true does not.
    out = []
    for arg in argv:
        flag, _, value = arg.partition("=")
        if flag.lstrip("-") == "debug" and value:
            if value.lower() in ("1", "t", "true"):
                out.append("-debug")
            continue
        out.append(arg)
    return out


def to_argv(args: ShimArgs) -> list[str]:
    """Flags for re-executing ourselves as the daemon (no action word)."""
    argv = ["-namespace", args.namespace, "-address", args.address,
            "-publish-binary", args.publish_binary, "-id", args.id, "-bundle", str(args.bundle)]
    if args.debug:
        argv.append("-debug")
    return argv

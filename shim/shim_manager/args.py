"""containerd-shim-graft-v2 command line → one immutable ShimArgs (no flag globals).

Parsed by hand, the way Go's flag package reads it (`-flag value`, `-flag=value`, `--flag`,
booleans as `-debug` or `-debug=false`): `start` runs for every container containerd creates
and must not pay argparse's or dataclasses' import time (bench/shim_start.py).
"""
from __future__ import annotations

import enum
import os
from collections import namedtuple


class Action(enum.Enum):
    START = "start"
    DELETE = "delete"
    SERVE = "serve"      # the long-running daemon (`start` forks or hands off; no action word)
    VERSION = "version"


class ArgsError(ValueError):
    pass


_Fields = namedtuple("_Fields", "action namespace address publish_binary id bundle debug")


class ShimArgs(_Fields):
    """action: Action; namespace; address: containerd's grpc socket; publish_binary: the
    containerd binary (fallback event publisher); id; bundle: absolute path (str); debug."""

    __slots__ = ()


_VALUE_FLAGS = {"namespace", "address", "publish-binary", "id", "bundle", "socket"}
_BOOL_FLAGS = {"debug", "v", "version"}
_TRUE, _FALSE = ("1", "t", "true"), ("0", "f", "false")


def parse_args(argv: list[str], cwd: str | os.PathLike | None = None) -> ShimArgs:
    values: dict[str, str] = {}
    set_flags: set[str] = set()
    words: list[str] = []
    rest = list(argv)
    while rest:
        arg = rest.pop(0)
        if not arg.startswith("-") or arg == "-":
            words.append(arg)
            continue
        name, has_value, value = arg.lstrip("-").partition("=")
        if name in _BOOL_FLAGS:
            if has_value and value.lower() not in _TRUE + _FALSE:
                raise ArgsError(f"invalid boolean value {value!r} for -{name}")
            if not has_value or value.lower() in _TRUE:
                set_flags.add(name)
        elif name in _VALUE_FLAGS:
            if not has_value:
                if not rest:
                    raise ArgsError(f"flag needs an argument: -{name}")
                value = rest.pop(0)
            values[name] = value
        else:
            raise ArgsError(f"flag provided but not defined: -{name}")
    if len(words) > 1:
        raise ArgsError(f"unexpected arguments {words[1:]!r}")
    word = words[0] if words else ""
    if set_flags & {"v", "version"}:
        action = Action.VERSION
    elif word in ("start", "delete"):
        action = Action(word)
    elif word == "":
        action = Action.SERVE
    else:
        raise ArgsError(f"unknown action {word!r} (expected start or delete)")
    if action is not Action.VERSION:
        for required in ("namespace", "id"):
            if not values.get(required):
                raise ArgsError(f"-{required} is required")
    bundle = values.get("bundle") or os.fspath(cwd if cwd is not None else os.getcwd())
    return ShimArgs(action=action, namespace=values.get("namespace", ""),
                    address=values.get("address", ""),
                    publish_binary=values.get("publish-binary", ""), id=values.get("id", ""),
                    bundle=os.path.realpath(bundle), debug="debug" in set_flags)


def to_argv(args: ShimArgs) -> list[str]:
    """Flags for the daemon (no action word): what `ps` shows, as for other shims."""
    argv = ["-namespace", args.namespace, "-id", args.id, "-address", args.address,
            "-publish-binary", args.publish_binary, "-bundle", args.bundle]
    if args.debug:
        argv.append("-debug")
    return argv

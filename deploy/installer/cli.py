"""graft-deploy: install graft onto a Kubernetes node, or remove it.

    python3 -m deploy.installer install [--wait] [options]
    python3 -m deploy.installer remove [options]

Every option can also come from the environment as GRAFT_DEPLOY_<OPTION> (dashes as
underscores, e.g. GRAFT_DEPLOY_HOST_ROOT=/host): the DaemonSet sets them once for both its
install command and its preStop removal. Exit status: 0 done, 1 failed (one line saying
why), 2 bad usage.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from dataclasses import fields

from .containerd_config import SANDBOXERS
from .host import InstallError
from .steps import Options, install, remove

ENV_PREFIX = "GRAFT_DEPLOY_"

HELP = {
    "host_root": "where the node's / is mounted (the DaemonSet mounts it at /host)",
    "host_exec": "command prefix running a program in the node's mount namespace, "
                 "e.g. 'nsenter --target 1 --mount --' (needs hostPID)",
    "prefix": "install prefix on the node",
    "containerd_config": "containerd's config.toml on the node",
    "containerd_config_version": "2 (containerd 1.6/1.7) or 3 (2.x), only used when the "
                                 "file does not exist yet (else read from it)",
    "restart_command": "how to restart containerd on the node (run through --host-exec)",
    "shim_dir": "directory on containerd's PATH for containerd-shim-graft-v2",
    "handler": "CRI runtime handler name (the RuntimeClass's handler)",
    "sandboxer": "containerd 2.x: podsandbox (pause container) or shim (Sandbox API)",
    "graft_config": "graft's configuration.toml on the node (default PREFIX/etc/...)",
    "wheels": "directory with the graft wheel and its dependencies' wheels",
    "python_runtime": "a relocatable CPython tree to copy to PREFIX/python",
    "python": "an interpreter already on the node, instead of --python-runtime",
    "guest_image": "directory with vmlinux, initrd.img, manifest.json to copy",
    "build_guest": "run `graft guest build` on the node instead of copying --guest-image",
    "settings": "SECTION.KEY=VALUE for graft's configuration (repeatable), "
                "e.g. hypervisor.accelerator=kvm",
    "factory_init": "build the VM template (`graft factory init`); --no-factory-init skips it",
    "node_name": "label this Kubernetes node when installed (DaemonSet: spec.nodeName)",
    "node_label": "the label KEY=VALUE",
    "force": "remove: go on although graft sandboxes are still on the node",
}


def _env_default(option: str, default: object) -> object:
    raw = os.environ.get(ENV_PREFIX + option.upper())
    if raw is None:
        return default
    if isinstance(default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, list):
        return shlex.split(raw)
    if option == "containerd_config_version":
        return int(raw)
    return raw


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graft-deploy", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("install", "remove"))
    p.add_argument("--wait", action="store_true",
                   help="install: then wait for SIGTERM (the DaemonSet's main process)")
    for f in fields(Options):
        option = "set" if f.name == "settings" else f.name  # --set, GRAFT_DEPLOY_SET
        flag = "--" + option.replace("_", "-")
        default = f.default_factory() if callable(f.default_factory) else f.default
        default = _env_default(option, default)
        if f.name == "settings":
            p.add_argument(flag, dest=f.name, action="append", default=default, help=HELP[f.name])
        elif isinstance(f.default, bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                           default=default, help=HELP[f.name])
        elif f.name == "containerd_config_version":
            p.add_argument(flag, dest=f.name, type=int, choices=(2, 3), default=default,
                           help=HELP[f.name])
        elif f.name == "sandboxer":
            p.add_argument(flag, dest=f.name, choices=SANDBOXERS, default=default,
                           help=HELP[f.name])
        else:
            p.add_argument(flag, dest=f.name, default=default, help=HELP[f.name])
    return p


def _wait_for_termination() -> None:
    signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    signal.sigwait(signals)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    opts = Options(**{f.name: getattr(args, f.name) for f in fields(Options)})
    try:
        if args.action == "install":
            install(opts)
            if args.wait:
                _wait_for_termination()
        else:
            remove(opts)
    except InstallError as exc:
        print(f"graft-deploy: error: {exc}", file=sys.stderr)
        return 1
    return 0

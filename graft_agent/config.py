"""Agent settings: command line (hand-parsed: argparse costs boot time) and kernel cmdline."""

from __future__ import annotations

import os

USAGE = """\
usage: python3 -m graft_agent [options]

The graft guest agent. As PID 1 it sets up the VM (mounts, kernel modules, cgroups, lo) and
serves the agent API over the virtio-serial port named by `graft.agent_port=` on the kernel
command line. With --listen it serves a unix socket instead (tests, development).

options:
  --listen unix:PATH     serve on a unix socket instead of the virtio-serial port
  --listen vsock:PORT    serve on AF_VSOCK (also: graft.agent_vsock_port= on the kernel cmdline)
  --no-init              skip PID 1 duties even if running as PID 1
  --isolate              (development hosts) run in private mount+UTS namespaces with cgroup2
                         mounted at /sys/fs/cgroup there; never touches the host's files
  --isolate-net          with --isolate: also a private network namespace
  --port-name NAME       virtio-serial port name (default: kernel cmdline, else graft.agent)
  --run-dir DIR          agent state: bundles, runtime state, sockets (default /run/graft)
  --runtime NAME         default container runtime: native, crun or runc (default native)
  --cgroup-parent PATH   cgroup under which containers are placed (default /graft)
  --modules-list PATH    kernel modules to load as PID 1 (default /usr/lib/graft/modules.list)
  --resolv-conf PATH     file CreateSandbox writes DNS lines to (default /etc/resolv.conf)
  --log-level LEVEL      debug, info, warning or error (default info)
  -h, --help             show this help
"""

_VALUE_OPTIONS = {
    "--listen": "listen", "--port-name": "port_name", "--run-dir": "run_dir",
    "--runtime": "default_runtime", "--cgroup-parent": "cgroup_parent",
    "--modules-list": "modules_list", "--resolv-conf": "resolv_conf", "--log-level": "log_level",
}
_FLAG_OPTIONS = {"--no-init": ("init", False), "--isolate": ("isolate", True),
                 "--isolate-net": ("isolate_net", True)}
_CMDLINE_KEYS = {"graft.agent_port": "port_name", "graft.agent_vsock_port": "vsock_port", "graft.runtime": "default_runtime",
                 "graft.log": "log_level"}


class UsageError(Exception):
    pass


class HelpRequested(Exception):
    pass


class Config:
    # Plain class attributes as defaults (a dataclass costs ms of exec() at import).
    listen: str | None = None
    init: bool = True            # do PID 1 duties (only ever when pid == 1)
    isolate: bool = False
    isolate_net: bool = False
    port_name: str = "graft.agent"
    run_dir: str = "/run/graft"
    default_runtime: str = "native"
    cgroup_parent: str = "/graft"
    modules_list: str = "/usr/lib/graft/modules.list"
    resolv_conf: str = ""        # "" = /etc/resolv.conf, or <run_dir>/resolv.conf when isolated
    log_level: str = "info"

    vsock_port: str = ""         # serve AF_VSOCK on this port instead of virtio-serial

    @property
    def listen_path(self) -> str | None:
        if self.listen is None or not self.listen.startswith("unix:"):
            return None
        return self.listen[len("unix:"):]

    @property
    def listen_vsock_port(self) -> int | None:
        """The vsock port to serve on (hosts with vsock: CLH's hybrid vsock, KVM)."""
        if self.listen is not None and self.listen.startswith("vsock:"):
            return int(self.listen[len("vsock:"):])
        return int(self.vsock_port) if self.vsock_port and self.listen is None else None

    @property
    def resolv_conf_path(self) -> str:
        if self.resolv_conf:
            return self.resolv_conf
        return os.path.join(self.run_dir, "resolv.conf") if self.isolate else "/etc/resolv.conf"


def parse(argv: list[str], cmdline: str = "") -> Config:
    config = Config()
    for word in cmdline.split():  # kernel cmdline first: explicit options override it
        key, sep, value = word.partition("=")
        if sep and key in _CMDLINE_KEYS:
            setattr(config, _CMDLINE_KEYS[key], value)
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            raise HelpRequested()
        name, sep, value = arg.partition("=")
        if name in _VALUE_OPTIONS:
            if not sep:
                if not args:
                    raise UsageError(f"{name} needs a value")
                value = args.pop(0)
            setattr(config, _VALUE_OPTIONS[name], value)
        elif arg in _FLAG_OPTIONS:
            field, flag = _FLAG_OPTIONS[arg]
            setattr(config, field, flag)
        else:
            raise UsageError(f"unknown argument {arg!r}")
    if config.listen is not None and not config.listen.startswith(("unix:", "vsock:")):
        raise UsageError("--listen takes unix:PATH or vsock:PORT")
    try:
        port = config.listen_vsock_port
    except ValueError:
        raise UsageError("vsock port must be a number") from None
    if port is not None and not 0 < port < 2**32:
        raise UsageError(f"vsock port {port} out of range")
    if config.default_runtime not in ("native", "crun", "runc"):
        raise UsageError(f"unsupported runtime {config.default_runtime!r}")
    if config.log_level not in ("debug", "info", "warning", "error"):
        raise UsageError(f"bad log level {config.log_level!r}")
    if config.isolate_net and not config.isolate:
        raise UsageError("--isolate-net needs --isolate")
    config.init = config.init and os.getpid() == 1
    return config

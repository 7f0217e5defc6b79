"""Install and removal, step by step. Each step looks at what is on the node first and
changes only what differs, so a second install changes nothing (and does not restart
containerd) and an interrupted one is finished by the next run."""
from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from . import config_file, graft_config, node_label, payload
from .containerd_config import HandlerSpec
from .host import Host, InstallError, remove_empty_dirs, write_if_changed
from .payload import Prefix
from .record import InstallRecord

DEFAULT_NODE_LABEL = "graft.io/runtime=true"
# Files graft's runtime keeps in its state dir besides directories (shim/factory/build.py).
RUNTIME_FILES = ("factory.lock",)


@dataclass
class Options:
    host_root: str = "/"
    host_exec: str = ""
    prefix: str = "/opt/graft"
    containerd_config: str = "/etc/containerd/config.toml"
    containerd_config_version: int | None = None
    restart_command: str = "systemctl restart containerd"
    shim_dir: str = "/usr/local/bin"
    handler: str = "graft"
    sandboxer: str = "podsandbox"
    graft_config: str = ""            # default <prefix>/etc/configuration.toml
    wheels: str = "/opt/graft-artifacts/wheels"
    python_runtime: str = ""          # a CPython tree to copy to <prefix>/python
    python: str = ""                  # else: an interpreter already on the node
    guest_image: str = "/opt/graft-artifacts/guest"
    build_guest: bool = False
    settings: list[str] = field(default_factory=list)
    factory_init: bool = True
    node_name: str = ""
    node_label: str = DEFAULT_NODE_LABEL
    force: bool = False


def say(message: str) -> None:
    print(f"graft-deploy: {message}", flush=True)


def note(message: str) -> None:
    print(f"graft-deploy: note: {message}", file=sys.stderr, flush=True)


class Session:
    """One run against one node: where things are, and the install record."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.host = Host(Path(opts.host_root), tuple(shlex.split(opts.host_exec)))
        self.prefix = Prefix(PurePosixPath(opts.prefix))
        self.record_path = self.host.path(self.prefix.record)
        self.record = InstallRecord.load(self.record_path)

    def save(self) -> None:
        assert self.record is not None
        self.record.save(self.record_path)

    @property
    def graft(self) -> str:
        return str(self.prefix.wrapper("graft"))

    def graft_run(self, *args: str, timeout: float = 600) -> str:
        assert self.record is not None
        return self.host.run([self.graft, "--config", self.record.graft_config, *args],
                             f"graft {' '.join(args)}", timeout=timeout).stdout

    def restart_containerd(self) -> None:
        self.host.run(shlex.split(self.opts.restart_command), "restarting containerd",
                      timeout=300)
        say(f"containerd restarted ({self.opts.restart_command})")


# -- install ------------------------------------------------------------------------------------

def install(opts: Options) -> None:
    s = Session(opts)
    root = s.host.path(s.prefix.root)
    if s.record is None:
        s.record = InstallRecord(prefix=opts.prefix, created_prefix=not root.exists())
    root.mkdir(parents=True, exist_ok=True)
    s.record.handler = opts.handler
    _claim_graft_config(s)
    python = _install_python(s)
    _write_graft_config(s)
    _install_guest_image(s)
    check = s.host.run([s.graft, "--config", s.record.graft_config, "check"], "graft check",
                       check=False)
    if check.returncode != 0:
        raise InstallError(f"the node is not ready for graft:\n{check.stdout.strip()}")
    link_node = str(PurePosixPath(opts.shim_dir) / payload.SHIM_NAME)
    if s.record.shim_link not in ("", link_node):  # --shim-dir changed since the last install
        payload.unlink_shim(s.host, s.prefix, s.record.shim_link)
    s.record.shim_link = link_node
    s.save()
    link, changed = payload.link_shim(s.host, s.prefix, opts.shim_dir)
    if changed:
        say(f"shim: {link} -> {s.prefix.wrapper(payload.SHIM_NAME)}")
    _configure_containerd(s)
    _template(s)
    if opts.node_name:
        node_label.set_label(node_label.core_api(), opts.node_name, opts.node_label)
        s.record.node_label = opts.node_label
        s.save()
        say(f"node {opts.node_name} labelled {opts.node_label}")
    say(f"graft is installed under {opts.prefix} (python {python})")


def _claim_graft_config(s: Session) -> None:
    assert s.record is not None
    wanted = s.opts.graft_config or str(s.prefix.default_config)
    if s.record.graft_config not in ("", wanted):
        raise InstallError(f"graft was installed with --graft-config {s.record.graft_config}; "
                           "remove it before installing with another")
    if not s.record.graft_config and s.host.path(wanted).exists():
        raise InstallError(f"{wanted} exists and was not written by this installer: move it "
                           "away or pass --graft-config elsewhere")
    s.record.graft_config = wanted
    s.save()


def _install_python(s: Session) -> str:
    assert s.record is not None
    opts = s.opts
    if opts.python_runtime:
        s.record.python_runtime = True
        s.save()
        if payload.sync_tree(Path(opts.python_runtime), s.host.path(s.prefix.python_home)):
            say(f"python runtime copied to {s.prefix.python_home}")
        python = str(s.prefix.python_home / "bin" / "python3")
    elif opts.python:
        python = opts.python
    else:
        raise InstallError("no python for the node: pass --python-runtime DIR (copied under "
                           "the prefix) or --python PATH (already on the node)")
    payload.check_interpreter(s.host, python)
    wheels = Path(opts.wheels)
    digest = payload.wheels_digest(wheels)
    if s.record.packages_digest != digest or not s.host.path(s.prefix.lib).is_dir():
        payload.install_packages(s.host, s.prefix, wheels)
        s.record.packages_digest = digest
        s.save()
        say(f"graft and its dependencies installed into {s.prefix.lib}")
    payload.write_wrappers(s.host, s.prefix, python, s.record.graft_config)
    payload.smoke_test(s.host, s.prefix, python)
    return python


def _write_graft_config(s: Session) -> None:
    assert s.record is not None
    settings = [(("guest", "image_dir"), str(s.prefix.guest)),
                (("factory", "enable_template"), s.opts.factory_init)]
    settings += [graft_config.parse_setting(text) for text in s.opts.settings]
    defaults = s.host.run([s.graft, "config"], "graft config").stdout
    path = s.host.path(s.record.graft_config)
    if write_if_changed(path, graft_config.render(defaults, settings).encode()):
        say(f"graft configuration written: {s.record.graft_config}")


def _install_guest_image(s: Session) -> None:
    assert s.record is not None
    s.record.guest_image = True
    s.save()
    if s.opts.build_guest:
        s.graft_run("guest", "build", timeout=3600)
    elif payload.copy_guest_image(s.host, s.prefix, Path(s.opts.guest_image)):
        say(f"guest image copied to {s.prefix.guest}")


def _config_version_if_missing(s: Session) -> int | None:
    if s.opts.containerd_config_version is not None:
        return s.opts.containerd_config_version
    if s.host.path(s.opts.containerd_config).exists():
        return None
    done = s.host.run(["containerd", "--version"], "containerd --version", check=False)
    found = re.search(r"\sv?(\d+)\.\d+", done.stdout)
    return (3 if int(found.group(1)) >= 2 else 2) if found else None


def _configure_containerd(s: Session) -> None:
    assert s.record is not None
    spec = HandlerSpec(s.opts.handler, s.record.graft_config, s.opts.sandboxer)
    outcome = config_file.add(s.host, s.record, spec, s.opts.containerd_config,
                              _config_version_if_missing(s), s.save)
    if outcome.changed:
        say(f"containerd config: runtime handler {spec.name!r} added to "
            f"{s.opts.containerd_config} (original kept as "
            f"{s.record.containerd.backup if s.record.containerd else '-'})")
    if config_file.needs_restart(s.host, s.record):
        s.restart_containerd()
        config_file.mark_restarted(s.host, s.record, s.save)


def _template(s: Session) -> None:
    assert s.record is not None
    if s.opts.factory_init:
        s.record.template = True
        s.save()
        say(s.graft_run("factory", "init", timeout=900).strip())
    elif s.record.template:
        say(s.graft_run("factory", "destroy").strip())
        s.record.template = False
        s.save()


# -- removal ------------------------------------------------------------------------------------

def remove(opts: Options) -> None:
    s = Session(opts)
    record = s.record
    if record is None:
        say(f"nothing to remove: no install record at {s.prefix.record}")
        return
    if record.node_label and opts.node_name:
        node_label.remove_label(node_label.core_api(), opts.node_name, record.node_label)
        record.node_label = ""
        s.save()
        say(f"label removed from node {opts.node_name}")
    config = s.host.path(record.graft_config) if record.graft_config else None
    paths = graft_config.runtime_paths(config) if config and config.is_file() else None
    if paths is not None:
        _refuse_live_sandboxes(s, paths[0])
    outcome = config_file.remove(s.host, record)
    for text in outcome.notes:
        note(text)
    if outcome.changed:
        say(f"containerd config: {record.handler!r} handler removed from "
            f"{record.containerd.path if record.containerd else '?'}")
        s.restart_containerd()
    if outcome.restored and record.containerd:
        s.host.path(record.containerd.backup).unlink(missing_ok=True)
    record.containerd = None
    s.save()
    if s.host.path(s.prefix.wrapper("graft")).exists() and config and config.is_file():
        say(s.graft_run("factory", "destroy").strip())
    record.template = False
    s.save()
    if record.shim_link:
        payload.unlink_shim(s.host, s.prefix, record.shim_link)
    if config is not None:
        config.unlink(missing_ok=True)  # its directory goes with the prefix when inside it
    payload.remove_files(s.host, s.prefix, record.python_runtime, record.guest_image)
    if paths is not None:
        for name in RUNTIME_FILES:
            s.host.path(PurePosixPath(paths[0]) / name).unlink(missing_ok=True)
        for node_dir in (paths[1], paths[0]):
            _remove_empty_tree(s.host.path(node_dir))
    s.record_path.unlink()
    root = s.host.path(s.prefix.root)
    if record.created_prefix:
        remove_empty_dirs(root, root.parent)
    say(f"graft removed from {opts.prefix}")


def _refuse_live_sandboxes(s: Session, state_dir: str) -> None:
    sandboxes = s.host.path(state_dir) / "sandboxes"
    found = sorted(p.name for p in sandboxes.iterdir()) if sandboxes.is_dir() else []
    if found and not s.opts.force:
        raise InstallError(f"{len(found)} graft sandbox(es) still on this node (`graft "
                           "status` lists them): delete the graft pods first, or pass --force "
                           "to remove graft from under them")


def _remove_empty_tree(top: Path) -> None:
    """Directories graft's runtime left empty (state dir, template mount point); files stay."""
    if not top.is_dir() or top.is_symlink():
        return
    for path in sorted((p for p in top.rglob("*") if p.is_dir() and not p.is_symlink()),
                       key=lambda p: len(p.parts), reverse=True):
        if not any(path.iterdir()):
            path.rmdir()
    if not any(top.iterdir()):
        top.rmdir()


"""The graft runtime handler in containerd's config.toml, edited with tomlkit so that
everything else in the file (order, quoting, comments, blank lines) stays as it was.

containerd 1.6/1.7 read config version 2, where CRI runtimes live under
``plugins."io.containerd.grpc.v1.cri".containerd.runtimes``; containerd 2.x reads version 3,
where they moved to ``plugins."io.containerd.cri.v1.runtime".containerd.runtimes`` and gained
``sandboxer`` (``podsandbox``: the pause-container path; ``shim``: the Sandbox API).

All functions here are pure (text in, text out): the file itself, its backup and the
install record are handled by :mod:`deploy.installer.config_file`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import Table

RUNTIME_TYPE = "io.containerd.graft.v2"
POD_ANNOTATIONS = ("io.graft.*",)
SANDBOXERS = ("podsandbox", "shim")
MARK = "managed by graft's node installer (deploy/)"

# Where each config version keeps the CRI runtime handlers.
RUNTIMES_PATH = {
    2: ("plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes"),
    3: ("plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes"),
}


class ContainerdConfigError(ValueError):
    """The file cannot be edited (not TOML, unsupported version, a foreign handler...)."""


@dataclass(frozen=True)
class HandlerSpec:
    name: str                   # the CRI runtime handler (RuntimeClass `handler`)
    config_path: str            # graft's configuration.toml, as containerd sees it
    sandboxer: str = "podsandbox"

    def table(self, version: int) -> dict[str, Any]:
        """The handler's settings for config *version*, as plain values."""
        if self.sandboxer not in SANDBOXERS:
            raise ContainerdConfigError(
                f"sandboxer {self.sandboxer!r} is not one of {', '.join(SANDBOXERS)}")
        body: dict[str, Any] = {
            "runtime_type": RUNTIME_TYPE,
            "pod_annotations": list(POD_ANNOTATIONS),
            # Host device nodes mean nothing inside the pod's VM.
            "privileged_without_host_devices": True,
        }
        if version >= 3:
            body["sandboxer"] = self.sandboxer
        elif self.sandboxer != "podsandbox":
            raise ContainerdConfigError(
                "sandboxer 'shim' (the Sandbox API) needs containerd 2.x (config version 3)")
        body["options"] = {"ConfigPath": self.config_path}
        return body


def parse(text: str, where: str = "config.toml") -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except TOMLKitError as exc:
        raise ContainerdConfigError(f"{where}: not valid TOML: {exc}") from exc


def config_version(doc: tomlkit.TOMLDocument, where: str = "config.toml") -> int:
    version = doc.get("version", 1)
    if version not in RUNTIMES_PATH:
        raise ContainerdConfigError(
            f"{where}: config version {version} is not supported (containerd 1.6/1.7 use "
            "version 2, 2.x version 3; containerd migrates version 1 files only in memory: "
            "write `version = 2` and the CRI plugin settings first)")
    return int(version)


def new_config(version: int) -> str:
    """Text for a node that has no config.toml yet (containerd ran on built-in defaults)."""
    if version not in RUNTIMES_PATH:
        raise ContainerdConfigError(f"config version {version} is not supported (2 or 3)")
    return f"version = {version}\n"


def _runtimes(doc: tomlkit.TOMLDocument, version: int, create: bool) -> Table | None:
    table: Any = doc
    for key in RUNTIMES_PATH[version]:
        if key not in table:
            if not create:
                return None
            table[key] = tomlkit.table(is_super_table=True)
        table = table[key]
        if not isinstance(table, Table):
            raise ContainerdConfigError(f"{'.'.join(RUNTIMES_PATH[version])}: {key} is not a "
                                        "table (inline tables cannot be edited in place)")
    return table


def get_handler(text: str, name: str, where: str = "config.toml") -> dict[str, Any] | None:
    doc = parse(text, where)
    runtimes = _runtimes(doc, config_version(doc, where), create=False)
    if runtimes is None or name not in runtimes:
        return None
    return runtimes[name].unwrap()


def _indent_of(runtimes: Table) -> str:
    """Indentation for the new table: its siblings', else one step below its parent's."""
    for _, item in runtimes.value.body:
        if isinstance(item, Table):
            return item.trivia.indent
    if not runtimes.is_super_table():
        return runtimes.trivia.indent + "  "
    return ""


def _set_indent(table: Table, indent: str) -> None:
    table.trivia.indent = indent
    for key, item in table.value.body:
        if key is None:
            continue
        if isinstance(item, Table):
            _set_indent(item, indent + "  ")
        else:
            item.trivia.indent = indent + "  "


def _build_table(body: dict[str, Any]) -> Table:
    table = tomlkit.table()
    table.comment(MARK)
    table.trivia.comment_ws = "  "
    for key, value in body.items():
        if isinstance(value, dict):
            table.add(tomlkit.nl())
            sub = tomlkit.table()
            for sub_key, sub_value in value.items():
                sub.add(sub_key, sub_value)
            table.add(key, sub)
        else:
            table.add(key, value)
    # A blank line after the block, like containerd's own output between tables.
    last: Any = table
    while isinstance(last, Table) and last.value.body and isinstance(last.value.body[-1][1],
                                                                        Table):
        last = last.value.body[-1][1]
    last.add(tomlkit.nl())
    return table


def add_handler(text: str, spec: HandlerSpec, where: str = "config.toml",
                replace: bool = False) -> str:
    """*text* with the handler added. Returns *text* itself when the handler is already there
    with the same settings (so re-adding is byte-identical). A different handler of that name
    is replaced only when *replace* (it is ours from an earlier install), else refused."""
    doc = parse(text, where)
    version = config_version(doc, where)
    wanted = spec.table(version)
    runtimes = _runtimes(doc, version, create=False)
    if runtimes is not None and spec.name in runtimes:
        if runtimes[spec.name].unwrap() == wanted:
            return text
        if not replace:
            raise ContainerdConfigError(
                f"{where}: a runtime handler named {spec.name!r} already exists and was not "
                "written by this installer; remove it or choose another --handler")
        del runtimes[spec.name]
    runtimes = _runtimes(doc, version, create=True)
    assert runtimes is not None
    indent = _indent_of(runtimes)
    runtimes[spec.name] = _build_table(wanted)
    _set_indent(runtimes[spec.name], indent)
    return tomlkit.dumps(doc)


def remove_handler(text: str, name: str, where: str = "config.toml") -> str:
    """*text* without the handler (what is left around it stays as it is); *text* itself
    when there is none."""
    doc = parse(text, where)
    runtimes = _runtimes(doc, config_version(doc, where), create=False)
    if runtimes is None or name not in runtimes:
        return text
    del runtimes[name]
    return tomlkit.dumps(doc)

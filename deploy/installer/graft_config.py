"""graft's configuration.toml for the node: `graft config` (every key with its default and
documentation, from the graft being installed) with the installer's settings applied by
tomlkit, so the comments stay."""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from .host import InstallError

Setting = tuple[tuple[str, str], Any]


def parse_setting(text: str) -> Setting:
    """``section.key=value``; value in TOML syntax (``true``, ``2``, ``"x"``), a bare word
    is a string (``hypervisor.accelerator=kvm``)."""
    name, sep, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise InstallError(f"--set {text!r}: expected SECTION.KEY=VALUE")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return (section, key), value


def render(defaults: str, settings: list[Setting]) -> str:
    try:
        doc = tomlkit.parse(defaults)
    except TOMLKitError as exc:
        raise InstallError(f"`graft config` printed no valid TOML: {exc}") from exc
    for (section, key), value in settings:
        if section not in doc:
            doc[section] = tomlkit.table()
        doc[section][key] = value
    return tomlkit.dumps(doc)


def runtime_paths(config: Path) -> tuple[str, str]:
    """(state_dir, template_path) of a configuration the installer wrote (it names every
    key: `graft config` prints them all)."""
    data = tomllib.loads(config.read_text())
    return data["runtime"]["state_dir"], data["factory"]["template_path"]

"""graft configuration: a TOML file → one frozen dataclass.

Where the file comes from, first match wins: the runtime option ``ConfigPath``
(containerd), the ``GRAFT_CONFIG`` environment variable, then
``/etc/graft/configuration.toml``. A missing default file means "all
defaults"; a named file that is missing is an error. Every key, its default
and meaning is listed in :data:`KEYS` (and rendered by ``graft config``).
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

DEFAULT_CONFIG_PATH = Path("/etc/graft/configuration.toml")


class ConfigError(ValueError):
    """A bad configuration; the message names the offending key."""


@dataclass(frozen=True)
class Key:
    section: str
    name: str
    default: Any
    kind: type
    doc: str
    choices: tuple[str, ...] = ()
    check: Callable[[Any], bool] | None = None
    limit: str = "is out of range"  # what a value failing `check` is told


def _positive(v: Any) -> bool:
    return v > 0


KEYS: tuple[Key, ...] = (
    Key("hypervisor", "kind", "qemu", str, "VMM to use.", ("qemu", "clh")),
    Key("hypervisor", "binary", "", str,
        "VMM binary; empty = qemu-system-x86_64 / cloud-hypervisor on PATH."),
    Key("hypervisor", "accelerator", "auto", str,
        "auto = KVM when kvm_intel/kvm_amd is loaded, else TCG.", ("auto", "kvm", "tcg")),
    Key("hypervisor", "vcpus", 1, int, "vCPUs at boot (and in a template).", check=_positive),
    Key("hypervisor", "max_vcpus", 4, int, "vCPUs that can be hot-added.", check=_positive),
    Key("hypervisor", "memory_mib", 256, int, "Guest RAM in MiB.", check=_positive),
    Key("hypervisor", "memory_slots", 2, int,
        "DIMM slots for memory hot-add (one per hot-add; 0 = no memory hot-add). QEMU only.",
        check=lambda v: 0 <= v <= 256),
    Key("hypervisor", "max_memory_mib", 2048, int,
        "Most RAM (MiB) a VM can grow to by hot-add when its pod asks for more than "
        "memory_mib; equal to memory_mib = no memory hot-add.", check=_positive),
    Key("hypervisor", "kernel_params", "", str, "Extra guest kernel parameters (appended)."),
    Key("hypervisor", "vmgenid", False, bool,
        "Add a vmgenid device so the guest kernel reseeds its RNG after a restore."),
    Key("hypervisor", "hotplug_root_ports", 2, int, "Free PCIe root ports for hot-plug.",
        check=lambda v: v >= 0),
    Key("guest", "image_dir", "/var/lib/graft/guest", str,
        "Directory holding vmlinux and initrd.img from `graft guest build`."),
    Key("agent", "runtime", "native", str,
        "Container runtime inside the guest: native (the agent creates container processes "
        "itself), or the crun/runc binary.", ("native", "crun", "runc")),
    Key("agent", "boot_timeout_s", 60.0, float,
        "Seconds to wait for the agent to answer after launch.", check=_positive),
    Key("runtime", "state_dir", "/run/graft", str,
        "Where per-sandbox sockets and mounts live (at most 63 bytes: unix sockets go below).",
        check=lambda v: v.startswith("/"), limit="must be an absolute path"),
    Key("runtime", "log_level", "info", str, "Shim log level.",
        ("debug", "info", "warning", "error")),
    Key("factory", "enable_template", False, bool,
        "Restore sandboxes from the template built by `graft factory init`, when valid."),
    Key("factory", "template_path", "/run/graft/template", str,
        "Template directory (a tmpfs sized guest memory + 8 MiB is mounted there)."),
    Key("factory", "cache_size", 0, int,
        "Clones the shim's fork server keeps restored ahead of demand for pods of this config "
        "(a warm pool; 0 = none). Each holds a VM's memory while it waits. QEMU only.",
        check=lambda v: 0 <= v <= 64),
    Key("testing", "failpoints", False, bool,
        "TEST ONLY, never on a node with real pods: lets a pod's io.graft.failpoint "
        "annotation make the shim fail or die at a named create step (shim/failpoints.py)."),
)


@dataclass(frozen=True)
class GraftConfig:
    values: dict[tuple[str, str], Any] = field(default_factory=dict)
    source: Path | None = None

    def get(self, section: str, name: str) -> Any:
        return self.values[(section, name)]

    def with_values(self, overrides: dict[tuple[str, str], Any]) -> "GraftConfig":
        """A copy with some keys changed (validated like a file would be)."""
        tables: dict[str, dict[str, Any]] = {}
        for (section, name), value in {**self.values, **overrides}.items():
            tables.setdefault(section, {})[name] = value
        return parse_config(tables, source=self.source)

    # Typed accessors for the keys other modules use most.
    @property
    def state_dir(self) -> Path:
        return Path(self.get("runtime", "state_dir"))

    @property
    def guest_image_dir(self) -> Path:
        return Path(os.environ.get("GRAFT_GUEST_DIR") or self.get("guest", "image_dir"))

    @property
    def template_path(self) -> Path:
        return Path(self.get("factory", "template_path"))

    @property
    def enable_template(self) -> bool:
        return bool(self.get("factory", "enable_template"))


def _coerce(key: Key, raw: Any) -> Any:
    where = f"[{key.section}] {key.name}"
    if key.kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        raw = float(raw)
    if (key.kind is int and isinstance(raw, bool)) or not isinstance(raw, key.kind):
        raise ConfigError(f"{where}: expected {key.kind.__name__}, got {raw!r}")
    if key.choices and raw not in key.choices:
        raise ConfigError(f"{where}: {raw!r} is not one of {', '.join(key.choices)}")
    if key.check is not None and not key.check(raw):
        raise ConfigError(f"{where}: {raw!r} {key.limit}")
    return raw


def parse_config(data: dict[str, Any], source: Path | None = None) -> GraftConfig:
    known = {(k.section, k.name): k for k in KEYS}
    sections = {k.section for k in KEYS}
    values = {(k.section, k.name): k.default for k in KEYS}
    for section, table in data.items():
        if section not in sections:
            raise ConfigError(f"unknown section [{section}]")
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table")
        for name, raw in table.items():
            key = known.get((section, name))
            if key is None:
                raise ConfigError(f"[{section}] {name}: unknown key")
            values[(section, name)] = _coerce(key, raw)
    if values[("hypervisor", "max_vcpus")] < values[("hypervisor", "vcpus")]:
        raise ConfigError("[hypervisor] max_vcpus: must be >= vcpus")
    if values[("hypervisor", "max_memory_mib")] < values[("hypervisor", "memory_mib")]:
        raise ConfigError("[hypervisor] max_memory_mib: must be >= memory_mib")
    return GraftConfig(values=values, source=source)


def load_config(path: Path | str | None = None) -> GraftConfig:
    """Load from *path*, else $GRAFT_CONFIG, else the default file (optional)."""
    explicit = path or os.environ.get("GRAFT_CONFIG") or None
    target = Path(explicit) if explicit else DEFAULT_CONFIG_PATH
    try:
        raw = target.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {target} does not exist") from None
        return parse_config({})
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{target}: not valid TOML: {exc}") from exc
    return parse_config(data, source=target)


def render_default_config() -> str:
    """The documented default configuration file."""
    out: list[str] = []
    section = None
    for key in KEYS:
        if key.section != section:
            section = key.section
            out.append(f"\n[{section}]")
        choices = f" One of: {', '.join(key.choices)}." if key.choices else ""
        out.append(f"# {key.doc}{choices}")
        value = key.default
        rendered = ("true" if value else "false") if isinstance(value, bool) else (
            f'"{value}"' if isinstance(value, str) else str(value))
        out.append(f"{key.name} = {rendered}")
    return "\n".join(out).lstrip() + "\n"

"""Where the template lives and whether it is usable.

Layout under ``[factory] template_path`` (a tmpfs, see tmpfs.py)::

    current -> tpl-<stamp>        symlink, swapped atomically by a rebuild
    tpl-<stamp>/memory            guest RAM (clones map it private)
    tpl-<stamp>/state ...         the VMM's saved device state
    tpl-<stamp>/metadata.json     written last: no metadata = not a template
    digests.json                  digest cache shared by all shim processes

A template directory is never modified once `current` points to it, and a
rebuild never writes into a file a running clone maps: it builds a new
directory and swaps the symlink.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from shim.config import GraftConfig
from shim.hypervisor.accel import resolve_accelerator
from shim.hypervisor.base import FileBackedMemoryConfig

from .boot import template_hypervisor_config
from .digests import DigestCache
from .metadata import MEMORY_FILE, MetadataError, TemplateMetadata, read_metadata
from .validate import CurrentFacts, config_problems, file_problems

log = logging.getLogger(__name__)

CURRENT_LINK = "current"
TEMPLATE_DIR_PREFIX = "tpl-"
DIGEST_CACHE_FILE = "digests.json"
DEFAULT_BINARIES = {"qemu": "qemu-system-x86_64", "clh": "cloud-hypervisor"}


class TemplateUnusable(Exception):
    """No template can be restored; the message says why (for logs/status)."""


@dataclass(frozen=True)
class Template:
    directory: Path  # resolved tpl-<stamp> directory (stable for a clone's lifetime)
    metadata: TemplateMetadata

    @property
    def memory_file(self) -> Path:
        return self.directory / self.metadata.memory_file


@dataclass(frozen=True)
class TemplateStatus:
    root: Path
    directory: Path | None  # None when there is no current template at all
    metadata: TemplateMetadata | None
    problems: tuple[str, ...]

    @property
    def usable(self) -> bool:
        return self.directory is not None and self.metadata is not None and not self.problems


_caches: dict[Path, DigestCache] = {}


def digest_cache(root: Path) -> DigestCache:
    """One cache per template root per process, persisted in the root."""
    cache = _caches.get(root)
    if cache is None:
        persist = root / DIGEST_CACHE_FILE if root.is_dir() else None
        cache = _caches[root] = DigestCache(persist)
    return cache


def resolve_vmm_binary(config: GraftConfig) -> Path | None:
    configured = str(config.get("hypervisor", "binary"))
    kind = str(config.get("hypervisor", "kind"))
    found = shutil.which(configured or DEFAULT_BINARIES.get(kind, kind))
    return Path(os.path.realpath(found)) if found else None


def current_facts(config: GraftConfig) -> CurrentFacts:
    """What a clone made now would be built from. Raises OSError (e.g.
    GuestImageMissing) when that cannot be determined."""
    root = config.template_path
    hv = template_hypervisor_config(config, FileBackedMemoryConfig(root / MEMORY_FILE,
                                                                   shared=False))
    return CurrentFacts(
        kind=str(config.get("hypervisor", "kind")),
        accelerator=resolve_accelerator(hv.accelerator).value,
        identity=hv.template_identity(),
        kernel=hv.kernel,
        initrd=hv.initrd,
        binary=resolve_vmm_binary(config),
    )


def current_template_dir(root: Path) -> Path | None:
    """The directory `current` points to, if it is one of ours."""
    link = root / CURRENT_LINK
    try:
        target = os.readlink(link)
    except OSError:
        return None
    if "/" in target or not target.startswith(TEMPLATE_DIR_PREFIX):
        return None
    directory = root / target
    return directory if directory.is_dir() else None


def inspect_template(config: GraftConfig) -> TemplateStatus:
    """Every reason the template cannot be used now (empty = usable)."""
    root = config.template_path
    directory = current_template_dir(root)
    if directory is None:
        return TemplateStatus(root, None, None,
                              (f"no template at {root} (run `graft factory init`)",))
    try:
        metadata = read_metadata(directory)
    except FileNotFoundError:
        return TemplateStatus(root, directory, None,
                              (f"template {directory} is incomplete (no metadata.json)",))
    except (OSError, MetadataError) as exc:
        return TemplateStatus(root, directory, None, (f"corrupt metadata: {exc}",))
    digests = digest_cache(root)
    problems = file_problems(directory, metadata, digests)
    try:
        facts = current_facts(config)
    except (OSError, ValueError) as exc:
        problems.append(f"cannot check the current configuration: {exc}")
    else:
        problems.extend(config_problems(metadata, facts, digests))
    return TemplateStatus(root, directory, metadata, tuple(problems))


def find_usable_template(config: GraftConfig) -> Template:
    """The template to restore from, validated against its own metadata.
    Raises TemplateUnusable with a human reason."""
    status = inspect_template(config)
    if not status.usable:
        raise TemplateUnusable("; ".join(status.problems))
    assert status.directory is not None and status.metadata is not None
    return Template(status.directory, status.metadata)

"""Helpers shared by the template integration tests."""
from __future__ import annotations

from pathlib import Path

from shim.config import GraftConfig


def factory_config(base: GraftConfig, template_path: Path, **hypervisor: object) -> GraftConfig:
    """*base* with templates enabled at *template_path* (and hypervisor keys changed)."""
    overrides: dict[tuple[str, str], object] = {
        ("factory", "enable_template"): True,
        ("factory", "template_path"): str(template_path),
    }
    overrides.update({("hypervisor", name): value for name, value in hypervisor.items()})
    return base.with_values(overrides)

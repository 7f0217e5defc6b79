"""Fixtures shared by unit tests."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A minimal OCI bundle as containerd lays it out (rootfs + config.json)."""
    b = tmp_path / "bundle"
    (b / "rootfs").mkdir(parents=True)
    (b / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "process": {"args": ["sh"]}}))
    return b

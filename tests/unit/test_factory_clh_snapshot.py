"""The factory turns a CLH snapshot's shared memory private."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from shim.factory.clh_snapshot import SnapshotConfigError, make_memory_private


def test_top_level_and_every_zone_become_private(tmp_path: Path) -> None:
    config = {"cpus": {"boot_vcpus": 1},
              "memory": {"size": 0, "shared": True, "zones": [
                  {"id": "mem0", "size": 268435456, "file": "/tpl/memory", "shared": True},
                  {"id": "mem1", "size": 1048576, "shared": True}]}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert make_memory_private(tmp_path) == 3
    patched = json.loads((tmp_path / "config.json").read_text())
    assert patched["memory"]["shared"] is False
    assert [z["shared"] for z in patched["memory"]["zones"]] == [False, False]
    # Everything else untouched.
    assert patched["memory"]["zones"][0]["file"] == "/tpl/memory"
    assert patched["cpus"] == config["cpus"]
    assert make_memory_private(tmp_path) == 0  # idempotent


@pytest.mark.parametrize("content, message", [
    (None, "missing"), ("{", "not JSON"), ("{}", "no memory section"),
    ('{"memory": {"zones": [1]}}', "not an object"),
])
def test_bad_snapshot_config(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    with pytest.raises(SnapshotConfigError, match=message):
        make_memory_private(tmp_path)

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from shim.config import (KEYS, ConfigError, load_config, parse_config,
                         render_default_config)


def test_defaults_cover_every_key() -> None:
    cfg = parse_config({})
    for key in KEYS:
        assert cfg.get(key.section, key.name) == key.default


@pytest.mark.parametrize("data, fragment", [
    ({"hypervisor": {"memory_mib": "lots"}}, "[hypervisor] memory_mib: expected int"),
    ({"hypervisor": {"memory_mib": True}}, "[hypervisor] memory_mib: expected int"),
    ({"hypervisor": {"memory_mib": 0}}, "[hypervisor] memory_mib: 0 is out of range"),
    ({"hypervisor": {"accelerator": "hvf"}}, "[hypervisor] accelerator: 'hvf' is not one of"),
    ({"hypervisor": {"vcpus": 4, "max_vcpus": 2}}, "[hypervisor] max_vcpus"),
    ({"hypervisor": {"colour": "blue"}}, "[hypervisor] colour: unknown key"),
    ({"nonsense": {}}, "unknown section [nonsense]"),
    ({"agent": "crun"}, "[agent] must be a table"),
])
def test_bad_values_name_the_key(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert fragment in str(err.value)


def test_int_is_accepted_for_float_keys() -> None:
    assert parse_config({"agent": {"boot_timeout_s": 10}}).get("agent", "boot_timeout_s") == 10.0


def test_load_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "env.toml"
    env_file.write_text("[hypervisor]\nmemory_mib = 512\n")
    explicit = tmp_path / "explicit.toml"
    explicit.write_text("[hypervisor]\nmemory_mib = 1024\n")
    monkeypatch.setenv("GRAFT_CONFIG", str(env_file))
    assert load_config().get("hypervisor", "memory_mib") == 512
    assert load_config(explicit).get("hypervisor", "memory_mib") == 1024
    assert load_config(explicit).source == explicit


def test_missing_named_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[hypervisor\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_rendered_default_config_parses_back_to_defaults() -> None:
    text = render_default_config()
    assert parse_config(tomllib.loads(text)).values == parse_config({}).values
    for key in KEYS:
        assert f"{key.name} = " in text


def test_with_values_validates() -> None:
    cfg = parse_config({})
    assert cfg.with_values({("hypervisor", "vcpus"): 2}).get("hypervisor", "vcpus") == 2
    with pytest.raises(ConfigError):
        cfg.with_values({("hypervisor", "vcpus"): "two"})

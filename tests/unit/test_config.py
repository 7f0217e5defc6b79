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
    ({"hypervisor": {"memory_mib": 512, "max_memory_mib": 256}},
     "[hypervisor] max_memory_mib: must be >= memory_mib"),
    ({"hypervisor": {"memory_slots": -1}}, "[hypervisor] memory_slots: -1 is out of range"),
    ({"hypervisor": {"memory_slots": 300}}, "[hypervisor] memory_slots: 300 is out of range"),
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


@pytest.mark.parametrize("hypervisor, expected", [
    ({}, (2, 2048)),
    ({"memory_slots": 1, "max_memory_mib": 1024}, (1, 1024)),
    ({"memory_slots": 0}, (0, 0)),                       # hot-add off: no slots at all
    ({"memory_mib": 512, "max_memory_mib": 512}, (0, 0)),  # no room above boot RAM
    ({"kind": "clh"}, (0, 0)),                           # only QEMU hot-adds memory
])
def test_memory_hot_add_reaches_the_hypervisor_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hypervisor: dict,
        expected: tuple[int, int]) -> None:
    from shim.vmconfig.hypervisor_config import hypervisor_config

    monkeypatch.delenv("GRAFT_GUEST_DIR", raising=False)
    for name in ("vmlinux", "initrd.img"):
        (tmp_path / name).write_bytes(b"x")
    cfg = parse_config({"hypervisor": hypervisor, "guest": {"image_dir": str(tmp_path)}})
    hv = hypervisor_config(cfg)
    assert (hv.memory_slots, hv.max_memory_mib) == expected
    # slots put possible RAM above 4 GiB: keep the guest's swiotlb pool small
    assert ("swiotlb=512" in hv.kernel_params) == bool(expected[0])
    identity = hv.template_identity()
    if expected[0]:  # the machine changes with slots: templates must be told apart
        assert (identity["memory_slots"], identity["max_memory_mib"]) == expected
    else:
        assert "memory_slots" not in identity and "max_memory_mib" not in identity

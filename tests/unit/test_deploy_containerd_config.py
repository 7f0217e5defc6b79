"""deploy/installer/containerd_config.py: the graft handler in containerd config version 2
(containerd 1.6/1.7) and 3 (2.x), on hand-written files with comments and on what each
containerd release on this machine prints for `containerd config default`."""
from __future__ import annotations

import difflib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from deploy.installer.containerd_config import (RUNTIMES_PATH, ContainerdConfigError,
                                                HandlerSpec, add_handler, get_handler,
                                                new_config, remove_handler)

ROOT = Path(__file__).resolve().parents[2]

V2 = '''# node config, written by the admin
version = 2
root = "/var/lib/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"  # the CRI socket

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.6"
    # keep the runc handler as the default
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes]
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
          runtime_type = "io.containerd.runc.v2"
          [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
            SystemdCgroup = true   # cgroup driver must match the kubelet's

# trailing comment
'''

V3 = '''version = 3
root = '/var/lib/containerd'

[plugins]
  # CRI images and runtime are two plugins since 2.0
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'

  [plugins.'io.containerd.cri.v1.runtime']
    enable_cdi = true

    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'

      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes]
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
          runtime_type = 'io.containerd.runc.v2'
          sandboxer = 'podsandbox'

  [plugins.'io.containerd.grpc.v1.cri']
    disable_tcp_service = true  # stream server only
'''

SPEC = HandlerSpec("graft", "/opt/graft/etc/configuration.toml")
CONFIGS = {2: V2, 3: V3}


def _handler(text: str, version: int) -> dict:
    table = tomllib.loads(text)
    for key in RUNTIMES_PATH[version]:
        table = table[key]
    return table["graft"]


def _only_insertions(before: str, after: str) -> list[str]:
    """Lines of *before* that *after* lost or changed (none when it only inserted)."""
    diff = difflib.ndiff(before.splitlines(), after.splitlines())
    return [line for line in diff if line.startswith("- ")]


@pytest.mark.parametrize("version", [2, 3])
def test_add_keeps_everything_else(version):
    text = CONFIGS[version]
    added = add_handler(text, SPEC)
    assert _only_insertions(text, added) == []  # comments included
    handler = _handler(added, version)
    assert handler["runtime_type"] == "io.containerd.graft.v2"
    assert handler["pod_annotations"] == ["io.graft.*"]
    assert handler["options"] == {"ConfigPath": SPEC.config_path}
    without = tomllib.loads(added)
    table = without
    for key in RUNTIMES_PATH[version]:
        table = table[key]
    del table["graft"]
    assert without == tomllib.loads(text)


@pytest.mark.parametrize("version", [2, 3])
def test_add_twice_changes_nothing(version):
    added = add_handler(CONFIGS[version], SPEC)
    assert add_handler(added, SPEC) is added


@pytest.mark.parametrize("version", [2, 3])
def test_remove_gives_back_the_original_text(version):
    text = CONFIGS[version]
    assert remove_handler(add_handler(text, SPEC), "graft") == text
    assert remove_handler(text, "graft") is text


def test_sandboxer_only_in_version_3():
    assert _handler(add_handler(V3, SPEC), 3)["sandboxer"] == "podsandbox"
    shim = HandlerSpec("graft", SPEC.config_path, sandboxer="shim")
    assert _handler(add_handler(V3, shim), 3)["sandboxer"] == "shim"
    assert "sandboxer" not in _handler(add_handler(V2, SPEC), 2)
    with pytest.raises(ContainerdConfigError, match="needs containerd 2.x"):
        add_handler(V2, shim)
    with pytest.raises(ContainerdConfigError, match="not one of"):
        add_handler(V3, HandlerSpec("graft", SPEC.config_path, sandboxer="vm"))


def test_new_table_is_indented_like_its_siblings():
    added = add_handler(V2, SPEC)
    runc = next(l for l in added.splitlines() if l.strip().endswith("runtimes.runc]"))
    graft = next(l for l in added.splitlines() if "runtimes.graft]" in l)
    assert graft[:len(graft) - len(graft.lstrip())] == runc[:len(runc) - len(runc.lstrip())]


def test_foreign_handler_is_refused_unless_replacing_our_own():
    other = HandlerSpec("graft", "/elsewhere.toml")
    theirs = add_handler(V2, other)
    with pytest.raises(ContainerdConfigError, match="not written by this installer"):
        add_handler(theirs, SPEC)
    replaced = add_handler(theirs, SPEC, replace=True)
    assert _handler(replaced, 2)["options"]["ConfigPath"] == SPEC.config_path
    assert remove_handler(replaced, "graft") == V2


@pytest.mark.parametrize("version", [2, 3])
def test_file_without_cri_tables(version):
    text = new_config(version) + "# nothing else yet\n"
    added = add_handler(text, SPEC)
    assert added.startswith(text)
    assert _handler(added, version)["runtime_type"] == "io.containerd.graft.v2"
    assert get_handler(remove_handler(added, "graft"), "graft") is None


@pytest.mark.parametrize("text, message", [
    ("root = '/x'\n", "config version 1 is not supported"),
    ("version = 1\n", "config version 1 is not supported"),
    ("version = 4\n", "config version 4 is not supported"),
    ("version = 2\n[plugins\n", "not valid TOML"),
    ('version = 2\nplugins = {"io.containerd.grpc.v1.cri" = {containerd = 1}}\n',
     "is not a table"),
])
def test_bad_files_are_refused(text, message):
    with pytest.raises(ContainerdConfigError, match=message):
        add_handler(text, SPEC)


def _default_configs() -> list:
    """`containerd config default` of the system containerd and the cached compat ones."""
    sys.path.insert(0, str(ROOT / "hack" / "containerd"))
    import compat

    binaries = [("system", "containerd")]
    binaries += [(suite, str(compat.bin_dir(suite) / "containerd")) for suite in compat.SUITES]
    return [pytest.param(binary, id=name) for name, binary in binaries]


@pytest.mark.parametrize("binary", _default_configs())
def test_containerd_default_configs(binary):
    try:
        text = subprocess.run([binary, "config", "default"], capture_output=True, text=True,
                              timeout=60, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"{binary} is not available here")
    version = tomllib.loads(text)["version"]
    added = add_handler(text, SPEC)
    assert _only_insertions(text, added) == []
    assert _handler(added, version)["options"]["ConfigPath"] == SPEC.config_path
    assert add_handler(added, SPEC) is added
    assert remove_handler(added, "graft") == text

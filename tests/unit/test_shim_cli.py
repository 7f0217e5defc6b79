"""containerd-shim-graft-v2 argv parsing, runtime options, and the start/delete binary."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.protobuf import any_pb2

from shim.api.containerd import runtimeoptions_pb2, shim_pb2
from shim.shim_manager.args import Action, ArgsError, parse_args, to_argv
from shim.shim_manager.runtime_options import config_path_from_options, resolve_config_path
from shim.shim_manager.socket_address import socket_path
from shim.task.bundle import ContainerKind, bundle_info

ROOT = Path(__file__).resolve().parents[2]


def test_parse_start_and_delete(tmp_path):
    args = parse_args(["-namespace", "k8s.io", "-address", "/run/c.sock", "-publish-binary",
                       "/usr/bin/containerd", "-id", "abc", "-debug", "start"], cwd=tmp_path)
    assert (args.action, args.namespace, args.id, args.bundle, args.debug) == (
        Action.START, "k8s.io", "abc", str(tmp_path.resolve()), True)
    args = parse_args(["-namespace", "n", "-id", "x", "-bundle", str(tmp_path), "delete"])
    assert args.action is Action.DELETE and not args.debug
    assert parse_args(["-v"]).action is Action.VERSION
    assert parse_args(["--version"]).action is Action.VERSION
    assert parse_args(["-namespace", "n", "-id", "x", "-debug=false"]).action is Action.SERVE
    go_style = parse_args(["--namespace=n", "-id=x", "-debug=true", "-socket", "s", "delete"])
    assert (go_style.namespace, go_style.id, go_style.debug) == ("n", "x", True)
    assert parse_args(to_argv(args), cwd="/").bundle == args.bundle  # the daemon's title


@pytest.mark.parametrize("argv", [["-id", "x", "start"], ["-namespace", "n", "start"],
                                  ["-namespace", "n", "-id", "x", "bogus"], ["-nope"],
                                  ["-namespace", "n", "-id"], ["-namespace", "n", "-id", "x",
                                                               "-debug=maybe", "start"],
                                  ["-namespace", "n", "-id", "x", "start", "extra"]])
def test_bad_argv_is_a_clear_error(argv):
    with pytest.raises(ArgsError):
        parse_args(argv)


def test_runtime_options_config_path():
    opts = runtimeoptions_pb2.Options(type_url="x" * 300, config_path="/etc/graft/x.toml")
    data = any_pb2.Any(type_url="runtimeoptions.v1.Options",
                       value=opts.SerializeToString()).SerializeToString()
    assert config_path_from_options(data) == "/etc/graft/x.toml"
    prefixed = any_pb2.Any()
    prefixed.Pack(opts)  # type.googleapis.com/runtimeoptions.v1.Options
    assert config_path_from_options(prefixed.SerializeToString()) == "/etc/graft/x.toml"
    other = any_pb2.Any(type_url="containerd.runtime.v2.BootstrapParams", value=b"\n\x02id")
    assert config_path_from_options(other.SerializeToString()) == ""
    assert config_path_from_options(b"") == ""
    assert config_path_from_options(b"\xff\xff garbage") == ""
    assert config_path_from_options(data[:-3]) == ""  # truncated
    assert resolve_config_path(b"", {"GRAFT_CONFIG": "/env.toml"}) == "/env.toml"
    assert resolve_config_path(data, {"GRAFT_CONFIG": "/env.toml"}) == "/etc/graft/x.toml"


def test_grouping_by_sandbox_annotations():
    app = {"annotations": {"io.kubernetes.cri.container-type": "container",
                           "io.kubernetes.cri.sandbox-id": "pod1"}}
    assert bundle_info("c1", app).sandbox_id == "pod1"
    assert bundle_info("c1", app).kind is ContainerKind.APP
    sandbox = {"annotations": {"io.kubernetes.cri.container-type": "sandbox"}}
    assert bundle_info("pod1", sandbox).kind is ContainerKind.POD_VM
    assert bundle_info("solo", {}).kind is ContainerKind.SINGLE
    with pytest.raises(ValueError):
        bundle_info("c1", {"annotations": {"io.kubernetes.cri.container-type": "container"}})
    assert socket_path("/a", "ns", "pod1") == socket_path("/a", "ns", "pod1")
    assert socket_path("/a", "ns", "pod1") != socket_path("/b", "ns", "pod1")


def _run(bundle: Path, *argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "shim.cli.shim_main", *argv], input=stdin,
                          capture_output=True, cwd=bundle, env=env, timeout=30)


@pytest.mark.skipif(os.geteuid() != 0, reason="the shim socket lives in /run/containerd/s")
def test_start_binds_prints_only_the_address_and_idle_daemon_exits(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.0.2"}))
    flags = ["-namespace", "unit", "-address", str(tmp_path / "c.sock"), "-publish-binary",
             "/bin/false", "-id", "solo"]
    done = _run(bundle, *flags, "start")
    assert done.returncode == 0 and done.stderr == b""
    address = done.stdout.decode()
    assert address.startswith("unix:///run/containerd/s/") and "\n" not in address
    assert (bundle / "address").read_text() == address
    path = Path(address.removeprefix("unix://"))
    assert (path.stat().st_mode & 0o777) == 0o600
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))  # listening as soon as start returned
    # An app container of that pod joins the running shim.
    app = tmp_path / "app"
    app.mkdir()
    (app / "config.json").write_text(json.dumps({"annotations": {
        "io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "solo"}}))
    joined = _run(app, *flags[:-1], "app1", "start")
    assert joined.stdout.decode() == address
    # No client, no task: the daemon exits by itself and removes its socket.
    deadline = time.monotonic() + 20
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not path.exists()

    deleted = _run(bundle, *flags, "-bundle", str(bundle), "delete")
    assert deleted.returncode == 0
    response = shim_pb2.DeleteResponse.FromString(deleted.stdout)
    assert response.exit_status == 137 and response.exited_at.seconds > 0


def test_version():
    done = _run(ROOT, "-v")
    assert done.returncode == 0 and b"graft" in done.stdout

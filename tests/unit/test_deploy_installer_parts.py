"""The node installer's parts that need no containerd or VM: graft's config rendering, file
trees and the shim link, the node label (against a recording stand-in for the API
client), options from the environment, and the refusals that protect a node."""
from __future__ import annotations

import os
from pathlib import PurePosixPath

import pytest

from deploy.installer import cli, graft_config, node_label, payload, steps
from deploy.installer.host import Host, InstallError
from deploy.installer.record import InstallRecord
from shim.config import load_config, render_default_config


# -- graft's configuration --------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("hypervisor.accelerator=kvm", (("hypervisor", "accelerator"), "kvm")),
    ("hypervisor.vcpus=2", (("hypervisor", "vcpus"), 2)),
    ("factory.enable_template=false", (("factory", "enable_template"), False)),
    ('runtime.state_dir="/run/x y"', (("runtime", "state_dir"), "/run/x y")),
])
def test_parse_setting(text, expected):
    assert graft_config.parse_setting(text) == expected


@pytest.mark.parametrize("text", ["accelerator=kvm", "hypervisor.vcpus", ".x=1", "a.=1"])
def test_parse_setting_refuses_malformed(text):
    with pytest.raises(InstallError, match="SECTION.KEY=VALUE"):
        graft_config.parse_setting(text)


def test_render_keeps_the_documentation_and_is_valid(tmp_path):
    defaults = render_default_config()
    text = graft_config.render(defaults, [(("hypervisor", "accelerator"), "kvm"),
                                          (("guest", "image_dir"), "/opt/graft/share/guest"),
                                          (("runtime", "state_dir"), "/run/g")])
    assert [l for l in defaults.splitlines() if l.startswith("#")] == \
        [l for l in text.splitlines() if l.startswith("#")]
    path = tmp_path / "configuration.toml"
    path.write_text(text)
    config = load_config(path)
    assert config.get("hypervisor", "accelerator") == "kvm"
    assert config.get("guest", "image_dir") == "/opt/graft/share/guest"
    assert graft_config.runtime_paths(path) == ("/run/g", "/run/graft/template")


# -- files ------------------------------------------------------------------------------------

def test_sync_tree_copies_only_differences(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "lib").mkdir(parents=True)
    (src / "bin").mkdir()
    (src / "lib" / "a.py").write_text("a")
    (src / "bin" / "python3.11").write_text("elf")
    os.chmod(src / "bin" / "python3.11", 0o755)
    (src / "bin" / "python3").symlink_to("python3.11")
    assert payload.sync_tree(src, dst)
    assert os.readlink(dst / "bin" / "python3") == "python3.11"
    assert (dst / "bin" / "python3.11").stat().st_mode & 0o777 == 0o755
    mtime = (dst / "lib" / "a.py").stat().st_mtime_ns
    assert not payload.sync_tree(src, dst)
    assert (dst / "lib" / "a.py").stat().st_mtime_ns == mtime
    (dst / "lib" / "stale.py").write_text("old")
    (src / "lib" / "a.py").write_text("b")
    assert payload.sync_tree(src, dst)
    assert not (dst / "lib" / "stale.py").exists() and (dst / "lib" / "a.py").read_text() == "b"


def test_shim_link(tmp_path):
    host = Host(root=tmp_path)
    (tmp_path / "usr" / "local" / "bin").mkdir(parents=True)
    prefix = payload.Prefix(PurePosixPath("/opt/graft"))
    link, changed = payload.link_shim(host, prefix, "/usr/local/bin")
    assert changed and link == "/usr/local/bin/containerd-shim-graft-v2"
    assert os.readlink(host.path(link)) == "/opt/graft/bin/containerd-shim-graft-v2"
    assert payload.link_shim(host, prefix, "/usr/local/bin") == (link, False)
    other = payload.Prefix(PurePosixPath("/srv/graft"))
    with pytest.raises(InstallError, match="not the installer's link"):
        payload.link_shim(host, other, "/usr/local/bin")
    payload.unlink_shim(host, other, link)  # not ours: stays
    assert host.path(link).is_symlink()
    payload.unlink_shim(host, prefix, link)
    assert not host.path(link).is_symlink()
    with pytest.raises(InstallError, match="does not exist"):
        payload.link_shim(host, prefix, "/nowhere")


def test_wrappers_name_node_paths(tmp_path):
    host = Host(root=tmp_path)
    prefix = payload.Prefix(PurePosixPath("/opt/graft"))
    assert payload.write_wrappers(host, prefix, "/opt/graft/python/bin/python3",
                                  "/opt/graft/etc/configuration.toml")
    shim = host.path(prefix.wrapper("containerd-shim-graft-v2")).read_text()
    # the shim is the lean launcher: isolated interpreter, graft's lib first, no shell
    assert shim.startswith("#!/opt/graft/python/bin/python3 -IS\n")
    assert "sys.path[:0] = ['/opt/graft/lib/python']" in shim and str(tmp_path) not in shim
    assert "os.environ.setdefault('GRAFT_CONFIG', '/opt/graft/etc/configuration.toml')" in shim
    cli = host.path(prefix.wrapper("graft")).read_text()
    assert "PYTHONPATH=/opt/graft/lib/python" in cli
    assert "exec /opt/graft/python/bin/python3 -s -m shim.cli.graft_main \"$@\"" in cli
    assert not payload.write_wrappers(host, prefix, "/opt/graft/python/bin/python3",
                                      "/opt/graft/etc/configuration.toml")


def test_wheels_need_graft(tmp_path):
    (tmp_path / "grpcio-1-cp311-none-any.whl").write_bytes(b"x")
    with pytest.raises(InstallError, match="no graft-"):
        payload.wheels_digest(tmp_path)
    (tmp_path / "graft-0.1.0-py3-none-any.whl").write_bytes(b"y")
    first = payload.wheels_digest(tmp_path)
    (tmp_path / "graft-0.1.0-py3-none-any.whl").write_bytes(b"z")
    assert payload.wheels_digest(tmp_path) != first


def test_host_paths_are_under_its_root(tmp_path):
    host = Host(root=tmp_path)
    assert host.path("/etc/containerd/config.toml") == tmp_path / "etc/containerd/config.toml"
    with pytest.raises(InstallError, match="absolute"):
        host.path("etc/containerd")
    with pytest.raises(InstallError, match="exit 3"):
        host.run(["sh", "-c", "echo nope >&2; exit 3"], "a failing step")


# -- node label -------------------------------------------------------------------------------

class RecordingCoreApi:
    """Stands in for kubernetes.client.CoreV1Api: records the merge patches sent."""

    def __init__(self, fail: bool = False) -> None:
        self.patches: list[tuple[str, dict]] = []
        self.fail = fail

    def patch_node(self, name: str, body: dict) -> None:
        if self.fail:
            raise RuntimeError("403 Forbidden")
        self.patches.append((name, body))


def test_node_label_set_and_removed():
    api = RecordingCoreApi()
    node_label.set_label(api, "node-1", "graft.io/runtime=true")
    node_label.remove_label(api, "node-1", "graft.io/runtime=true")
    assert api.patches == [("node-1", {"metadata": {"labels": {"graft.io/runtime": "true"}}}),
                           ("node-1", {"metadata": {"labels": {"graft.io/runtime": None}}})]
    with pytest.raises(InstallError, match="labelling node node-1: 403"):
        node_label.set_label(RecordingCoreApi(fail=True), "node-1", "a=b")
    with pytest.raises(InstallError, match="KEY=VALUE"):
        node_label.parse_label("no-value")


def test_core_api_outside_a_cluster(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(InstallError, match="cannot reach the Kubernetes API"):
        node_label.core_api()


# -- options ----------------------------------------------------------------------------------

def _options(monkeypatch, env: dict[str, str], argv: list[str]) -> steps.Options:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    captured = {}
    monkeypatch.setattr(cli, "install", lambda opts: captured.setdefault("opts", opts))
    assert cli.main(["install", *argv]) == 0
    return captured["opts"]


def test_options_from_the_environment(monkeypatch):
    opts = _options(monkeypatch, {
        "GRAFT_DEPLOY_HOST_ROOT": "/host",
        "GRAFT_DEPLOY_HOST_EXEC": "nsenter --target 1 --mount --",
        "GRAFT_DEPLOY_SET": "hypervisor.accelerator=kvm hypervisor.vcpus=2",
        "GRAFT_DEPLOY_FACTORY_INIT": "false",
        "GRAFT_DEPLOY_NODE_NAME": "node-1",
    }, ["--set", "agent.runtime=runc"])
    assert opts.host_root == "/host" and opts.node_name == "node-1"
    assert opts.settings == ["hypervisor.accelerator=kvm", "hypervisor.vcpus=2",
                             "agent.runtime=runc"]
    assert opts.factory_init is False
    assert steps.Session(opts).host.exec_prefix == ("nsenter", "--target", "1", "--mount", "--")


def test_defaults_are_a_nodes_paths(monkeypatch):
    for key in list(os.environ):
        if key.startswith(cli.ENV_PREFIX):
            monkeypatch.delenv(key)
    opts = _options(monkeypatch, {}, [])
    assert (opts.host_root, opts.prefix, opts.containerd_config, opts.shim_dir) == \
        ("/", "/opt/graft", "/etc/containerd/config.toml", "/usr/local/bin")
    assert opts.factory_init is True and opts.sandboxer == "podsandbox"


def test_bad_usage_exits_2():
    with pytest.raises(SystemExit) as exc:
        cli.main(["install", "--sandboxer", "vm"])
    assert exc.value.code == 2


# -- refusals ---------------------------------------------------------------------------------

def test_install_refuses_a_graft_config_it_did_not_write(tmp_path, capsys):
    (tmp_path / "etc" / "graft").mkdir(parents=True)
    (tmp_path / "etc" / "graft" / "configuration.toml").write_text("# the admin's\n")
    code = cli.main(["install", "--host-root", str(tmp_path), "--graft-config",
                     "/etc/graft/configuration.toml"])
    assert code == 1
    assert "was not written by this installer" in capsys.readouterr().err
    assert (tmp_path / "etc" / "graft" / "configuration.toml").read_text() == "# the admin's\n"


def test_remove_refuses_while_sandboxes_exist(tmp_path):
    host = Host(root=tmp_path)
    prefix = payload.Prefix(PurePosixPath("/opt/graft"))
    config = graft_config.render(render_default_config(), [(("runtime", "state_dir"), "/run/g")])
    host.path(prefix.default_config).parent.mkdir(parents=True)
    host.path(prefix.default_config).write_text(config)
    (tmp_path / "run" / "g" / "sandboxes" / "pod-1").mkdir(parents=True)
    InstallRecord(prefix="/opt/graft", graft_config=str(prefix.default_config)).save(
        host.path(prefix.record))
    opts = steps.Options(host_root=str(tmp_path))
    with pytest.raises(InstallError, match="1 graft sandbox.*delete the graft pods first"):
        steps.remove(opts)
    assert host.path(prefix.record).exists() and host.path(prefix.default_config).exists()


def test_remove_without_an_install_is_a_no_op(tmp_path, capsys):
    steps.remove(steps.Options(host_root=str(tmp_path)))
    assert "nothing to remove" in capsys.readouterr().out


def test_record_round_trip(tmp_path):
    from deploy.installer.record import ContainerdRecord

    record = InstallRecord(prefix="/opt/graft", shim_link="/usr/local/bin/x",
                           containerd=ContainerdRecord(path="/c", backup="/c.graft-orig"))
    path = tmp_path / "install-record.json"
    assert record.save(path) and not record.save(path)
    assert InstallRecord.load(path) == record
    path.write_text('{"format": 99}')
    with pytest.raises(InstallError, match="format 99"):
        InstallRecord.load(path)

"""deploy/installer/config_file.py: containerd's config.toml on a node (a directory here):
backup, idempotent add, byte-exact restore, and what happens when an admin edited it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from deploy.installer import config_file
from deploy.installer.containerd_config import HandlerSpec, get_handler
from deploy.installer.host import Host, InstallError, sha256_bytes
from deploy.installer.record import InstallRecord

CONFIG = "/etc/containerd/config.toml"
ORIGINAL = b'''# admin's comment
version = 2

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"  # default
'''
SPEC = HandlerSpec("graft", "/opt/graft/etc/configuration.toml")


@pytest.fixture
def node(tmp_path: Path) -> Host:
    (tmp_path / "etc" / "containerd").mkdir(parents=True)
    return Host(root=tmp_path)


def _write(node: Host, data: bytes, mode: int = 0o644) -> Path:
    path = node.path(CONFIG)
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def _add(node: Host, record: InstallRecord, version: int | None = None):
    saved = []
    outcome = config_file.add(node, record, SPEC, CONFIG, version, lambda: saved.append(1))
    return outcome, saved


def test_add_backs_up_then_second_add_changes_nothing(node):
    path = _write(node, ORIGINAL, 0o600)
    record = InstallRecord(prefix="/opt/graft")
    outcome, saved = _add(node, record)
    assert outcome.changed and saved
    assert node.path(CONFIG + ".graft-orig").read_bytes() == ORIGINAL
    assert get_handler(path.read_text(), "graft")["runtime_type"] == "io.containerd.graft.v2"
    assert record.containerd.written_sha256 == sha256_bytes(path.read_bytes())
    assert path.stat().st_mode & 0o777 == 0o600  # the file keeps its mode
    stamp = (path.read_bytes(), path.stat().st_mtime_ns)
    outcome, saved = _add(node, record)
    assert not outcome.changed and not saved
    assert (path.read_bytes(), path.stat().st_mtime_ns) == stamp


def test_remove_restores_the_original_bytes_and_mode(node):
    path = _write(node, ORIGINAL, 0o640)
    record = InstallRecord(prefix="/opt/graft")
    _add(node, record)
    outcome = config_file.remove(node, record)
    assert outcome.changed and outcome.restored and not outcome.notes
    assert path.read_bytes() == ORIGINAL
    assert path.stat().st_mode & 0o777 == 0o640
    # A removal cut short before containerd restarted: the next run restarts it again.
    again = config_file.remove(node, record)
    assert again.changed and again.restored


def test_admin_edits_win_over_the_backup(node):
    path = _write(node, ORIGINAL)
    record = InstallRecord(prefix="/opt/graft")
    _add(node, record)
    edited = path.read_bytes() + b'\n[debug]\n  level = "debug"  # added by the admin\n'
    path.write_bytes(edited)
    outcome = config_file.remove(node, record)
    assert outcome.changed and not outcome.restored
    text = path.read_text()
    assert get_handler(text, "graft") is None
    assert 'level = "debug"  # added by the admin' in text and "# admin's comment" in text
    assert "was changed after graft was installed" in outcome.notes[0]
    assert node.path(CONFIG + ".graft-orig").read_bytes() == ORIGINAL  # kept for the admin


def test_reinstall_after_the_admin_dropped_the_handler_takes_a_new_backup(node):
    path = _write(node, ORIGINAL)
    record = InstallRecord(prefix="/opt/graft")
    _add(node, record)
    newer = ORIGINAL + b"# another admin change\n"
    path.write_bytes(newer)  # e.g. config management rewrote the file without graft
    outcome, _ = _add(node, record)
    assert outcome.changed
    assert node.path(CONFIG + ".graft-orig").read_bytes() == newer
    assert config_file.remove(node, record).restored
    assert path.read_bytes() == newer


def test_changed_settings_replace_our_handler_and_keep_the_backup(node):
    path = _write(node, ORIGINAL)
    record = InstallRecord(prefix="/opt/graft")
    _add(node, record)
    other = HandlerSpec("graft", "/etc/graft/configuration.toml")
    assert config_file.add(node, record, other, CONFIG, None, lambda: None).changed
    assert get_handler(path.read_text(), "graft")["options"]["ConfigPath"] == other.config_path
    assert config_file.remove(node, record).restored
    assert path.read_bytes() == ORIGINAL


def test_a_graft_handler_we_did_not_write_is_refused(node):
    _write(node, ORIGINAL)
    foreign = InstallRecord(prefix="/elsewhere")
    _add(node, foreign)
    node.path(CONFIG + ".graft-orig").unlink()
    mine = InstallRecord(prefix="/opt/graft")
    spec = HandlerSpec("graft", "/other.toml")
    with pytest.raises(InstallError, match="not written by this installer"):
        config_file.add(node, mine, spec, CONFIG, None, lambda: None)


def test_missing_file_is_created_and_removed_again(node):
    record = InstallRecord(prefix="/opt/graft")
    with pytest.raises(InstallError, match="--containerd-config-version"):
        _add(node, record)
    outcome, _ = _add(node, record, version=3)
    path = node.path(CONFIG)
    assert outcome.changed and path.read_text().startswith("version = 3\n")
    assert not node.path(CONFIG + ".graft-orig").exists()
    assert config_file.remove(node, record).restored
    assert not path.exists()


def test_restart_bookkeeping(node):
    _write(node, ORIGINAL)
    record = InstallRecord(prefix="/opt/graft")
    assert not config_file.needs_restart(node, record)  # nothing installed
    _add(node, record)
    assert config_file.needs_restart(node, record)
    config_file.mark_restarted(node, record, lambda: None)
    assert not config_file.needs_restart(node, record)
    _add(node, record)
    assert not config_file.needs_restart(node, record)


def test_not_utf8_is_refused(node):
    _write(node, b"version = 2\n# \xff\n")
    with pytest.raises(InstallError, match="not UTF-8"):
        _add(node, InstallRecord(prefix="/opt/graft"))

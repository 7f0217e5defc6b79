"""The node's containerd config.toml as a file: add the graft handler with a backup of the
original, and undo it on removal.

Rules (also in deploy/README.md):
* The backup (``<config>.graft-orig``) is the file as it was before graft's handler was
  first added; the install record keeps the sha256 of what the installer last wrote.
* Re-installing with the same settings does not touch the file. Different settings (another
  graft config path, sandboxer...) replace the installer's own handler; a ``graft`` handler
  the installer did not write is refused.
* Removal restores the backup byte for byte (and the file's mode and owner) when the file is
  still exactly what the installer wrote, restarts containerd, then drops the backup. If an admin changed the file in between, their
  changes win: only the graft handler is taken out (tomlkit, the rest stays as they left it)
  and the backup is kept for them to compare.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import containerd_config as cc
from .host import Host, InstallError, atomic_write, read_or_none, sha256_bytes
from .record import ContainerdRecord, InstallRecord

BACKUP_SUFFIX = ".graft-orig"


@dataclass(frozen=True)
class Outcome:
    changed: bool
    notes: tuple[str, ...] = ()
    restored: bool = False  # the original is back: the caller drops the backup after restart


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise InstallError(f"{where}: not UTF-8 text ({exc})") from exc


def add(host: Host, record: InstallRecord, spec: cc.HandlerSpec, config_path: str,
        version_if_missing: int | None, save) -> Outcome:
    """Add *spec* to the node's config; *save* persists *record* before the file changes."""
    path = host.path(config_path)
    current = read_or_none(path)
    previous = record.containerd if record.containerd and record.containerd.path == config_path \
        else None
    if current is None:
        if version_if_missing is None:
            raise InstallError(f"{config_path} does not exist and containerd's version is "
                               "unknown: pass --containerd-config-version 2 (containerd 1.x) "
                               "or 3 (2.x)")
        text = cc.new_config(version_if_missing)
    else:
        text = _decode(current, config_path)
    try:
        updated = cc.add_handler(text, spec, config_path, replace=previous is not None)
    except cc.ContainerdConfigError as exc:
        raise InstallError(str(exc)) from exc
    if current is not None and updated is text:
        return Outcome(False)
    stat = path.stat() if current is not None else None
    if previous is not None and current is not None and \
            sha256_bytes(current) == previous.written_sha256:
        entry = previous  # still our last write: the backup is still the pre-graft file
    elif current is None or cc.get_handler(text, spec.name, config_path) is None:
        entry = ContainerdRecord(
            path=config_path, backup=config_path + BACKUP_SUFFIX,
            original_absent=current is None,
            mode=(stat.st_mode & 0o7777) if stat else 0o644,
            uid=stat.st_uid if stat else 0, gid=stat.st_gid if stat else 0)
        if current is not None:
            atomic_write(host.path(entry.backup), current, entry.mode, (entry.uid, entry.gid))
    else:
        assert previous is not None  # a handler we did not write was refused above
        entry = previous
        entry.exact_restore = False  # edited since our write: the backup is stale
    entry.written_sha256 = sha256_bytes(updated.encode())
    record.containerd = entry
    save()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, updated.encode(), entry.mode, (entry.uid, entry.gid))
    return Outcome(True)


def needs_restart(host: Host, record: InstallRecord) -> bool:
    """containerd has not been restarted since the file last changed (e.g. a crash)."""
    entry = record.containerd
    if entry is None:
        return False
    current = read_or_none(host.path(entry.path))
    return current is not None and sha256_bytes(current) != entry.restarted_sha256


def mark_restarted(host: Host, record: InstallRecord, save) -> None:
    entry = record.containerd
    if entry is not None:
        current = read_or_none(host.path(entry.path))
        entry.restarted_sha256 = sha256_bytes(current) if current is not None else ""
        save()


def remove(host: Host, record: InstallRecord) -> Outcome:
    """Undo :func:`add`; the caller restarts containerd when ``changed``."""
    entry = record.containerd
    if entry is None:
        return Outcome(False)
    path, backup_path = host.path(entry.path), host.path(entry.backup)
    current = read_or_none(path)
    backup = read_or_none(backup_path)
    untouched = current is not None and sha256_bytes(current) == entry.written_sha256
    if untouched and entry.exact_restore and (entry.original_absent or backup is not None):
        if entry.original_absent:
            path.unlink()
        else:
            atomic_write(path, backup, entry.mode, (entry.uid, entry.gid))
        return Outcome(True, restored=True)
    if entry.exact_restore and (current == backup if backup is not None else
                                entry.original_absent and current is None):
        return Outcome(True, restored=True)  # restored by an earlier run cut short: restart
    if current is None:
        return Outcome(False, (f"{entry.path} is gone: nothing to take the graft handler "
                               "out of",))
    text = _decode(current, entry.path)
    try:
        updated = cc.remove_handler(text, record.handler, entry.path)
    except cc.ContainerdConfigError as exc:
        raise InstallError(str(exc)) from exc
    if updated is not text:
        stat = path.stat()
        atomic_write(path, updated.encode(), stat.st_mode & 0o7777, (stat.st_uid, stat.st_gid))
    if not untouched:
        why = "was changed after graft was installed"
    elif not entry.exact_restore:
        why = "was edited between two graft installs"
    else:
        why = f"has lost its backup {entry.backup}"
    kept = f"; the pre-graft copy is kept at {entry.backup}" if backup is not None else ""
    return Outcome(updated is not text,
                   (f"{entry.path} {why}: only the {record.handler!r} handler was taken out, "
                    f"the rest stays as it is{kept}",))

"""Where each sandbox keeps its host state, and how to find or clean what a dead owner left.

A sandbox is named by who asked for it — the containerd (its grpc address), the containerd
namespace and the sandbox id — so the same id in two namespaces, or from two containerds
sharing one state dir, never shares a directory. The directory name is a short digest of the
three: ids up to containerd's 76 characters never lengthen the unix socket paths inside it
(only the state dir's own length matters, checked by the config). ``owner.json`` records the
full name; cleanup refuses a directory whose record names somebody else.

    <state_dir>/sandboxes/<key>/owner.json     {id, namespace, owner}
                                vmm.json       {pid, started}  (the VMM process)
                                boot_path.json metrics.prom network.json timeline.json
                                shared/ control.sock agent.sock console.log ...
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from shim.config import GraftConfig
from shim.errors import InvalidArgument
from shim.mounts import unmount_all_under

log = logging.getLogger(__name__)

SANDBOXES_DIR = "sandboxes"
KEY_LENGTH = 20  # hex digits of sha256: 80 bits, collisions are not a practical concern
# containerd's identifiers: letters, digits and inner [._-], at most 76 characters.
_VALID_ID = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")
MAX_ID_LENGTH = 76
OWNER_FILE = "owner.json"
VMM_FILE = "vmm.json"
BOOT_PATH_FILE = "boot_path.json"
METRICS_FILE = "metrics.prom"
NETWORK_FILE = "network.json"
TIMELINE_FILE = "timeline.json"
# graft's own sandboxes (debug run, tests, benchmarks) have no containerd behind them.
LOCAL_NAMESPACE = "graft"


class InvalidSandboxId(InvalidArgument):
    pass


def validate_id(value: str, what: str = "sandbox id") -> str:
    if not value or len(value) > MAX_ID_LENGTH or not _VALID_ID.match(value):
        raise InvalidSandboxId(f"invalid {what} {value!r}: 1-{MAX_ID_LENGTH} letters, digits "
                               "and inner '.', '_' or '-'")
    return value


@dataclass(frozen=True)
class SandboxRef:
    """Who a sandbox is: its id, the containerd namespace, the containerd that owns it."""

    id: str
    namespace: str = LOCAL_NAMESPACE
    owner: str = ""  # containerd's grpc address; "" for graft's own sandboxes

    def __post_init__(self) -> None:
        validate_id(self.id)
        if not self.namespace or "\0" in self.namespace + self.owner:
            raise InvalidSandboxId(f"invalid namespace {self.namespace!r} for sandbox {self.id}")

    @classmethod
    def of(cls, value: "SandboxRef | str") -> "SandboxRef":
        return value if isinstance(value, SandboxRef) else cls(value)

    @property
    def key(self) -> str:
        name = "\0".join((self.owner, self.namespace, self.id)).encode()
        return hashlib.sha256(name).hexdigest()[:KEY_LENGTH]

    def describe(self) -> str:
        return self.id if self.namespace == LOCAL_NAMESPACE else f"{self.namespace}/{self.id}"


def run_dir(config: GraftConfig, ref: SandboxRef) -> Path:
    return config.state_dir / SANDBOXES_DIR / ref.key


# The longest unix socket path graft makes below a run dir (QMP's; the agent's is shorter).
LONGEST_SOCKET_NAME = "control.sock"
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with the NUL


def check_socket_room(config: GraftConfig) -> None:
    """Fail before anything is created, naming the key, when unix socket paths below the
    state dir would not fit (ids never matter: run dirs have a fixed-length name)."""
    longest = config.state_dir / SANDBOXES_DIR / ("0" * KEY_LENGTH) / LONGEST_SOCKET_NAME
    size = len(os.fsencode(longest))
    if size > MAX_SOCKET_PATH:
        allowed = MAX_SOCKET_PATH - (size - len(os.fsencode(config.state_dir)))
        raise InvalidArgument(
            f"[runtime] state_dir {str(config.state_dir)!r} is too long: unix socket paths "
            f"below it would be {size} bytes (> {MAX_SOCKET_PATH}); use at most {allowed} bytes")


def write_owner(directory: Path, ref: SandboxRef) -> None:
    (directory / OWNER_FILE).write_text(json.dumps(asdict(ref)))


def read_owner(directory: Path) -> SandboxRef | None:
    try:
        record = json.loads((directory / OWNER_FILE).read_text())
        return SandboxRef(str(record["id"]), str(record["namespace"]), str(record["owner"]))
    except (OSError, ValueError, KeyError, TypeError, InvalidArgument):
        return None


# -- the VMM process --------------------------------------------------------------------------

def record_vmm(directory: Path, pid: int) -> None:
    """The VMM's pid and start time: a pid alone may name an unrelated process later."""
    started = psutil.Process(pid).create_time()
    (directory / VMM_FILE).write_text(json.dumps({"pid": pid, "started": started}))


def recorded_vmm(directory: Path) -> psutil.Process | None:
    """The recorded VMM if that very process still runs (pid and start time both match)."""
    try:
        record = json.loads((directory / VMM_FILE).read_text())
        proc = psutil.Process(int(record["pid"]))
        if abs(proc.create_time() - float(record["started"])) > 0.01:
            return None  # the pid was reused
        return proc
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return None


def vmm_pid(config: GraftConfig, ref: SandboxRef) -> int | None:
    proc = recorded_vmm(run_dir(config, ref))
    return proc.pid if proc is not None else None


def _kill_recorded_vmm(directory: Path) -> None:
    proc = recorded_vmm(directory)
    if proc is None:
        return
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    except psutil.Error:
        pass


# -- listing and cleanup ------------------------------------------------------------------------

@dataclass(frozen=True)
class SandboxEntry:
    directory: Path
    ref: SandboxRef | None  # None: no readable owner record (being created, or not ours)


def list_sandboxes(config: GraftConfig) -> list[SandboxEntry]:
    root = config.state_dir / SANDBOXES_DIR
    if not root.is_dir():
        return []
    return [SandboxEntry(entry, read_owner(entry)) for entry in sorted(root.iterdir())
            if entry.is_dir()]


def read_record(config: GraftConfig, ref: SandboxRef, name: str) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir(config, ref) / name).read_text())
    except (OSError, ValueError):
        return None


def read_boot_path(config: GraftConfig, ref: "SandboxRef | str") -> dict | None:
    return read_record(config, SandboxRef.of(ref), BOOT_PATH_FILE)


def remove_run_dir(directory: Path) -> None:
    """Unmount everything below, then delete (never delete through a mount)."""
    unmount_all_under(directory)
    shutil.rmtree(directory, ignore_errors=True)


def cleanup_leftovers(config: GraftConfig, ref: SandboxRef) -> None:
    """Remove whatever a dead owner left of *ref*: VMM process, tap, mounts, sockets, files.
    Safe when nothing is left; never touches a directory recorded for another owner."""
    from shim.network import detach_endpoint

    directory = run_dir(config, ref)
    if not directory.exists():
        return
    recorded = read_owner(directory)
    if recorded is not None and recorded != ref:
        log.warning("%s belongs to %s, not %s: left alone", directory, recorded, ref)
        return
    _kill_recorded_vmm(directory)
    try:
        net = json.loads((directory / NETWORK_FILE).read_text())
        detach_endpoint(Path(net["netns"]), net["tap"])
    except (OSError, ValueError, KeyError):
        pass
    remove_run_dir(directory)

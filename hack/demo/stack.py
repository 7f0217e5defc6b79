"""The demo's private stack, all under one directory: a private containerd 1.6 with the CRI
plugin, a bridge CNI network and the `runc` and `graft` handlers
(hack/containerd/private_containerd.py), graft's state dir and the template path; the graft
CLI of this checkout, run against the graft handler's config file."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import private_containerd
from bench.pods import Cri
from shim.config import GraftConfig, load_config

from . import ROOT

CRI_NAMESPACE = "k8s.io"  # the containerd namespace CRI pods live in
GRAFT_TIMEOUT_S = 600.0
CLEANUP_WAIT_S = 60.0  # for a graft command told to stop, to undo what it started


@dataclass(frozen=True)
class DemoDirs:
    base: Path

    @property
    def containerd(self) -> Path:
        return self.base / "ctrd"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def template(self) -> Path:
        return self.base / "tpl"

    @property
    def logs(self) -> Path:
        return self.base / "logs"


class Stack:
    def __init__(self, base: Path) -> None:
        self.dirs = DemoDirs(base)
        self.layout = private_containerd.Layout(self.dirs.containerd)
        self.cri: Cri | None = None

    @property
    def address(self) -> str:
        return str(self.layout.socket)

    @property
    def config_path(self) -> Path:
        """The graft handler's ConfigPath: the shim reads it at each sandbox create."""
        return self.layout.graft_config

    @property
    def config(self) -> GraftConfig:
        return load_config(self.config_path)

    def write_graft_config(self, enable_template: bool) -> None:
        lines = ["[runtime]", f'state_dir = "{self.dirs.state}"', "",
                 "[factory]", f"enable_template = {str(enable_template).lower()}",
                 f'template_path = "{self.dirs.template}"']
        if guest := os.environ.get("GRAFT_GUEST_DIR"):
            lines += ["", "[guest]", f'image_dir = "{guest}"']
        self.config_path.write_text("\n".join(lines) + "\n")

    def start_containerd(self) -> None:
        self.layout.base.mkdir(parents=True, exist_ok=True)
        private_containerd.start(self.layout)
        self.connect_cri()

    def connect_cri(self) -> bool:
        """A CRI client of the demo's containerd (also of one an earlier, killed demo left
        running); False when no containerd runs there."""
        if private_containerd.running_pid(self.layout) is None:
            return False
        if self.cri is None:
            self.cri = Cri(self.address, self.dirs.logs, pod_namespace="demo")
        return True

    def network(self) -> private_containerd.PodNetwork | None:
        return self.layout.network if self.layout.network_file.exists() else None

    def graft(self, *args: str, timeout: float = GRAFT_TIMEOUT_S) -> str:
        """`graft --config <handler config> ARGS` of this checkout; its stdout. In its own
        process group, so that a Ctrl-C reaches it once, forwarded from here, and it
        undoes what it started before the demo cleans up."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
        proc = subprocess.Popen([sys.executable, "-m", "shim.cli.graft_main", "--config",
                                 str(self.config_path), *args], cwd=ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, process_group=0)
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=CLEANUP_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
            raise
        if proc.returncode != 0:
            last = (err.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            raise RuntimeError(f"graft {' '.join(args)}: {last}")
        return out

    def pod_ids(self) -> list[str]:
        from cri_api.v1 import api_pb2 as cri

        assert self.cri is not None
        return [p.id for p in self.cri.rt.ListPodSandbox(cri.ListPodSandboxRequest(),
                                                         timeout=60).items]

    def remove_pod(self, pod_id: str) -> None:
        assert self.cri is not None
        self.cri.remove_pod(pod_id)

    def close_cri(self) -> None:
        if self.cri is not None:
            self.cri.close()
            self.cri = None

    def purge_containerd(self) -> None:
        """Stop containerd and any shim it left, remove its bridge, mounts and directory."""
        self.close_cri()
        private_containerd.purge(self.layout)

"""A node for graft's reliability tests and bench/soak.py: one private containerd 1.6 (its
`Containerd` handle from testing.py), one graft state dir of its own and one template. The
shim reads the graft config the node rewrites between pods (template on or off, failpoints
allowed, hypervisor keys), CRI (e2e/cri_client.py) drives the pods, and NodeLeaks checks that
nothing of any pod is left."""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "hack" / "containerd"), str(ROOT / "e2e")]

from leaks import NodeLeaks, mount_points  # noqa: E402
from shim.config import GraftConfig, load_config  # noqa: E402
from shim.sandbox.state import SandboxRef, read_boot_path  # noqa: E402

NAMESPACE = "k8s.io"


class GraftNode:
    def __init__(self, containerd) -> None:
        self.containerd = containerd
        # Short and our own (unix socket paths below it; NodeLeaks checks all of it).
        self.state_dir = Path(tempfile.mkdtemp(prefix="g-rel-", dir="/run"))
        self.template_path = self.state_dir / "template"
        self.guest_dir = os.environ.get("GRAFT_GUEST_DIR", "/var/lib/graft/guest")
        self._client = None

    # -- the graft config the shim reads (runtime option ConfigPath) ----------------------------

    def configure(self, *, template: bool = True, failpoints: bool = False,
                  cache_size: int = 0,
                  state_dir: Path | None = None, guest_dir: Path | None = None,
                  template_path: Path | None = None, **hypervisor: object) -> GraftConfig:
        """Write the config every later pod start reads; what is not given is the node's."""
        lines = ["[runtime]", 'log_level = "debug"',
                 f'state_dir = "{state_dir or self.state_dir}"', "",
                 "[guest]", f'image_dir = "{guest_dir or self.guest_dir}"', "",
                 "[factory]", f"enable_template = {str(template).lower()}",
                 f'template_path = "{template_path or self.template_path}"',
                 f"cache_size = {cache_size}"]
        if failpoints:
            lines += ["", "[testing]", "failpoints = true"]
        if hypervisor:
            lines += ["", "[hypervisor]"] + [f"{k} = {_toml(v)}" for k, v in hypervisor.items()]
        path, text = self.containerd.layout.graft_config, "\n".join(lines) + "\n"
        if not path.exists() or path.read_text() != text:  # an unchanged file keeps its mtime:
            path.write_text(text)  # what a warm pool was made for stays current
        return self.config

    @property
    def config(self) -> GraftConfig:
        return load_config(self.containerd.layout.graft_config)

    def build_template(self) -> None:
        from shim.factory.build import init_template

        asyncio.run(init_template(self.config))

    # -- CRI ------------------------------------------------------------------------------------

    @property
    def cri(self):
        if self._client is None:
            from cri_client import Client

            self._client = Client(self.containerd.address, self.containerd.layout.base / "cri")
        return self._client

    def reconnect(self) -> None:
        """A new CRI channel (after containerd restarted)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def remove_all_pods(self) -> list[str]:
        from cri_api.v1 import api_pb2 as cri

        pods = self.cri.rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=60).items
        for pod in pods:
            self.cri.stop_remove(pod.id)
        return [pod.id for pod in pods]

    def boot_path(self, pod: str) -> dict:
        record = read_boot_path(self.config, SandboxRef(pod, NAMESPACE, self.containerd.address))
        assert record is not None, f"pod {pod} has no boot record"
        return record

    # -- containerd's log (the shims' lines go there, through the bundle's log fifo) ----------

    def log_mark(self) -> int:
        path = self.containerd.layout.log
        return path.stat().st_size if path.exists() else 0

    def log_since(self, mark: int) -> str:
        with open(self.containerd.layout.log, "rb") as f:
            f.seek(mark)
            return f.read().decode(errors="replace")

    def leak_check(self, state_dir: Path | None = None) -> NodeLeaks:
        return NodeLeaks(self.containerd, state_dir or self.state_dir)

    def close(self) -> None:
        try:
            if self._client is not None:
                try:
                    self.remove_all_pods()
                finally:
                    self._client.close()
            from shim.factory.build import destroy_template

            destroy_template(self.configure(template=True))  # the node's own template
        finally:
            for point in sorted((p for p in mount_points()
                                 if p.startswith(f"{self.state_dir}/")), key=len, reverse=True):
                subprocess.run(["umount", "-l", point], capture_output=True)
            shutil.rmtree(self.state_dir, ignore_errors=True)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


@contextlib.contextmanager
def template_node(containerd, **config: object) -> Iterator[GraftNode]:
    """A node whose template is built (with *config*'s keys), closed afterwards."""
    node = GraftNode(containerd)
    try:
        node.configure(template=True, **config)
        node.build_template()
        yield node
    finally:
        node.close()

"""Our own Python code in the guest: the graft_agent package and the host-neutral shim.ttrpc."""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import GuestImageError
from .layout import GRAFT_LIB, Rootfs

AGENT_PACKAGE = "graft_agent"
TTRPC_PACKAGE = "shim.ttrpc"
_SKIP_DIRS = {"__pycache__", "tests", ".pytest_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class AgentSources:
    agent: Path   # the graft_agent package directory
    ttrpc: Path   # the shim/ttrpc package directory


def locate_sources() -> AgentSources:
    """Find graft_agent and shim.ttrpc where this interpreter imports them from."""
    return AgentSources(_package_dir(AGENT_PACKAGE), _package_dir(TTRPC_PACKAGE))


def ensure_generated(sources: AgentSources) -> None:
    """The agent imports api/gen/agent_pb2.py; generate it (hack/gen_protos.py) when missing."""
    if (sources.agent / "api" / "gen" / "agent_pb2.py").is_file():
        return
    script = sources.agent.parent / "hack" / "gen_protos.py"
    if not script.is_file():
        raise GuestImageError(f"{sources.agent}/api/gen/agent_pb2.py is missing and there is no "
                              f"hack/gen_protos.py next to the package to generate it")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=str(script.parent.parent))
    if proc.returncode != 0 or not (sources.agent / "api" / "gen" / "agent_pb2.py").is_file():
        raise GuestImageError(f"generating the agent's protobuf bindings failed: {proc.stderr.strip()[-500:]}")


def source_files(package_dir: Path) -> list[Path]:
    """The files of a package that go into the guest (no caches, no tests), sorted."""
    files = []
    for path in package_dir.rglob("*"):
        rel = path.relative_to(package_dir)
        if any(part in _SKIP_DIRS for part in rel.parts) or path.name.endswith(_SKIP_SUFFIXES):
            continue
        if path.is_file():
            files.append(path)
    return sorted(files)


def sources_digest(sources: AgentSources) -> str:
    """sha256 over the relative paths and contents of everything stage_agent copies."""
    digest = hashlib.sha256()
    for label, root in (("graft_agent", sources.agent), ("shim/ttrpc", sources.ttrpc)):
        for path in source_files(root):
            digest.update(f"{label}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def external_imports(sources: AgentSources) -> list[str]:
    """Every module our guest code imports from outside itself (stdlib, protobuf), also lazily
    inside functions, so the build can check the trimmed stdlib still has all of them."""
    found: set[str] = set()
    for root in (sources.agent, sources.ttrpc):
        for path in source_files(root):
            if path.suffix != ".py":
                continue
            try:
                tree = ast.parse(path.read_bytes(), filename=str(path))
            except SyntaxError as exc:
                raise GuestImageError(f"{path}: syntax error: {exc.msg} (line {exc.lineno})") from exc
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module)
    ours = (AGENT_PACKAGE, "shim")
    return sorted(name for name in found if name.split(".")[0] not in ours and name != "__future__")


def stage_agent(rootfs: Rootfs, sources: AgentSources) -> list[str]:
    """Copy both packages under /usr/lib/graft (+ an empty shim/__init__.py); return the copied dirs."""
    if not (sources.agent / "__main__.py").is_file():
        raise GuestImageError(f"{sources.agent}/__main__.py is missing: the guest runs `python3 -m graft_agent`")
    for root, guest in ((sources.agent, f"{GRAFT_LIB}/graft_agent"), (sources.ttrpc, f"{GRAFT_LIB}/shim/ttrpc")):
        for path in source_files(root):
            rootfs.copy_file(path, f"{guest}/{path.relative_to(root).as_posix()}", mode=0o644)
    rootfs.write_file(f"{GRAFT_LIB}/shim/__init__.py", b"")
    return [f"{GRAFT_LIB}/graft_agent", f"{GRAFT_LIB}/shim"]


def _package_dir(name: str) -> Path:
    try:
        spec = importlib.util.find_spec(name)
    except ImportError as exc:
        raise GuestImageError(f"cannot locate the Python package {name}: {exc}") from exc
    if spec is None or not spec.submodule_search_locations:
        raise GuestImageError(f"cannot locate the Python package {name} (is graft installed?)")
    return Path(list(spec.submodule_search_locations)[0])

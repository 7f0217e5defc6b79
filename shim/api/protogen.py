"""Protobuf code generation at setup time (nothing generated is committed)."""
from __future__ import annotations

import hashlib
from pathlib import Path


def _protoc(args: list[str]) -> None:
    from grpc_tools import protoc  # build-time dependency only
    import grpc_tools

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    rc = protoc.main(["protoc", f"-I{include}", *args])
    if rc != 0:
        raise RuntimeError(f"protoc failed ({rc}) for: {' '.join(args)}")


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _ensure_package(out: Path) -> None:
    """Make every folder under *out* importable as a package."""
    for d in [out, *[p for p in out.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch(exist_ok=True)


def generate_agent(root: Path) -> Path:
    src = root / "graft_agent" / "protos"
    out = root / "graft_agent" / "api" / "gen"
    protos = sorted(src.glob("*.proto"))
    stamp = out / ".digest"
    digest = _digest(protos)
    if stamp.exists() and stamp.read_text() == digest:
        return out
    out.mkdir(parents=True, exist_ok=True)
    _protoc([f"-I{src}", f"--python_out={out}", *map(str, protos)])
    _ensure_package(out)
    stamp.write_text(digest)
    return out


def generate_all(root: Path, containerd_api_gocode: Path) -> int:
    """Our agent API, then containerd's (*containerd_api_gocode*: the 2.x API package's Go
    source root, see containerd_protos)."""
    generate_agent(root)
    try:
        from . import containerd_protos
    except ImportError:
        return 0
    containerd_protos.generate(root, containerd_api_gocode)
    return 0

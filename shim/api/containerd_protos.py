"""Generate Python bindings of containerd's protos from Debian's Go source packages.

The 1.6 protos carry gogoproto / containerd fieldpath options that only matter to Go code
generators. We copy each needed file into a scratch tree, drop those imports and options (the
wire format does not change), rewrite the import paths under ``shim/api/gen/`` and compile with
grpcio-tools' protoc. Rewriting the paths gives every generated module a fully qualified import
(``shim.api.gen.containerd...``) and every proto file a unique name in the descriptor pool, so
nothing clashes with other copies of e.g. google/rpc/status.proto loaded by other libraries.

Packages (installed with apt): golang-github-containerd-containerd-dev,
golang-github-containerd-cgroups-dev, golang-github-gogo-googleapis-dev. The task API comes
from those 1.6 sources. The Sandbox API (containerd.runtime.sandbox.v1, served for containerd
2.x's `sandboxer = "shim"`) and the types only it uses (platform, metrics) come from a newer
golang-github-containerd-containerd-api-dev, unpacked privately by
hack/containerd/compat.py (*api_gocode*); its imports of types both releases define (mount) are
resolved to the 1.6 file, whose wire format is the same.
"""
from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

GOCODE = Path("/usr/share/gocode/src/github.com")
GEN_PREFIX = "shim/api/gen"  # import path prefix == python package of the output


@dataclass(frozen=True)
class ProtoSource:
    source: Path       # file on disk
    import_path: str   # path other protos use to import it
    target: str        # path under GEN_PREFIX


_API_FILES = (  # from the 2.x API package, relative to github.com/containerd/containerd/
    "api/runtime/sandbox/v1/sandbox.proto",
    "api/types/platform.proto",
    "api/types/metrics.proto",
)


def _api_sources(api_gocode: Path) -> list[ProtoSource]:
    base = api_gocode / "github.com" / "containerd" / "containerd"
    return [ProtoSource(base / f, f"github.com/containerd/containerd/{f}", f"containerd/{f}")
            for f in _API_FILES]


def _sources(gocode: Path) -> list[ProtoSource]:
    ctrd = gocode / "containerd" / "containerd"
    cgroups = gocode / "containerd" / "cgroups"
    ctrd_files = [
        "runtime/v2/task/shim.proto",
        "api/types/mount.proto",
        "api/types/task/task.proto",
        "api/events/task.proto",
        "api/services/ttrpc/events/v1/events.proto",
        "pkg/runtimeoptions/v1/api.proto",
    ]
    out = [ProtoSource(ctrd / f, f"github.com/containerd/containerd/{f}", f"containerd/{f}")
           for f in ctrd_files]
    out += [
        ProtoSource(cgroups / "stats/v1/metrics.proto",
                    "github.com/containerd/cgroups/stats/v1/metrics.proto",
                    "cgroups/stats/v1/metrics.proto"),
        ProtoSource(cgroups / "v2/stats/metrics.proto",
                    "github.com/containerd/cgroups/v2/stats/metrics.proto",
                    "cgroups/v2/stats/metrics.proto"),
        ProtoSource(gocode / "gogo" / "googleapis" / "google/rpc/status.proto",
                    "google/rpc/status.proto", "google/rpc/status.proto"),
    ]
    return out


# -- gogo clean-up -----------------------------------------------------------------------------

_GO_ONLY = ("(gogoproto.", "(containerd.plugin.")
_GO_ONLY_IMPORT = re.compile(r'^\s*import\s+(weak\s+)?"[^"]*(gogoproto/gogo|plugin/fieldpath)\.proto"\s*;\s*$')
_GO_ONLY_OPTION = re.compile(r"^\s*option\s*\((gogoproto|containerd\.plugin)\.[^;]*;\s*$")
_IMPORT = re.compile(r'^(\s*import\s+(?:public\s+|weak\s+)?")([^"]+)(".*)$')


def _split_options(body: str) -> list[str]:
    """Split the inside of a `[...]` field option list on top-level commas (quotes respected)."""
    items, current, quote, escaped = [], [], "", False
    for ch in body:
        if quote:
            current.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
            current.append(ch)
        elif ch == ",":
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    return [i.strip() for i in items if i.strip()]


def _strip_field_options(line: str) -> str:
    start = line.find("[")
    end = line.rfind("]")
    if start < 0 or end < start:
        return line
    kept = [o for o in _split_options(line[start + 1:end]) if not o.startswith(_GO_ONLY)]
    inner = f" [{', '.join(kept)}]" if kept else ""
    return line[:start].rstrip() + inner + line[end + 1:]


def clean_proto(text: str, rename_import: dict[str, str]) -> str:
    """Drop Go-generator-only imports/options and rewrite imports via `rename_import`."""
    lines = []
    for line in text.splitlines():
        if _GO_ONLY_IMPORT.match(line) or _GO_ONLY_OPTION.match(line):
            continue
        if any(tag in line for tag in _GO_ONLY):
            line = _strip_field_options(line)
            if any(tag in line for tag in _GO_ONLY):
                raise ValueError(f"cannot strip Go-only option from: {line.strip()}")
        match = _IMPORT.match(line)
        if match and match.group(2) in rename_import:
            line = f"{match.group(1)}{rename_import[match.group(2)]}{match.group(3)}"
        lines.append(line)
    return "\n".join(lines) + "\n"


# -- generation --------------------------------------------------------------------------------

def _digest(sources: list[ProtoSource]) -> str:
    import grpc_tools

    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(getattr(grpc_tools, "__version__", "").encode())
    for src in sources:
        h.update(src.target.encode())
        h.update(src.source.read_bytes())
    return h.hexdigest()


def _protoc(args: list[str]) -> None:
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    rc = protoc.main(["protoc", f"-I{include}", *args])
    if rc != 0:
        raise RuntimeError(f"protoc failed ({rc}) compiling containerd protos")


def generate(root: Path, api_gocode: Path, gocode: Path = GOCODE) -> Path:
    """Compile the containerd protos into root/shim/api/gen (skipped when inputs are unchanged)."""
    sources = _sources(gocode)
    missing = [str(s.source) for s in sources if not s.source.is_file()]
    if missing:
        raise FileNotFoundError(
            "containerd proto sources missing (apt-get install golang-github-containerd-containerd-dev "
            f"golang-github-containerd-cgroups-dev golang-github-gogo-googleapis-dev): {missing}")
    api_sources = _api_sources(api_gocode)
    missing = [str(s.source) for s in api_sources if not s.source.is_file()]
    if missing:
        raise FileNotFoundError("containerd 2.x API protos missing (hack/containerd/compat.py "
                                f"fetch-api sid): {missing}")
    sources += api_sources
    out = root / GEN_PREFIX
    stamp = out / ".digest"
    digest = _digest(sources)
    if stamp.is_file() and stamp.read_text() == digest:
        return out

    rename = {s.import_path: f"{GEN_PREFIX}/{s.target}" for s in sources}
    with tempfile.TemporaryDirectory(prefix="graft-protos-") as tmp:
        src_root, py_root = Path(tmp) / "src", Path(tmp) / "py"
        for s in sources:
            dest = src_root / GEN_PREFIX / s.target
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(clean_proto(s.source.read_text(), rename))
        py_root.mkdir()
        _protoc([f"-I{src_root}", f"--python_out={py_root}",
                 *(str(src_root / GEN_PREFIX / s.target) for s in sources)])
        built = py_root / GEN_PREFIX
        for d in [built, *(p for p in built.rglob("*") if p.is_dir())]:
            (d / "__init__.py").touch()
        # Swap in the new tree whole, so a failed run never leaves a half-written gen/.
        staging = out.with_name(out.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(built, staging)
        (staging / ".digest").write_text(digest)
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    return out

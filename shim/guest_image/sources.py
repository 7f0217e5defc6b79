"""Where the guest image's inputs come from: Debian packages (host apt) and PyPI wheels (pip).

Resolution uses only apt's local package lists, and downloads are skipped when
the exact file is already in the cache directory, so a rebuild from a warm
cache needs no network.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from .errors import GuestImageError
from .tools import require_tool, run


@dataclass(frozen=True)
class DebRef:
    """One exact Debian package version, as apt's lists describe it."""

    name: str
    version: str
    arch: str
    sha256: str
    depends: str = ""

    @property
    def filename(self) -> str:
        # The name `apt-get download` gives the file (epoch ':' is URL-quoted).
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


class PackageSources(Protocol):
    """The download layer the builder talks to (replaced by a fake in unit tests)."""

    def resolve(self, names: list[str], kernel_metapackage: str) -> tuple[list[DebRef], DebRef]:
        """The candidate version of each package, and the kernel package the metapackage pulls in."""
        ...

    def fetch_debs(self, refs: list[DebRef], cache_dir: Path) -> dict[str, Path]: ...
    def fetch_wheel(self, project: str, version: str, cache_dir: Path) -> Path: ...


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class HostPackageSources:
    """apt-cache/apt-get with the host's apt configuration; `python -m pip download` for wheels."""

    def __init__(self, *, arch: str = "amd64", wheel_platform: str = "manylinux2014_x86_64",
                 python_version: str = "3.11", resolution_cache: Path | None = None) -> None:
        self.arch = arch
        self.resolution_cache = resolution_cache
        self.wheel_platform = wheel_platform
        self.python_version = python_version

    # -- Debian packages -------------------------------------------------------------------

    def resolve(self, names: list[str], kernel_metapackage: str) -> tuple[list[DebRef], DebRef]:
        # apt-cache rebuilds its cache on every call when pkgcache is disabled (~0.4 s each here),
        # so the answer is remembered for as long as apt's lists and configuration are unchanged.
        key = {"names": names, "kernel": kernel_metapackage, "arch": self.arch, "apt": _apt_state()}
        cached = self._load_resolution(key)
        if cached is not None:
            return cached
        require_tool("apt-cache", "apt")
        debs = self._resolve_candidates(names + [kernel_metapackage])
        meta = debs.pop()
        match = re.search(r"(linux-image-[^\s,(|]+)\s*(?:\(\s*=\s*([^)\s]+)\s*\))?", meta.depends)
        if match is None:
            raise GuestImageError(f"{kernel_metapackage} {meta.version} does not depend on a linux-image package "
                                  f"(Depends: {meta.depends or 'none'})")
        name, version = match.group(1), match.group(2)
        kernel = self._show([(name, version)])[0] if version else self._resolve_candidates([name])[0]
        self._store_resolution(key, debs, kernel)
        return debs, kernel

    def _resolve_candidates(self, names: list[str]) -> list[DebRef]:
        candidates = _parse_policy(run(["apt-cache", "policy", *names], what="apt-cache policy"))
        for name in names:
            if not candidates.get(name):
                raise GuestImageError(
                    f"Debian package {name} has no installable candidate in apt's lists "
                    f"(unknown package, or run `apt-get update`)")
        return self._show([(name, candidates[name]) for name in names])

    def _load_resolution(self, key: dict) -> tuple[list[DebRef], DebRef] | None:
        if self.resolution_cache is None:
            return None
        try:
            data = json.loads(self.resolution_cache.read_text())
            if data["key"] != key:
                return None
            return [DebRef(**d) for d in data["debs"]], DebRef(**data["kernel"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _store_resolution(self, key: dict, debs: list[DebRef], kernel: DebRef) -> None:
        if self.resolution_cache is None:
            return
        data = {"key": key, "debs": [asdict(d) for d in debs], "kernel": asdict(kernel)}
        tmp = self.resolution_cache.with_suffix(".tmp")
        try:
            self.resolution_cache.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.resolution_cache)
        except OSError:
            pass  # only a speed-up

    def _show(self, pinned: list[tuple[str, str]]) -> list[DebRef]:
        out = run(["apt-cache", "show", *(f"{n}={v}" for n, v in pinned)],
                  what="apt-cache show " + " ".join(n for n, _ in pinned))
        found: dict[tuple[str, str], DebRef] = {}
        for stanza in _parse_stanzas(out):
            key = (stanza.get("Package", ""), stanza.get("Version", ""))
            if key in pinned and key not in found and stanza.get("Architecture") in (self.arch, "all"):
                found[key] = DebRef(key[0], key[1], stanza["Architecture"], stanza.get("SHA256", ""),
                                    stanza.get("Depends", ""))
        missing = [f"{n}={v}" for n, v in pinned if (n, v) not in found]
        if missing:
            raise GuestImageError(f"Debian package(s) {', '.join(missing)} not found for {self.arch} in apt's lists")
        return [found[key] for key in pinned]

    def fetch_debs(self, refs: list[DebRef], cache_dir: Path) -> dict[str, Path]:
        cache_dir.mkdir(parents=True, exist_ok=True)
        paths = {ref.name: cache_dir / ref.filename for ref in refs}
        stale = [ref for ref in refs if not _matches(paths[ref.name], ref.sha256)]
        if stale:
            require_tool("apt-get", "apt")
            for ref in stale:
                paths[ref.name].unlink(missing_ok=True)
            apt_error = ""
            try:
                # Sandbox user root: the cache dir is usually not writable by _apt.
                run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root",
                     *(f"{r.name}={r.version}" for r in stale)],
                    what="apt-get download", cwd=str(cache_dir))
            except GuestImageError as exc:
                apt_error = f": {exc}"
            failed = [r.name for r in stale if not _matches(paths[r.name], r.sha256)]
            if failed:
                raise GuestImageError(f"could not download Debian package(s) {', '.join(failed)}{apt_error}")
        return paths

    # -- PyPI wheels -------------------------------------------------------------------------

    def fetch_wheel(self, project: str, version: str, cache_dir: Path) -> Path:
        cache_dir.mkdir(parents=True, exist_ok=True)
        cached = find_cached_wheel(cache_dir, project, version)
        if cached is not None:
            return cached
        run([sys.executable, "-m", "pip", "download", f"{project}=={version}", "--no-deps",
             "--only-binary", ":all:", "--platform", self.wheel_platform,
             "--python-version", self.python_version, "--disable-pip-version-check", "-q",
             "-d", str(cache_dir)],
            what=f"pip download {project}=={version}")
        cached = find_cached_wheel(cache_dir, project, version)
        if cached is None:
            raise GuestImageError(f"pip download {project}=={version} produced no x86_64 binary wheel in {cache_dir}")
        return cached


def find_cached_wheel(cache_dir: Path, project: str, version: str) -> Path | None:
    """A binary x86_64 wheel for project==version already in `cache_dir`, if any."""
    stem = re.sub(r"[-_.]+", "_", project).lower()
    for path in sorted(cache_dir.glob(f"*-{version}-*.whl")):
        dist = path.name.split("-", 1)[0]
        if re.sub(r"[-_.]+", "_", dist).lower() == stem and "x86_64" in path.name:
            return path
    return None


# What apt's candidate choice depends on: its package lists, its configuration (sources,
# pinning) and the installed versions.
_APT_STATE_PATHS = ("/var/lib/apt/lists", "/etc/apt", "/var/lib/dpkg/status")


def _apt_state() -> list[list]:
    state = []
    for top in _APT_STATE_PATHS:
        paths = [Path(top)] if not Path(top).is_dir() else sorted(
            p for p in Path(top).rglob("*") if p.is_file() and p.name != "lock" and "partial" not in p.parts)
        for path in paths:
            try:
                st = path.stat()
            except OSError:
                continue
            state.append([str(path), st.st_size, st.st_mtime_ns])
    return state


def _matches(path: Path, sha256: str) -> bool:
    if not path.is_file():
        return False
    return not sha256 or sha256_file(path) == sha256


def _parse_policy(text: str) -> dict[str, str]:
    candidates: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = line[:-1]
        elif current and line.strip().startswith("Candidate:"):
            value = line.split(":", 1)[1].strip()
            candidates[current] = "" if value == "(none)" else value
    return candidates


def _parse_stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, None
        elif line[0].isspace() and key:
            current[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas

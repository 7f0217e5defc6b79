"""Is a template usable for the current configuration? Every reason it is not.

Compares the template's own metadata (what it was built from) with what a
clone would be built from now, and checks the saved files against what the
build recorded. Pure apart from reading/hashing files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .digests import DigestCache
from .metadata import TemplateMetadata, identity_sha256

# Saved files up to this size are hashed at build and re-checked on every
# validation (QEMU's device state is 60-360 KB); larger ones by size only.
HASHED_FILE_LIMIT = 16 << 20


@dataclass(frozen=True)
class CurrentFacts:
    """What a clone restored now would be built from."""

    kind: str
    accelerator: str
    identity: dict[str, Any]
    kernel: Path
    initrd: Path
    binary: Path | None  # resolved VMM binary, None if not found


def _short(digest: str | None) -> str:
    return (digest or "?")[:12]


def identity_differences(built: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """'field (template X, now Y)' for every field that differs."""
    out = []
    for name in sorted(set(built) | set(now)):
        old, new = built.get(name, "<unset>"), now.get(name, "<unset>")
        if old != new:
            out.append(f"{name} (template {old!r}, now {new!r})")
    return out


def _digest_problem(what: str, path: Path, recorded: str, digests: DigestCache) -> str | None:
    try:
        current = digests.sha256(path)
    except OSError as exc:
        return f"{what} {path} unreadable: {exc.strerror or exc}"
    if current != recorded:
        return (f"{what} changed since the template was built ({path} sha256 "
                f"{_short(current)}…, template built with {_short(recorded)}…)")
    return None


def config_problems(meta: TemplateMetadata, facts: CurrentFacts,
                    digests: DigestCache) -> list[str]:
    problems = []
    if meta.hypervisor.kind != facts.kind:
        problems.append(f"hypervisor kind mismatch (template built with "
                        f"{meta.hypervisor.kind}, config says {facts.kind})")
    if identity_sha256(meta.identity) != meta.identity_sha256:
        problems.append("corrupt metadata: identity hash does not match the recorded fields")
    elif identity_sha256(facts.identity) != meta.identity_sha256:
        diff = identity_differences(meta.identity, facts.identity)
        problems.append("config mismatch: " + ", ".join(diff or ["identity hash differs"]))
    if meta.accelerator != facts.accelerator:
        problems.append(f"accelerator mismatch (template {meta.accelerator}, "
                        f"now {facts.accelerator})")
    for what, path, recorded in (("guest kernel", facts.kernel, meta.kernel_sha256),
                                 ("guest initrd", facts.initrd, meta.initrd_sha256)):
        problem = _digest_problem(what, path, recorded, digests)
        if problem:
            problems.append(problem)
    problems.extend(_hypervisor_problems(meta, facts, digests))
    return problems


def _hypervisor_problems(meta: TemplateMetadata, facts: CurrentFacts,
                         digests: DigestCache) -> list[str]:
    recorded = meta.hypervisor
    if recorded.binary_sha256 is None:
        return []  # the build could not resolve the binary: nothing to compare
    built_with = f"{recorded.version or 'unknown version'} ({recorded.binary})"
    if facts.binary is None:
        return [f"hypervisor binary not found (template built with {built_with})"]
    try:
        current = digests.sha256(facts.binary)
    except OSError as exc:
        return [f"hypervisor binary {facts.binary} unreadable: {exc.strerror or exc}"]
    if current != recorded.binary_sha256:
        return [f"hypervisor version changed: template built with {built_with}, "
                f"{facts.binary} is a different binary now"]
    return []


def file_problems(directory: Path, meta: TemplateMetadata,
                  digests: DigestCache) -> list[str]:
    problems = []
    if not meta.files:
        problems.append("metadata lists no saved state files")
    for saved in meta.files:
        path = directory / saved.name
        try:
            size = os.stat(path).st_size
        except OSError:
            problems.append(f"state file {saved.name} missing")
            continue
        if size == 0 and saved.size != 0:  # CLH's memory-ranges may be empty by design
            problems.append(f"state file {saved.name} empty")
        elif size != saved.size:
            problems.append(f"state file {saved.name} is {size} bytes, "
                            f"template recorded {saved.size}")
        elif saved.sha256 is not None:
            problem = _digest_problem(f"state file {saved.name}", path, saved.sha256, digests)
            if problem:
                problems.append(f"state file {saved.name} corrupt (content differs from "
                                f"what the build saved)")
    memory = directory / meta.memory_file
    try:
        size = os.stat(memory).st_size
    except OSError:
        problems.append(f"memory file {meta.memory_file} missing")
    else:
        if size != meta.memory_bytes:
            problems.append(f"memory file {meta.memory_file} is {size} bytes, "
                            f"expected {meta.memory_bytes}")
    return problems

"""`graft check`: is this host ready to run graft pods? One line per item,
exit 1 if anything required is missing."""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from shim.config import GraftConfig


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    required: bool = True


def _version(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout or out.stderr).splitlines()[0] if out.returncode == 0 else None


def run_checks(config: GraftConfig) -> list[CheckResult]:
    from shim.hypervisor.accel import probe_accelerator
    from shim.vmconfig.hypervisor_config import GuestImageMissing, guest_image_paths

    results: list[CheckResult] = []
    from shim.factory.template import DEFAULT_BINARIES

    kind = str(config.get("hypervisor", "kind"))
    binary = config.get("hypervisor", "binary") or DEFAULT_BINARIES.get(kind, kind)
    path = shutil.which(binary)
    version = _version([path, "--version"]) if path else None
    results.append(CheckResult("hypervisor", bool(version),
                               f"{path}: {version}" if version else f"{binary} not found"))
    probe = probe_accelerator()
    forced = config.get("hypervisor", "accelerator")
    detail = probe.reason if forced == "auto" else f"forced to {forced} ({probe.reason})"
    results.append(CheckResult("accelerator", True, detail))
    try:
        kernel, initrd = guest_image_paths(config)
        results.append(CheckResult("guest image", True, f"{kernel}, {initrd}"))
    except GuestImageMissing as exc:
        results.append(CheckResult("guest image", False, str(exc)))
    results.append(CheckResult("root", os.geteuid() == 0,
                               "running as root" if os.geteuid() == 0 else
                               "graft needs root (mounts, namespaces, taps)"))
    ctr = _version(["containerd", "--version"])
    results.append(CheckResult("containerd", bool(ctr), ctr or "containerd not found",
                               required=False))
    shim_bin = shutil.which("containerd-shim-graft-v2")
    results.append(CheckResult("shim binary", bool(shim_bin),
                               shim_bin or "containerd-shim-graft-v2 not on PATH",
                               required=False))
    from shim.factory.template import TemplateUnusable, find_usable_template
    if config.enable_template:
        try:
            tpl = find_usable_template(config)
            results.append(CheckResult("template", True, f"usable: {tpl.directory}",
                                       required=False))
        except TemplateUnusable as why:
            results.append(CheckResult("template", False, f"pods will cold boot: {why}",
                                       required=False))
    return results


def run_check(config: GraftConfig) -> int:
    results = run_checks(config)
    for r in results:
        mark = "ok  " if r.ok else ("FAIL" if r.required else "warn")
        print(f"[{mark}] {r.name}: {r.detail}")
    return 0 if all(r.ok for r in results if r.required) else 1

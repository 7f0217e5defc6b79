"""The demo's closing table: per pod its start time, VM boot, host memory and boot path."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .web_pods import PORT, MemoryParts, WebPod


@dataclass
class PodRow:
    pod: WebPod
    memory: MemoryParts
    boot: dict[str, Any] | None = None  # its sandbox in `graft status --json`; None: runc

    @property
    def memory_mib(self) -> float:
        return sum(mib for _, mib in self.memory)

    @property
    def memory_detail(self) -> str:
        return " + ".join(f"{what} {mib:.1f}" for what, mib in self.memory) + " MiB"

    @property
    def boot_path(self) -> str:
        if self.boot is None:
            return "no VM (runc: host kernel)"
        return f"{self.boot.get('boot_path')}: {self.boot.get('reason', '?')}"

    @property
    def vm_boot(self) -> str:
        seconds = (self.boot or {}).get("boot_seconds")
        return f"{float(seconds):.2f} s" if seconds is not None else "-"


HEADERS = ("pod", "handler", "pod IP", "pod start", "VM boot", "memory (PSS)",
           "boot path: why (graft status --json)")


def table(rows: list[PodRow]) -> list[str]:
    cells = [HEADERS] + [(r.pod.name, r.pod.handler, r.pod.ip, f"{r.pod.start_s:.2f} s",
                          r.vm_boot, f"{r.memory_mib:.1f} MiB", r.boot_path) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADERS))]
    right = {3, 4, 5}  # numbers

    def fmt(row: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)]
    return lines + [fmt(row) for row in cells[1:]]


def notes(rows: list[PodRow], template_s: float | None) -> list[str]:
    lines = ["pod start: RunPodSandbox until the container logged that it serves (CRI, as "
             "kubelet drives it); VM boot: the shim's own measure",
             "memory: PSS of QEMU + the pod's shim (graft), of the runc shim + the pod's "
             "processes (runc)"]
    if template_s is not None:
        lines.append(f"template: `graft factory init` took {template_s:.1f} s (rebuilt on "
                     "every run: it lives on a tmpfs the cleanup removes)")
    lines.append(f"what each pod served (GET http://<pod IP>:{PORT}/ from the host):")
    lines += [f"  {r.pod.name}: {r.pod.page}" for r in rows]
    return lines

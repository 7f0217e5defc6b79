"""The `containerd-shim-graft-v2` executable containerd runs: a lean launcher.

pip's console-script wrapper (and `python -m`) pays for site-packages' .pth files and the
editable-install finder (~25 ms here) before graft's first line runs, for every container.
The launcher runs the interpreter isolated and without `site` (-IS) and puts exactly the
graft tree and the interpreter's site-packages on sys.path.

    python3 -m shim.cli.launcher PATH     # write the launcher for this checkout at PATH
"""
from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

GRAFT_ROOT = Path(__file__).resolve().parents[2]


def render_launcher(python: str | None = None, paths: list[str] | None = None,
                    env_defaults: dict[str, str] | None = None) -> str:
    """The launcher's text. paths: sys.path entries ahead of the stdlib (default: this
    checkout and the interpreter's site-packages); env_defaults: environment variables it
    sets unless containerd's environment has them (e.g. GRAFT_CONFIG)."""
    python = python or sys.executable
    if paths is None:
        site = sysconfig.get_paths()
        paths = list(dict.fromkeys([str(GRAFT_ROOT), site["purelib"], site["platlib"]]))
    lines = [f"#!{python} -IS",  # one shebang argument: the flags combined
             "# containerd-shim-graft-v2 (written by shim/cli/launcher.py; do not edit)",
             "import sys",
             f"sys.path[:0] = {paths!r}",
             "sys.dont_write_bytecode = True"]
    if env_defaults:
        lines += ["import os"] + [f"os.environ.setdefault({k!r}, {v!r})"
                                  for k, v in sorted(env_defaults.items())]
    lines += ["from shim.cli.shim_main import main", "sys.exit(main())"]
    return "\n".join(lines) + "\n"


def write_launcher(target: Path, python: str | None = None,
                   paths: list[str] | None = None) -> None:
    """Write atomically, mode 0755 (a running containerd may exec it at any moment)."""
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(render_launcher(python, paths))
    tmp.chmod(0o755)
    os.replace(tmp, target)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    write_launcher(Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

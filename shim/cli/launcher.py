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


def render_launcher(python: str | None = None, paths: list[str] | None = None) -> str:
    python = python or sys.executable
    if paths is None:
        site = sysconfig.get_paths()
        paths = list(dict.fromkeys([str(GRAFT_ROOT), site["purelib"], site["platlib"]]))
    return (f"#!{python} -IS\n"  # one shebang argument: the flags combined
            "# containerd-shim-graft-v2 (written by shim/cli/launcher.py; do not edit)\n"
            "import sys\n"
            f"sys.path[:0] = {paths!r}\n"
            "from shim.cli.shim_main import main\n"
            "sys.exit(main())\n")


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

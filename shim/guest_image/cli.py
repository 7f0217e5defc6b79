"""Entry point behind `graft guest build [--output DIR] [--force]`."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .builder import COMPRESSIONS, DEFAULT_COMPRESSION, build_guest_image, stderr_progress
from .config import ENV_CACHE_DIR, ENV_OUTPUT_DIR, default_cache_dir, default_output_dir
from .errors import GuestImageError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graft guest build",
        description="Build the guest kernel (PVH vmlinux) and initramfs from Debian packages and PyPI wheels.")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"output directory (default: ${ENV_OUTPUT_DIR} or {default_output_dir()})")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"download cache (default: ${ENV_CACHE_DIR} or {default_cache_dir()})")
    parser.add_argument("--force", action="store_true", help="rebuild even if every input digest is unchanged")
    parser.add_argument("--compression", choices=COMPRESSIONS, default=DEFAULT_COMPRESSION,
                        help=f"initramfs compression (default: {DEFAULT_COMPRESSION}, boots fastest under TCG)")
    return parser


GRAFT_FAILED = 125  # exit status of `graft` when graft itself failed


def run_build(config: object | None = None, *, output: Path | None = None, force: bool = False) -> int:
    """`graft guest build`: output defaults to the config's guest image dir ($GRAFT_GUEST_DIR wins)."""
    target = output or getattr(config, "guest_image_dir", None) or default_output_dir()
    try:
        image = build_guest_image(Path(target), force=force, progress=stderr_progress)
    except GuestImageError as exc:
        print(f"graft: error: guest build: {exc}", file=sys.stderr)
        return GRAFT_FAILED
    print(f"kernel: {image.kernel}\ninitrd: {image.initrd}\nmanifest: {image.manifest}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    output = args.output or default_output_dir()
    try:
        image = build_guest_image(output, force=args.force, progress=stderr_progress,
                                  cache_dir=args.cache_dir, compression=args.compression)
    except GuestImageError as exc:
        print(f"graft guest build: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("graft guest build: interrupted", file=sys.stderr)
        return 130
    print(f"kernel: {image.kernel}\ninitrd: {image.initrd}\nmanifest: {image.manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

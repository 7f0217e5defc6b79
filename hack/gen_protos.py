#!/usr/bin/env python3
"""Generate the Python protobuf bindings graft needs, into git-ignored folders.

* graft_agent/protos/agent.proto (ours)      -> graft_agent/api/gen/
* containerd's protos (Debian packages)      -> shim/api/gen/   (see shim/api/protogen.py)

Idempotent: regenerates only when an input changed.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shim.api.protogen import generate_all  # noqa: E402

if __name__ == "__main__":
    sys.exit(generate_all(ROOT))

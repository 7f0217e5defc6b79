#!/usr/bin/env python3
"""Generate the Python protobuf bindings graft needs, into git-ignored folders.

* graft_agent/protos/agent.proto (ours)      -> graft_agent/api/gen/
* containerd's protos (Debian packages)      -> shim/api/gen/   (see shim/api/containerd_protos.py)

The containerd 2.x API protos (Sandbox API) come from Debian API_SUITE's
golang-github-containerd-containerd-api-dev, fetched once into a private cache by
hack/containerd/compat.py (the version of the containerd 2.x the compatibility tests run).
Idempotent: regenerates only when an input changed.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "hack" / "containerd"))

import compat  # noqa: E402
from shim.api.protogen import generate_all  # noqa: E402

API_SUITE = "sid"

if __name__ == "__main__":
    try:
        api_gocode = compat.fetch_api(API_SUITE)
    except compat.FetchError as exc:
        sys.exit(f"gen_protos: containerd API protos from Debian {API_SUITE}: {exc}")
    sys.exit(generate_all(ROOT, api_gocode))

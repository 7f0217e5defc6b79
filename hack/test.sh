#!/bin/bash
# The whole test suite: install what is missing, then unit + integration tests
# (real QEMU under TCG, real crun/runc, real containerd) and the bats e2e suite.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/setup.sh
echo "==> pytest" >&2
export GRAFT_REQUIRE_VM=1  # missing QEMU/guest image fails the run instead of skipping
python3 -m pytest -ra -p no:cacheprovider "$@" tests
if compgen -G "e2e/*.bats" >/dev/null; then
    echo "==> bats e2e" >&2
    bats e2e
fi

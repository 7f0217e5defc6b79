#!/bin/bash
# The whole test suite: install what is missing, then unit + integration tests
# (real QEMU under TCG, real crun/runc, real containerd) and the bats e2e suite.
set -euo pipefail
cd "$(dirname "$0")/.."
# Pods started through the launcher spawn this tree's fork server, which outlives them (it
# idles out after 10 min): the run that started it stops it, whatever the outcome.
trap 'python3 -m shim.cli.graft_main fork-server stop >/dev/null 2>&1 || true' EXIT
hack/setup.sh
echo "==> pytest" >&2
export GRAFT_REQUIRE_VM=1  # missing QEMU/guest image fails the run instead of skipping
python3 -m pytest -ra -p no:cacheprovider "$@" tests
if compgen -G "e2e/*.bats" >/dev/null; then
    echo "==> bats e2e" >&2
    bats e2e
fi

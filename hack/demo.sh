#!/bin/bash
# The main job, end to end: install what is missing (hack/setup.sh: cached, a second run
# reuses it), then run graft through containerd's CRI as kubelet would — a runc pod, a
# cold graft pod, `graft factory init`, a graft pod restored from the template, each
# serving HTTP that is fetched from its pod IP — print pod start, memory and boot path per
# pod, and stop everything (hack/demo/main.py). The quick single-VM path is
# `graft debug run ROOTFS -- CMD`.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/setup.sh
echo "==> set-up done (${SECONDS}s)" >&2
exec "${PYTHON:-python3}" -m hack.demo "$@"

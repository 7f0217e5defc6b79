#!/bin/bash
# Install everything graft needs on a Debian 12 machine, idempotently:
# apt packages, Python deps (editable install), generated protos, guest image.
# Run as root. Re-running is cheap: each step skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    qemu-system-x86 qemu-utils linux-image-amd64 busybox-static crun runc
    containerd containernetworking-plugins bats iproute2 xz-utils cpio
    golang-github-containerd-containerd-dev golang-github-containerd-cgroups-dev
    golang-github-gogo-googleapis-dev python3-venv python3-seccomp
)

step() { echo "==> $*" >&2; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    step "apt: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# `graft guest build` downloads .debs with apt-get: make sure lists exist.
if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    apt-get update -qq
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import shim, graft_agent, grpc_tools, qemu.qmp, setproctitle, pytest, \
                    pytest_asyncio, tomlkit, yaml, kubernetes.client" 2>/dev/null \
   || ! command -v graft >/dev/null; then
    step "pip: installing graft (editable) with dev extras"
    "$PYTHON" -m pip install -q --disable-pip-version-check -e '.[dev]'
fi
if ! "$PYTHON" -c "import cri_api" 2>/dev/null; then
    # Its metadata pins ancient grpc/protobuf; the generated code works with current ones.
    "$PYTHON" -m pip install -q --disable-pip-version-check --no-deps container-runtime-interface-api==2.0.1
fi

step "protos: containerd 2.x API sources (cached), generating bindings"
"$PYTHON" hack/containerd/compat.py fetch-api sid >/dev/null
"$PYTHON" hack/gen_protos.py

# The binary containerd runs for every container: the lean launcher of this checkout.
"$PYTHON" -m shim.cli.launcher /usr/local/bin/containerd-shim-graft-v2

step "containerd 1.7 / 2.x for compatibility tests (cached)"
for suite in trixie sid; do
    "$PYTHON" hack/containerd/compat.py fetch "$suite" >/dev/null ||
        echo "warning: could not fetch containerd from Debian $suite: its compat tests will skip" >&2
done

step "QEMU 10 from bookworm-backports, for the read-only template memory test (cached)"
"$PYTHON" hack/qemu_backports.py fetch >/dev/null ||
    echo "warning: could not fetch QEMU from bookworm-backports: its test will skip" >&2

step "guest image: building (cached by input digests)"
graft guest build

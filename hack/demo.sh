#!/bin/bash
# The main job, end to end: install what is missing, then boot a VM and run a
# container in it (busybox rootfs) — `graft debug run`. Extra arguments replace
# the default command: hack/demo.sh sh -c 'uname -a; cat /proc/cpuinfo | head'
set -euo pipefail
cd "$(dirname "$0")/.."
hack/setup.sh
rootfs=/var/lib/graft/demo-rootfs
[ -x "$rootfs/bin/busybox" ] || hack/busybox-rootfs.sh "$rootfs"
if (($#)); then cmd=("$@"); else cmd=(sh -c 'echo "hello from a container in a graft VM: $(uname -r)"'); fi
exec graft debug run "$rootfs" -- "${cmd[@]}"

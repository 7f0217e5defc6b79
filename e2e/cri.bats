#!/usr/bin/env bats
# The CRI flow kubelet drives, against a private containerd with the graft runtime handler:
# RunPodSandbox → CreateContainer/StartContainer (two containers, one VM) → container logs →
# ExecSync → pod IP inside the VM → ContainerStats → StopPodSandbox → RemovePodSandbox.
# Needs root, QEMU and a guest image (GRAFT_GUEST_DIR, default /var/lib/graft/guest).
# Run: bats e2e/cri.bats   (CRI client: e2e/cri_client.py, PyPI container-runtime-interface-api)

REPO="$(cd "$BATS_TEST_DIRNAME/.." && pwd)"

cri() { python3 "$REPO/e2e/cri_client.py" "$@"; }

# The running state the tests hand on to each other (bats runs them in file order).
saved() { cat "$CTRD_DIR/saved-$1"; }
save() { echo "$2" > "$CTRD_DIR/saved-$1"; }

vmm_count() { pgrep -fc "qemu-system.* -name graft-$1( |\$)" || true; }
shim_count() { pgrep -fc "containerd-shim-graft-v2 .*-address $CONTAINERD_ADDRESS( |\$)" || true; }
shim_socket() {
    PYTHONPATH="$REPO" python3 -c 'import sys
from shim.shim_manager.socket_address import socket_path
print(socket_path(sys.argv[1], "k8s.io", sys.argv[2]))' "$CONTAINERD_ADDRESS" "$1"
}

setup_file() {
    export CTRD_DIR="$(mktemp -d /tmp/gctrd-bats-XXXXXX)"
    eval "$("$BATS_TEST_DIRNAME/../hack/containerd/run.sh" start "$CTRD_DIR")"
    export CONTAINERD_ADDRESS GRAFT_POD_SUBNET GRAFT_POD_GATEWAY
    export CRI_CLIENT_STATE="$CTRD_DIR/cri-client"
}

teardown_file() {
    for pod in $(cat "$CTRD_DIR"/saved-pod 2>/dev/null); do
        cri stop-remove "$pod" || true
    done
    "$BATS_TEST_DIRNAME/../hack/containerd/run.sh" purge "$CTRD_DIR"
}

@test "runc handler runs the same pod flow (control)" {
    pod="$(cri run-pod bats-runc --handler runc)"
    cid="$(cri create-start "$pod" app -- sh -c 'echo hi; exec sleep 1000')"
    run cri exec-sync "$cid" -- echo from-runc
    cri stop-remove "$pod"
    [ "$status" -eq 0 ]
    [ "$output" = "from-runc" ]
}

@test "graft: RunPodSandbox boots one VM with the CNI address" {
    pod="$(cri run-pod bats-graft)"
    save pod "$pod"
    [ "$(cri pod-state "$pod")" = SANDBOX_READY ]
    ip="$(cri pod-ip "$pod")"
    python3 -c 'import ipaddress, sys
assert ipaddress.ip_address(sys.argv[1]) in ipaddress.ip_network(sys.argv[2]), sys.argv' \
        "$ip" "$GRAFT_POD_SUBNET"
    [ "$(vmm_count "$pod")" -eq 1 ]
    [ -S "$(shim_socket "$pod")" ]
}

@test "graft: two containers start in the pod's VM" {
    pod="$(saved pod)"
    save app "$(cri create-start "$pod" app -- sh -c 'echo hello from app; exec sleep 1000')"
    save side "$(cri create-start "$pod" side -- sh -c 'echo hello from side >&2; exec sleep 1000')"
    [ "$(cri state "$(saved app)")" = CONTAINER_RUNNING ]
    [ "$(cri state "$(saved side)")" = CONTAINER_RUNNING ]
    [ "$(vmm_count "$pod")" -eq 1 ]   # both run in the pod VM
    [ "$(shim_count)" -eq 1 ]         # served by the pod's one shim
}

@test "graft: container output reaches the CRI log files" {
    run cri logs "$(saved app)" --wait-for "hello from app"
    [[ "$output" == *" stdout F hello from app"* ]]
    run cri logs "$(saved side)" --wait-for "hello from side"
    [[ "$output" == *" stderr F hello from side"* ]]
}

@test "graft: ExecSync returns output and exit status" {
    run cri exec-sync "$(saved app)" -- sh -c 'echo out; exit 3'
    [ "$status" -eq 3 ]
    [ "$output" = "out" ]
    # Both containers see the same kernel: the VM's, not the host's.
    app_boot="$(cri exec-sync "$(saved app)" -- cat /proc/sys/kernel/random/boot_id)"
    side_boot="$(cri exec-sync "$(saved side)" -- cat /proc/sys/kernel/random/boot_id)"
    [ "$app_boot" = "$side_boot" ]
    [ "$app_boot" != "$(cat /proc/sys/kernel/random/boot_id)" ]
}

@test "graft: the pod VM owns the pod IP and reaches the bridge" {
    ip="$(cri pod-ip "$(saved pod)")"
    run cri exec-sync "$(saved side)" -- ip -4 addr show eth0
    [ "$status" -eq 0 ]
    [[ "$output" == *"inet $ip/24 "* ]]
    run cri exec-sync "$(saved app)" -- ping -c 1 -W 5 "$GRAFT_POD_GATEWAY"
    [ "$status" -eq 0 ]
}

@test "graft: ContainerStats reports CPU and memory" {
    run cri stats "$(saved app)"
    [ "$status" -eq 0 ]
    python3 -c 'import json, sys
s = json.loads(sys.argv[1])
assert s["cpu_usage_core_nano_seconds"] > 0 and s["memory_working_set_bytes"] > 0, s' "$output"
}

@test "graft: StopPodSandbox + RemovePodSandbox leave no VM, shim or socket" {
    pod="$(saved pod)"
    socket="$(shim_socket "$pod")"
    cri stop-remove "$pod"
    rm "$CTRD_DIR/saved-pod"
    for _ in $(seq 75); do
        [ "$(vmm_count "$pod")" -eq 0 ] && [ "$(shim_count)" -eq 0 ] && [ ! -e "$socket" ] && break
        sleep 0.2
    done
    [ "$(vmm_count "$pod")" -eq 0 ]
    [ "$(shim_count)" -eq 0 ]
    [ ! -e "$socket" ]
    ! grep -q "$pod" /proc/mounts
}

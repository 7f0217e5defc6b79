#!/usr/bin/env bats
# ctr against a private containerd with the graft runtime (needs root, QEMU, a guest image).
# Run: bats e2e/ctr.bats   (GRAFT_GUEST_DIR selects the guest image, default /var/lib/graft/guest)

RUNTIME=io.containerd.graft.v2
IMAGE=graft.local/busybox:latest

setup_file() {
    export CTRD_DIR="$(mktemp -d /tmp/gctrd-bats-XXXXXX)"
    eval "$("$BATS_TEST_DIRNAME/../hack/containerd/run.sh" start "$CTRD_DIR")"
    export CONTAINERD_ADDRESS
}

REPO="$(cd "$BATS_TEST_DIRNAME/.." && pwd)"

# Shim daemons of this containerd, and VMMs of one container id.
shim_count() { pgrep -fc "containerd-shim-graft-v2 .*-address $CONTAINERD_ADDRESS( |\$)" || true; }
vmm_count() { pgrep -fc "qemu-system.* -name graft-$1( |\$)" || true; }
shim_socket() {
    PYTHONPATH="$REPO" python3 -c 'import sys
from shim.shim_manager.socket_address import socket_path
print(socket_path(sys.argv[1], "default", sys.argv[2]))' "$CONTAINERD_ADDRESS" "$1"
}
# Nothing of container $1 is left: no shim of this containerd, VMM, socket or mount.
assert_no_leftovers() {
    for _ in $(seq 75); do
        [ "$(shim_count)" -eq 0 ] && [ "$(vmm_count "$1")" -eq 0 ] && break
        sleep 0.2
    done
    [ "$(shim_count)" -eq 0 ]
    [ "$(vmm_count "$1")" -eq 0 ]
    [ ! -e "$(shim_socket "$1")" ]
    ! grep -q "/$1/" /proc/mounts
}

teardown_file() {
    "$BATS_TEST_DIRNAME/../hack/containerd/run.sh" purge "$CTRD_DIR"
}

@test "runc handler runs a container (control)" {
    run ctr run --rm "$IMAGE" bats-runc echo hello
    [ "$status" -eq 0 ]
    [ "$output" = "hello" ]
}

@test "graft: echo hello in a VM" {
    run ctr run --rm --runtime "$RUNTIME" "$IMAGE" bats-hello echo hello
    [ "$status" -eq 0 ]
    [ "$output" = "hello" ]
    assert_no_leftovers bats-hello
}

@test "graft: exit status is passed through" {
    run ctr run --rm --runtime "$RUNTIME" "$IMAGE" bats-exit sh -c 'exit 7'
    [ "$status" -eq 7 ]
    assert_no_leftovers bats-exit
}

@test "graft: stdin reaches the container, all of it (CloseIO drains)" {
    run sh -c "seq 1 300000 | ctr run --rm --runtime $RUNTIME $IMAGE bats-stdin wc -l"
    [ "$status" -eq 0 ]
    [ "$(echo "$output" | tr -d ' ')" = "300000" ]
    assert_no_leftovers bats-stdin
}

@test "graft: ctr run -t gives the container a terminal" {
    # script(1) provides the pty ctr -t needs.
    run script -qec "ctr --address $CONTAINERD_ADDRESS run --rm -t --runtime $RUNTIME $IMAGE bats-tty sh -c 'tty; exit 3'" /dev/null
    [ "$status" -eq 3 ]
    [[ "$output" == *"/dev/pts/"* ]]
    assert_no_leftovers bats-tty
}

@test "graft: exec into a running container, then kill it" {
    ctr run -d --runtime "$RUNTIME" "$IMAGE" bats-long sleep 1000
    run ctr task exec --exec-id e1 bats-long echo from-exec
    [ "$status" -eq 0 ]
    [ "$output" = "from-exec" ]
    ctr task kill -s SIGKILL bats-long
    for _ in $(seq 50); do
        ctr task ls | grep -q 'bats-long.*STOPPED' && break
        sleep 0.2
    done
    ctr task ls | grep -q 'bats-long.*STOPPED'
    run ctr task kill -s SIGKILL bats-long
    [ "$status" -ne 0 ]  # NotFound: it has exited
    ctr task rm bats-long
    ctr container rm bats-long
    assert_no_leftovers bats-long
}

@test "graft: pause and resume the pod VM's container" {
    ctr run -d --runtime "$RUNTIME" "$IMAGE" bats-pause sleep 1000
    ctr task pause bats-pause
    ctr task ls | grep -q 'bats-pause.*PAUSED'
    ctr task resume bats-pause
    ctr task ls | grep -q 'bats-pause.*RUNNING'
    run ctr task exec --exec-id e1 bats-pause sh -c 'exit 5'
    [ "$status" -eq 5 ]
    ctr task kill -s SIGKILL bats-pause
    ctr task rm -f bats-pause
    ctr container rm bats-pause
    assert_no_leftovers bats-pause
}

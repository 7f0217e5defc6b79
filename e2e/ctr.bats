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
}

@test "graft: exit status is passed through" {
    run ctr run --rm --runtime "$RUNTIME" "$IMAGE" bats-exit sh -c 'exit 7'
    [ "$status" -eq 7 ]
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
    ctr task rm bats-long
    ctr container rm bats-long
}

#!/usr/bin/env bats
# VM templating through containerd's CRI (the analogue of Kata's k8s VM-templating test):
# `graft factory init` on the node → CRI pods are restored from the template and run their
# workload → `graft factory destroy` → the next pod cold-boots and works too.
# Needs root, QEMU and a guest image (GRAFT_GUEST_DIR, default /var/lib/graft/guest).
# Run: bats e2e/templates.bats

REPO="$(cd "$BATS_TEST_DIRNAME/.." && pwd)"

graft() {
    PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" python3 -m shim.cli.graft_main "$@"
}
cri() { python3 "$REPO/e2e/cri_client.py" "$@"; }
tcri() { python3 "$REPO/e2e/template_cri.py" "$@"; }

# One field of one sandbox from `graft status --json`.
sandbox_field() {
    graft status --json | python3 -c '
import json, sys
pod, field = sys.argv[1], sys.argv[2]
for s in json.load(sys.stdin)["sandboxes"]:
    if s["id"] == pod:
        print(s.get(field))
        break
else:
    sys.exit(f"sandbox {pod} not in graft status")' "$1" "$2"
}

# Unmount everything below $1, deepest first.
unmount_under() {
    [[ "$1" == /run/gtpl-* ]] || return 0
    awk -v p="$1" '$5 == p || index($5, p "/") == 1 {print $5}' /proc/self/mountinfo |
        sort -r | while read -r point; do umount -l "$point" || true; done
}

setup_file() {
    export CTRD_DIR="$(mktemp -d /tmp/gtpl-ctrd-XXXXXX)"
    eval "$("$REPO/hack/containerd/run.sh" start "$CTRD_DIR")"
    export CONTAINERD_ADDRESS GRAFT_RUNTIME_CONFIG
    export CRI_CLIENT_STATE="$CTRD_DIR/cri-client"
    # Short: per-sandbox unix socket paths under it (64-char pod ids) must fit 107 bytes.
    export GRAFT_STATE="$(mktemp -d /run/gtpl-XXXXXX)"
    export TEMPLATE_PATH="$GRAFT_STATE/template"
    # The shim reads this file through the runtime handler's ConfigPath option
    # (hack/containerd: [...runtimes.graft.options] ConfigPath = $GRAFT_RUNTIME_CONFIG);
    # graft's CLI reads the same file through $GRAFT_CONFIG.
    cat >"$GRAFT_RUNTIME_CONFIG" <<EOF
[runtime]
log_level = "debug"
state_dir = "$GRAFT_STATE"

[guest]
image_dir = "${GRAFT_GUEST_DIR:-/var/lib/graft/guest}"

[factory]
enable_template = true
template_path = "$TEMPLATE_PATH"
EOF
    export GRAFT_CONFIG="$GRAFT_RUNTIME_CONFIG"
}

teardown_file() {
    tcri remove-all-pods || true
    # Only ever our own template (setup may have failed before writing the config).
    if [[ -n "${GRAFT_STATE:-}" ]] &&
        grep -qs "template_path = \"$GRAFT_STATE/template\"" "${GRAFT_CONFIG:-/nonexistent}"; then
        graft factory destroy || true
    fi
    if [[ -n "${GRAFT_STATE:-}" ]]; then
        unmount_under "$GRAFT_STATE"
        rm -rf "$GRAFT_STATE"
    fi
    if [[ -n "${CTRD_DIR:-}" ]]; then
        "$REPO/hack/containerd/run.sh" purge "$CTRD_DIR"
    fi
}

@test "factory init builds a template on a tmpfs" {
    run graft factory init
    [ "$status" -eq 0 ]
    [[ "$output" == *"template built in"* ]]
    [ "$(findmnt -n -o FSTYPE --mountpoint "$TEMPLATE_PATH")" = tmpfs ]
    run graft factory status
    [ "$status" -eq 0 ]
    [[ "$output" == *"template: usable ($TEMPLATE_PATH/tpl-"* ]]
}

@test "a CRI pod is restored from the template, gets the vCPUs it asks for, runs its workload" {
    # The template has 1 vCPU; the pod asks for 2 (sandbox resources → CRI annotations).
    pod="$(tcri run-sized-pod tpl-restored --cpus 2)"
    # One line, so it is complete once seen. nproc: the hot-added vCPU is online.
    cid="$(cri create-start "$pod" app -- sh -c 'echo "hello-from-clone cpus=$(nproc)"; exec sleep 1000')"
    run cri logs "$cid" --wait-for hello-from-clone --timeout 120
    [ "$status" -eq 0 ]
    [[ "$output" == *" stdout F hello-from-clone cpus=2"* ]]

    # How it booted, as a user can see it: graft status (text and JSON) and the metrics file.
    [ "$(sandbox_field "$pod" boot_path)" = restored ]
    [[ "$(sandbox_field "$pod" reason)" == "template $TEMPLATE_PATH/tpl-"* ]]
    [ "$(sandbox_field "$pod" vcpus)" = 2 ]
    run graft status
    [[ "$output" == *"$pod: restored (template $TEMPLATE_PATH/tpl-"* ]]
    run_dir="$(sandbox_field "$pod" directory)"
    run cat "$run_dir/metrics.prom"
    [[ "$output" == *"graft_sandbox_boot_info{sandbox=\"$pod\",path=\"restored\""* ]]
    [[ "$output" == *"graft_sandbox_vcpus{sandbox=\"$pod\"} 2"* ]]
    run graft metrics
    [[ "$output" == *"graft_sandbox_boot_info{sandbox=\"$pod\",path=\"restored\""* ]]
    [[ "$output" == *"graft_template_usable 1"* ]]

    cri stop-remove "$pod"
    [ ! -e "$run_dir" ]
}

@test "factory destroy removes the template and its tmpfs" {
    run graft factory destroy
    [ "$status" -eq 0 ]
    [ -z "$(findmnt -n --mountpoint "$TEMPLATE_PATH")" ]
    run graft factory status
    [ "$status" -eq 1 ]
    [[ "$output" == *"no template at $TEMPLATE_PATH"* ]]
}

@test "without a template the next pod cold-boots, is sized the same way and works" {
    pod="$(tcri run-sized-pod tpl-cold --cpus 2)"
    cid="$(cri create-start "$pod" app -- sh -c 'echo "hello-from-cold-boot cpus=$(nproc)"; exec sleep 1000')"
    run cri logs "$cid" --wait-for hello-from-cold-boot --timeout 120
    [ "$status" -eq 0 ]
    [[ "$output" == *" stdout F hello-from-cold-boot cpus=2"* ]]
    [ "$(sandbox_field "$pod" boot_path)" = cold ]
    [[ "$(sandbox_field "$pod" reason)" == "no template at $TEMPLATE_PATH"* ]]
    [ "$(sandbox_field "$pod" vcpus)" = 2 ]
    run_dir="$(sandbox_field "$pod" directory)"
    run cat "$run_dir/metrics.prom"
    [[ "$output" == *"graft_sandbox_boot_info{sandbox=\"$pod\",path=\"cold\""* ]]
    cri stop-remove "$pod"
    [ ! -e "$run_dir" ]
}

#!/usr/bin/env bash
# Operator benchmark: webhook admission latency and operator memory with 100 stores, on a
# real Kubernetes 1.20.2 control plane (release build). Prints a Markdown table, writes it
# to ${BENCH_OUT:-target/operator-bench.md}, and fails when webhook p99 > 10 ms or the
# operator's peak RSS > 50 MiB.
#
#   tests/operator-bench.sh               cluster up, benchmark, cluster down
#   KEEP_CLUSTER=1 tests/operator-bench.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export ODOO_HA_K8S_STATE=${ODOO_HA_K8S_STATE:-/tmp/odoo-ha-k8s-operator}
CLUSTER=$ROOT/tests/k8s/cluster.sh
export BENCH_OUT=${BENCH_OUT:-$ROOT/target/operator-bench.md}
mkdir -p "$(dirname "$BENCH_OUT")"

log() { printf '[operator-bench] %s\n' "$*" >&2; }

cd "$ROOT"
cargo test --release -p odoo-session-operator --test bench --no-run
"$ROOT/tests/k8s/build-kubernetes.sh"
cleanup() {
    local rc=$?
    if [[ ${KEEP_CLUSTER:-0} == 1 ]]; then
        log "cluster left running: export KUBECONFIG=$ODOO_HA_K8S_STATE/kubeconfig"
    else
        "$CLUSTER" down || true
    fi
    exit "$rc"
}
trap cleanup EXIT
"$CLUSTER" up api
export ODOO_HA_KUBECONFIG=$ODOO_HA_K8S_STATE/kubeconfig
log "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
cargo test --release -p odoo-session-operator --test bench -- --ignored --nocapture
log "report: $BENCH_OUT"

#!/usr/bin/env bash
# Operator integration tests against a real Kubernetes 1.20.2 control plane (etcd,
# kube-apiserver, controller-manager, scheduler; no node). The operator runs on the host and
# the API server calls its webhook on 127.0.0.1.
#
#   tests/operator-integration.sh            build/cached binaries, cluster up, tests, cluster down
#   KEEP_CLUSTER=1 tests/operator-integration.sh   leave the cluster running afterwards
#
# Extra arguments go to the test binary (e.g. a test name filter).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export ODOO_HA_K8S_STATE=${ODOO_HA_K8S_STATE:-/tmp/odoo-ha-k8s-operator}
CLUSTER=$ROOT/tests/k8s/cluster.sh

log() { printf '[operator-integration] %s\n' "$*" >&2; }

cd "$ROOT"
# The committed CRD must be what the Rust types generate.
cargo run -q -p odoo-session-operator --bin crdgen -- --check

"$ROOT/tests/k8s/build-kubernetes.sh"

# The harness's ports are fixed: on a shared machine another suite's cluster may hold them.
# Wait for it instead of failing half-started.
api_port_busy() { ss -Hltn 'sport = :16443' 2>/dev/null | grep -q .; }
waited=0
while api_port_busy; do
    ((waited % 60 == 0)) && log "another test cluster holds port 16443; waiting (${waited}s)"
    ((waited >= ${CLUSTER_WAIT_SECONDS:-1800})) && { log "gave up waiting for port 16443"; exit 1; }
    sleep 5
    waited=$((waited + 5))
done

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
log "running the integration tests (operator log: ${TMPDIR:-/tmp}/odoo-session-operator-it.log)"
cargo test -p odoo-session-operator --test integration -- --ignored --test-threads=1 "$@"

#!/usr/bin/env bash
# Operator integration tests against a real Kubernetes 1.20.2 control plane (etcd,
# kube-apiserver, controller-manager, scheduler; no node). The operator runs on the host and
# the API server calls its webhook on 127.0.0.1.
#
#   tests/operator-integration.sh            build/cached binaries, cluster up, tests, cluster down
#   KEEP_CLUSTER=1 tests/operator-integration.sh   leave the cluster running afterwards
#
# Extra arguments go to the test binary (e.g. a test name filter).
#
# Beside another suite's cluster on the same machine: its own state dir and control-plane
# ports (ODOO_HA_K8S_STATE, ODOO_HA_K8S_{API,ETCD,ETCD_PEER,KCM,SCHED}_PORT, see
# tests/k8s/README.md) and ODOO_HA_IT_PORT_OFFSET, added to the host ports of the operators
# the tests start (webhook 18443-18448, metrics 18080-18088).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export ODOO_HA_K8S_STATE=${ODOO_HA_K8S_STATE:-/tmp/odoo-ha-k8s-operator}
CLUSTER=$ROOT/tests/k8s/cluster.sh

log() { printf '[operator-integration] %s\n' "$*" >&2; }

cd "$ROOT"
# The committed CRD must be what the Rust types generate.
cargo run -q -p odoo-session-operator --bin crdgen -- --check

"$ROOT/tests/k8s/build-kubernetes.sh"

# The chart's webhook configuration, rendered by Helm's engine for the ownership test (the
# same venv as tests/chart/run.sh).
VENV=${HELM_VENV:-/var/cache/odoo-ha-session/venv-helm}
if ! "$VENV/bin/python" -c 'import helm_python, yaml' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q helm-python-sdk==0.2.2 pyyaml
fi
export ODOO_HA_CHART_WEBHOOK=${TMPDIR:-/tmp}/odoo-ha-chart-webhook.$$.json
"$VENV/bin/python" "$ROOT/tests/chart/render_webhook.py" "$ODOO_HA_CHART_WEBHOOK"
# And its RBAC of a namespaced install, which the operator then runs under.
export ODOO_HA_CHART_RBAC=${TMPDIR:-/tmp}/odoo-ha-chart-rbac.$$.json
"$VENV/bin/python" "$ROOT/tests/chart/render_rbac.py" "$ODOO_HA_CHART_RBAC"

# The harness's ports are fixed: on a shared machine another suite's cluster may hold them.
# Wait for it instead of failing half-started.
API_PORT=${ODOO_HA_K8S_API_PORT:-16443}
api_port_busy() { ss -Hltn "sport = :$API_PORT" 2>/dev/null | grep -q .; }
waited=0
while api_port_busy; do
    ((waited % 60 == 0)) && log "another test cluster holds port $API_PORT; waiting (${waited}s)"
    ((waited >= ${CLUSTER_WAIT_SECONDS:-1800})) && { log "gave up waiting for port $API_PORT"; exit 1; }
    sleep 5
    waited=$((waited + 5))
done

cleanup() {
    local rc=$?
    rm -f "$ODOO_HA_CHART_WEBHOOK" "$ODOO_HA_CHART_RBAC"
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

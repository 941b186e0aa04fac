#!/usr/bin/env bash
# End-to-end test on kind, for machines with Docker (users' machines, GitHub Actions:
# .github/workflows/e2e-kind.yml). The same six steps as tests/e2e/run-local.sh, and the
# same scenarios (tests/e2e/scenarios.sh):
#
#   1. cluster   kind create cluster
#   2. build     docker build of operator/Dockerfile, sidecar/Dockerfile and the stand-in
#                (tests/e2e/standin/Dockerfile)
#   3. load      kind load docker-image
#   4. install   helm install (values tests/e2e/values-kind.yaml)
#   5. run       tests/e2e/scenarios.sh redis db (in parallel; the load generator runs in
#                the client Pod, E2E_LOAD_FROM=pod: the runner cannot reach kind's
#                ClusterIPs; records in $E2E_RESULTS, default $RUNNER_TEMP or /tmp)
#   6. teardown  helm uninstall (checked: nothing of the release left), kind delete cluster
#
# Needs docker, kind, helm, kubectl and jq. It cannot run on the project's own CI
# machine (no Docker engine there); see docs/install.md.
#
#   tests/e2e/run-kind.sh                     everything, cluster deleted at the end
#   E2E_KEEP=1 tests/e2e/run-kind.sh          keep the cluster
#   KIND_NODE_IMAGE=kindest/node:v1.31.0 ...  another Kubernetes version
#   E2E_HA=0 tests/e2e/run-kind.sh            a single Redis Pod instead of 3 with Sentinel
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
CLUSTER_NAME=${KIND_CLUSTER_NAME:-odoo-ha-e2e}
RELEASE=odoo-ha-session
OPNS=odoo-ha-system
TAG=e2e
STANDIN_IMAGE=odoo-standin:$TAG

T0=$SECONDS
declare -a timings=()
log() { printf '[e2e-kind %4ss] %s\n' "$((SECONDS - T0))" "$*" >&2; }
phase_start=0
phase() {
    local now=$SECONDS
    [[ -n ${PHASE:-} ]] && timings+=("$(printf '%-10s %4ss' "$PHASE" "$((now - phase_start))")")
    PHASE=$1
    phase_start=$now
    log "=== $1"
}

for tool in docker kind helm kubectl jq; do
    command -v "$tool" >/dev/null || {
        echo "$tool is required" >&2
        exit 1
    }
done

installed=0
created=0
diagnose() {
    set +e
    log "---- cluster state after the failure"
    kubectl get pods -A -o wide
    for pod in $(kubectl get pods -n "$OPNS" -o name 2>/dev/null); do
        log "---- logs $OPNS/$pod"
        kubectl logs -n "$OPNS" "$pod" --all-containers --tail=200
    done
}
finish() {
    local rc=$?
    set +e
    trap - EXIT ERR
    if ((rc != 0)) && [[ ${PHASE:-} != run ]]; then
        diagnose >&2
    fi
    if [[ ${E2E_KEEP:-0} == 1 ]]; then
        log "left running (E2E_KEEP=1): kind get kubeconfig --name $CLUSTER_NAME"
    else
        phase teardown
        if ((installed)); then
            helm uninstall "$RELEASE" --namespace "$OPNS" --wait --timeout 300s || {
                log "helm uninstall failed"
                rc=1
            }
            left=$(kubectl get clusterroles,clusterrolebindings,mutatingwebhookconfigurations \
                -l "app.kubernetes.io/instance=$RELEASE" -o name 2>/dev/null)
            [[ -z $left ]] || {
                log "left after helm uninstall: $left"
                rc=1
            }
        fi
        ((created)) && { kind delete cluster --name "$CLUSTER_NAME" || rc=1; }
        phase end
        log "durations:"
        printf '    %s\n' "${timings[@]}" >&2
    fi
    log "total $((SECONDS - T0))s, exit $rc"
    exit "$rc"
}
trap finish EXIT

phase build
docker build -f operator/Dockerfile -t "odoo-session-operator:$TAG" .
docker build -f sidecar/Dockerfile -t "odoo-session-sidecar:$TAG" .
docker build -f tests/e2e/standin/Dockerfile -t "$STANDIN_IMAGE" .

phase cluster
created=1
kind create cluster --name "$CLUSTER_NAME" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 120s
kubectl config use-context "kind-$CLUSTER_NAME"
for image in "odoo-session-operator:$TAG" "odoo-session-sidecar:$TAG" "$STANDIN_IMAGE"; do
    kind load docker-image --name "$CLUSTER_NAME" "$image"
done

phase install
installed=1
helm install "$RELEASE" charts/odoo-ha-session --namespace "$OPNS" --create-namespace \
    -f tests/e2e/values-kind.yaml --wait --timeout 300s

phase run
export E2E_LOAD_FROM=${E2E_LOAD_FROM:-pod}
export E2E_RESULTS=${E2E_RESULTS:-${RUNNER_TEMP:-/tmp}/odoo-ha-e2e-results/$(date -u +%Y%m%dT%H%M%SZ)}
log "load records and measurements: $E2E_RESULTS"
E2E_STANDIN_IMAGE=$STANDIN_IMAGE E2E_OPERATOR_NS=$OPNS E2E_RELEASE=$RELEASE \
    E2E_HELM=helm E2E_VALUES=tests/e2e/values-kind.yaml tests/e2e/scenarios.sh "$@"

#!/usr/bin/env bash
# End-to-end test on a real single-node Kubernetes 1.20.2 on this machine (no Docker):
#
#   1. cluster   tests/k8s/cluster.sh up node (own state dir; waits while another suite's
#                cluster holds the harness's fixed ports)
#   2. build     release binaries (cargo), images with tests/k8s/image.sh (buildah, no
#                engine): operator, sidecar, the Odoo stand-in (cached by content)
#   3. load      the images are imported into the node's containerd
#   4. install   the chart, with Helm's engine (helm-python-sdk), values tests/e2e/values-local.yaml
#   5. run       tests/e2e/scenarios.sh redis db (in parallel; the load generator runs on
#                this machine, records in $ODOO_HA_K8S_STATE.results/<time>/; the db
#                scenario upgrades the chart under load with helm.py upgrade)
#   6. teardown  helm uninstall (checked: nothing of the release left), cluster down
#
# tests/e2e/run-kind.sh runs the same six steps with kind, docker and helm.
#
#   tests/e2e/run-local.sh                 everything, torn down at the end
#   E2E_KEEP=1 tests/e2e/run-local.sh      leave the cluster and the release running
#   tests/e2e/run-local.sh redis           only the Redis scenario
#
# Needs root (the node: mounts, iptables, a bridge). Prints the duration of each step.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
export ODOO_HA_K8S_STATE=${ODOO_HA_K8S_STATE:-/tmp/odoo-ha-k8s-e2e}
export KUBECONFIG=$ODOO_HA_K8S_STATE/kubeconfig
CACHE=${ODOO_HA_K8S_CACHE:-/var/cache/odoo-ha-session}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/cargo-target}
HELM_VENV=${HELM_VENV:-$CACHE/venv-helm}
CLUSTER=$ROOT/tests/k8s/cluster.sh
IMAGE=$ROOT/tests/k8s/image.sh
RELEASE=odoo-ha-session
OPNS=odoo-ha-system
TAG=e2e

T0=$SECONDS
declare -a timings=()
log() { printf '[e2e-local %4ss] %s\n' "$((SECONDS - T0))" "$*" >&2; }
phase_start=0
phase() {
    local now=$SECONDS
    [[ -n ${PHASE:-} ]] && timings+=("$(printf '%-10s %4ss' "$PHASE" "$((now - phase_start))")")
    PHASE=$1
    phase_start=$now
    log "=== $1"
}

[[ $(id -u) -eq 0 ]] || {
    echo "run as root: the node needs mounts, iptables and a bridge" >&2
    exit 1
}

# What the scripts below need that a fresh Debian machine may lack.
need=()
command -v jq >/dev/null || need+=(jq)
command -v rsync >/dev/null || need+=(rsync)
[[ -x /usr/bin/python3.11 ]] || need+=(python3.11-minimal libpython3.11-stdlib)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if ((${#need[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }
fi
if ! "$HELM_VENV/bin/python" -c 'import helm_python, yaml' 2>/dev/null; then
    python3 -m venv "$HELM_VENV"
    "$HELM_VENV/bin/pip" install -q helm-python-sdk==0.2.2 pytest pyyaml
fi

installed=0
diagnose() {
    set +e
    log "---- cluster state after the failure"
    kubectl get pods -A -o wide
    for pod in $(kubectl get pods -n "$OPNS" -o name 2>/dev/null); do
        log "---- logs $OPNS/$pod"
        kubectl logs -n "$OPNS" "$pod" --all-containers --tail=200
    done
    "$CLUSTER" logs kube-apiserver 40
    "$CLUSTER" logs kubelet 40
}
finish() {
    local rc=$?
    set +e
    trap - EXIT ERR
    if ((rc != 0)) && [[ ${PHASE:-} != run ]]; then
        # scenarios.sh prints its own diagnostics; failures before it get these.
        diagnose >&2
    fi
    if [[ ${E2E_KEEP:-0} == 1 ]]; then
        log "left running (E2E_KEEP=1): export KUBECONFIG=$KUBECONFIG"
    else
        phase teardown
        if ((installed)); then
            "$HELM_VENV/bin/python" tests/e2e/helm.py uninstall "$RELEASE" --namespace "$OPNS" ||
                { log "helm uninstall failed"; rc=1; }
            # What the release put outside its namespace must be gone with it.
            left=$(kubectl get clusterroles,clusterrolebindings,mutatingwebhookconfigurations \
                -l "app.kubernetes.io/instance=$RELEASE" -o name 2>/dev/null)
            [[ -z $left ]] || { log "left after helm uninstall: $left"; rc=1; }
        fi
        "$CLUSTER" down || rc=1
        phase end
        log "durations:"
        printf '    %s\n' "${timings[@]}" >&2
    fi
    log "total $((SECONDS - T0))s, exit $rc"
    exit "$rc"
}
trap finish EXIT

phase build
cargo build --release -j2 -p odoo-session-sidecar -p odoo-session-operator 2>&1 | tail -3 >&2
BIN=$CARGO_TARGET_DIR/release

# The stand-in: Debian's python3.11 with a trimmed standard library, the dkn_auth client
# and the app, as /usr/local/bin/python3.11 and /app (the layout of the kind image).
# Cached by the digest of everything that goes in.
build_standin() {
    local key stage lib libs=()
    key=$( (
        cat tests/e2e/standin/app.py tests/e2e/standin/client.py tests/e2e/standin/load.py addons/dkn_auth/client/*.py
        /usr/bin/python3.11 -VV
        sed -n '/^build_standin()/,/^}/p' "$0"
    ) | sha256sum | cut -c1-12)
    STANDIN_IMAGE=localhost/odoo-standin:$key
    if [[ -f $CACHE/images/odoo-standin_$key.oci.tar ]]; then
        log "stand-in image $STANDIN_IMAGE cached"
        return
    fi
    rm -f "$CACHE"/images/odoo-standin_*.oci.tar
    stage=$(mktemp -d)
    mkdir -p "$stage/app"
    rsync -a --exclude '__pycache__' --exclude test --exclude tests --exclude idlelib \
        --exclude tkinter --exclude turtledemo --exclude ensurepip --exclude lib2to3 \
        --exclude 'config-3.11-*' --exclude dist-packages --exclude site-packages \
        /usr/lib/python3.11/ "$stage/python3.11/"
    cp -r addons/dkn_auth/client "$stage/app/dkn_client"
    find "$stage/app" -name __pycache__ -prune -exec rm -rf {} +
    cp tests/e2e/standin/app.py tests/e2e/standin/client.py tests/e2e/standin/load.py "$stage/app/"
    # Libraries of the extension modules (ssl, ctypes, ...), which image.sh does not follow.
    while read -r lib; do
        [[ -n $lib ]] && libs+=(--add "$lib:$lib")
    done < <(for so in "$stage"/python3.11/lib-dynload/*.so; do ldd "$so" 2>/dev/null; done |
        awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u)
    "$IMAGE" "odoo-standin:$key" --binary /usr/bin/python3.11 \
        --add "$stage/python3.11:/usr/local/lib/python3.11" \
        --add "$stage/app:/app" "${libs[@]}" \
        --arg /app/app.py
    rm -rf "$stage"
}
build_standin
"$IMAGE" "odoo-session-operator:$TAG" --binary "$BIN/odoo-session-operator"
"$IMAGE" "odoo-session-sidecar:$TAG" --binary "$BIN/odoo-session-sidecar"

phase cluster
"$ROOT/tests/k8s/build-kubernetes.sh"
# One node per machine, and the API server's default port: wait while another suite's
# cluster holds either.
NODE_OWNER=/run/odoo-ha-k8s-node.owner
held() {
    ss -Hltn 'sport = :16443' 2>/dev/null | grep -q . && return 0
    [[ -f $NODE_OWNER && $(<"$NODE_OWNER") != "$ODOO_HA_K8S_STATE" && -d $(<"$NODE_OWNER") ]]
}
waited=0
while held; do
    ((waited % 60 == 0)) && log "another test cluster holds the node or port 16443; waiting (${waited}s)"
    ((waited >= ${CLUSTER_WAIT_SECONDS:-1800})) && {
        log "gave up waiting for port 16443"
        exit 1
    }
    sleep 5
    waited=$((waited + 5))
done
# `up` imports every cached image archive into the node's containerd (step 3, load).
"$CLUSTER" up node

phase install
installed=1
"$HELM_VENV/bin/python" tests/e2e/helm.py install "$RELEASE" charts/odoo-ha-session \
    --namespace "$OPNS" -f tests/e2e/values-local.yaml

phase run
# The load generator runs here: this machine reaches the node's ClusterIPs and Pod IPs.
export E2E_LOAD_FROM=${E2E_LOAD_FROM:-host} E2E_HOST_PYTHON=${E2E_HOST_PYTHON:-/usr/bin/python3.11}
export E2E_RESULTS=${E2E_RESULTS:-$ODOO_HA_K8S_STATE.results/$(date -u +%Y%m%dT%H%M%SZ)}
log "load records and measurements: $E2E_RESULTS"
# The upgrade case runs `helm upgrade` through the same engine as the install.
E2E_STANDIN_IMAGE=$STANDIN_IMAGE E2E_OPERATOR_NS=$OPNS E2E_RELEASE=$RELEASE \
    E2E_HELM="$HELM_VENV/bin/python $ROOT/tests/e2e/helm.py" E2E_VALUES=tests/e2e/values-local.yaml \
    tests/e2e/scenarios.sh "$@"

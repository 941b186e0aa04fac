#!/usr/bin/env bash
# The end-to-end scenarios, shared by tests/e2e/run-local.sh (a real Kubernetes 1.20 node
# on this machine) and tests/e2e/run-kind.sh (kind, for machines with Docker). The caller
# has installed the chart; this script only talks to the cluster through kubectl.
#
#   KUBECONFIG=... E2E_STANDIN_IMAGE=... tests/e2e/scenarios.sh [redis] [db]
#
# Environment:
#   E2E_STANDIN_IMAGE     image of the Odoo stand-in (tests/e2e/standin), required
#   E2E_OPERATOR_NS       namespace of the chart release (odoo-ha-system)
#   E2E_RELEASE           release name (odoo-ha-session)
#   E2E_TIMEOUT           seconds each wait may take (240)
#
# First the operator: its two replicas are up, its CA is in the webhook configuration, one
# leads; the leader's Pod deleted, the other replica takes over. Then, for each backend
# (managed Redis, managed PostgreSQL), in its own namespace e2e-<driver>:
# the store becomes Ready; a two-replica stand-in labelled for injection gets the sidecar
# and the variables; a Pod naming a missing store is refused with its name; a session
# made through pod A is valid through pod B; pod A deleted:
# still valid through B and through A's replacement; the backend pod restarted: still
# valid; logout through one pod ends the session everywhere; the store's expiry changed:
# the Deployment rolls and the new pods carry the new value; the store deleted: what the
# operator created is gone. A failed step prints the operator's and the pods' logs.
set -Eeuo pipefail

: "${E2E_STANDIN_IMAGE:?E2E_STANDIN_IMAGE must name the stand-in image}"
OPNS=${E2E_OPERATOR_NS:-odoo-ha-system}
RELEASE=${E2E_RELEASE:-odoo-ha-session}
TIMEOUT=${E2E_TIMEOUT:-240}
STORE=sessions
APP=odoo-standin
PY=/usr/local/bin/python3.11
MANAGER=odoo-session-operator
SIDECAR=odoo-session-sidecar

backends=("$@")
((${#backends[@]})) || backends=(redis db)

T0=$SECONDS
CURRENT="start"
NS=""
log() { printf '[e2e %4ss] %s\n' "$((SECONDS - T0))" "$*" >&2; }
step() {
    CURRENT="$*"
    log "== $*"
}
fail() {
    log "FAILED in step '$CURRENT': $*"
    exit 1
}

dump_logs() {
    set +e
    log "---- diagnostics after the failure in step '$CURRENT' ----"
    kubectl get nodes -o wide
    kubectl get pods,svc,endpoints,deploy,sts,pvc -n "$OPNS" -o wide
    for pod in $(kubectl get pods -n "$OPNS" -o name); do
        log "---- logs $OPNS/$pod"
        kubectl logs -n "$OPNS" "$pod" --all-containers --tail=200
        kubectl logs -n "$OPNS" "$pod" --all-containers --previous --tail=50 2>/dev/null
    done
    kubectl get mutatingwebhookconfigurations -o yaml | grep -v caBundle
    for ns in $(kubectl get ns -o name | sed -n 's|^namespace/\(e2e-.*\)|\1|p'); do
        log "---- namespace $ns"
        kubectl get oss,all,pvc,secrets,networkpolicies -n "$ns" -o wide
        kubectl get oss -n "$ns" -o yaml
        kubectl get events -n "$ns" --sort-by=.lastTimestamp | tail -40
        for pod in $(kubectl get pods -n "$ns" -o name); do
            log "---- describe/logs $ns/$pod"
            kubectl describe -n "$ns" "$pod" | tail -30
            kubectl logs -n "$ns" "$pod" --all-containers --tail=100
            kubectl logs -n "$ns" "$pod" --all-containers --previous --tail=30 2>/dev/null
        done
    done
    kubectl get events -n "$OPNS" --sort-by=.lastTimestamp | tail -20
    kubectl get pv
}
# shellcheck disable=SC2154 # rc is set inside the trap
trap 'rc=$?; trap - ERR; dump_logs >&2; exit $rc' ERR

# until_ok SECONDS WHAT COMMAND...: polls COMMAND (quietly) until it succeeds.
until_ok() {
    local timeout=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "timed out after ${timeout}s waiting for $what"
        sleep 1
    done
}

# -- the stand-in --------------------------------------------------------------------

# http METHOD POD PATH [SID] [LOGIN]: one request to POD's stand-in, sent from the client
# Pod; prints {"status", "body", "sid"}.
http() {
    local method=$1 pod=$2 path=$3 sid=${4:--} login=${5:-} ip
    ip=$(kubectl get pod -n "$NS" "$pod" -o jsonpath='{.status.podIP}')
    [[ -n $ip ]] || fail "pod $pod has no IP"
    local -a args=("$method" "http://$ip:8069$path" "$sid")
    [[ -n $login ]] && args+=("$login")
    kubectl exec -n "$NS" client -- "$PY" -B /app/client.py "${args[@]}"
}

# Names of the stand-in's Pods that are Ready and not being deleted.
ready_pods() {
    kubectl get pods -n "$NS" -l "app=$APP" -o json |
        jq -r '.items[] | select(.metadata.deletionTimestamp == null)
            | select(any(.status.conditions[]?; .type == "Ready" and .status == "True"))
            | .metadata.name' | sort
}
live_pods() {
    kubectl get pods -n "$NS" -l "app=$APP" -o json |
        jq -r '.items[] | select(.metadata.deletionTimestamp == null) | .metadata.name' | sort
}
two_ready() { [[ $(ready_pods | wc -l) -eq 2 && $(live_pods | wc -l) -eq 2 ]]; }

# session_status POD SID: the HTTP status of an authenticated call through POD.
session_status() {
    http GET "$1" /web/session/get_session_info "$2" | jq -r .status
}

expect_session() {
    local pod=$1 sid=$2 uid=$3 out
    out=$(http GET "$pod" /web/session/get_session_info "$sid")
    [[ $(jq -r .status <<<"$out") == 200 ]] || fail "session not valid through $pod: $out"
    [[ $(jq -r .body.uid <<<"$out") == "$uid" ]] || fail "wrong uid through $pod: $out"
    [[ $(jq -r .body.pod <<<"$out") == "$pod" ]] || fail "answer not from $pod: $out"
    log "session valid through $pod (uid $uid)"
}

apply_namespace() {
    kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
}

apply_store() {
    local driver=$1 expiry=$2
    kubectl apply -n "$NS" -f - >/dev/null <<YAML
apiVersion: odoo-ha.io/v1alpha1
kind: OdooSessionStore
metadata:
  name: $STORE
spec:
  driver: $driver
  expirySeconds: $expiry
  anonymousExpirySeconds: 600
  backend:
    managed:
      storageSize: 64Mi
YAML
}

apply_workloads() {
    kubectl apply -n "$NS" -f - >/dev/null <<YAML
# The client Pod carries no opt-in label: no sidecar, it only sends the test's requests.
apiVersion: v1
kind: Pod
metadata:
  name: client
  labels: {app: e2e-client}
spec:
  automountServiceAccountToken: false
  securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}
  containers:
    - name: client
      image: $E2E_STANDIN_IMAGE
      imagePullPolicy: IfNotPresent
      command: ["$PY", "-B", "-c", "import signal, time; signal.signal(signal.SIGTERM, lambda *a: exit(0)); time.sleep(86400)"]
      securityContext:
        readOnlyRootFilesystem: true
        allowPrivilegeEscalation: false
        capabilities: {drop: [ALL]}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $APP
spec:
  replicas: 2
  selector:
    matchLabels: {app: $APP}
  template:
    metadata:
      labels:
        app: $APP
        odoo-ha.io/session-store: $STORE
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 5
      securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}
      containers:
        - name: odoo
          image: $E2E_STANDIN_IMAGE
          imagePullPolicy: IfNotPresent
          env:
            - name: POD_NAME
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
          ports:
            - {name: http, containerPort: 8069}
          readinessProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 2
            failureThreshold: 2
          securityContext:
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            capabilities: {drop: [ALL]}
YAML
}

# check_injected EXPIRY DRIVER: every live stand-in Pod has the sidecar and the variables.
check_injected() {
    local expiry=$1 driver=$2 pod json out
    for pod in $(live_pods); do
        json=$(kubectl get pod -n "$NS" "$pod" -o json)
        jq -e --arg s "$SIDECAR" '[.spec.containers[].name, (.spec.initContainers // [])[].name] | index($s)' <<<"$json" >/dev/null ||
            fail "$pod has no $SIDECAR container: $(jq -c '[.spec.containers[].name]' <<<"$json")"
        for var in "DKN_AUTH_URL=http://127.0.0.1:7070" "DKN_AUTH_EXPIRY=$expiry" "DKN_AUTH_ANONYMOUS_EXPIRY=600"; do
            jq -e --arg n "${var%%=*}" --arg v "${var#*=}" \
                '.spec.containers[] | select(.name == "odoo") | .env[] | select(.name == $n and .value == $v)' <<<"$json" >/dev/null ||
                fail "$pod: container odoo lacks $var"
        done
        jq -e --arg s "$SIDECAR" --arg d "$driver" --arg e "$expiry" \
            '[.spec.containers[], (.spec.initContainers // [])[]] | map(select(.name == $s)) | .[0].env
             | (any(.[]; .name == "DKN_AUTH_DRIVER" and .value == $d) and any(.[]; .name == "DKN_AUTH_EXPIRY" and .value == $e))' <<<"$json" >/dev/null ||
            fail "$pod: sidecar env lacks DKN_AUTH_DRIVER=$driver / DKN_AUTH_EXPIRY=$expiry"
        # The running process sees them too (not only the spec).
        out=$(http GET "$pod" /standin/env)
        [[ $(jq -r '.body.env.DKN_AUTH_EXPIRY' <<<"$out") == "$expiry" ]] || fail "$pod process env: $out"
    done
    log "sidecar and variables (expiry $expiry) in: $(live_pods | tr '\n' ' ')"
}

# owned: what the operator created for the store (by its labels).
owned() {
    kubectl get statefulsets,services,secrets,networkpolicies,persistentvolumeclaims -n "$NS" \
        -l "app.kubernetes.io/instance=$STORE,app.kubernetes.io/managed-by=$MANAGER" -o name
}

# -- the operator -----------------------------------------------------------------------

step "operator ready (release $RELEASE in $OPNS)"
deploy=$(kubectl get deploy -n "$OPNS" -l "app.kubernetes.io/instance=$RELEASE" -o name | head -1)
[[ -n $deploy ]] || fail "no operator Deployment of release $RELEASE in $OPNS"
kubectl rollout status -n "$OPNS" "$deploy" --timeout="${TIMEOUT}s" >&2
mwc=$(kubectl get mutatingwebhookconfigurations -l "app.kubernetes.io/instance=$RELEASE" -o name | head -1)
[[ -n $mwc ]] || fail "no MutatingWebhookConfiguration of release $RELEASE"
has_ca() { [[ -n $(kubectl get "$mwc" -o jsonpath='{.webhooks[0].clientConfig.caBundle}') ]]; }
until_ok "$TIMEOUT" "the operator to put its CA into $mwc" has_ca
lease=$(kubectl get -n "$OPNS" "$deploy" -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="LEASE_NAME")].value}')
[[ -n $lease ]] || fail "the operator Deployment names no LEASE_NAME (leader election off?)"
holder() { kubectl get lease -n "$OPNS" "$lease" -o jsonpath='{.spec.holderIdentity}'; }
holder_set() { [[ -n $(holder) ]]; }
until_ok "$TIMEOUT" "a leader among the operator replicas" holder_set
first_leader=$(holder)
log "operator up: $first_leader leads"

step "operator leader deleted: the other replica takes over, a replacement starts"
kubectl delete pod -n "$OPNS" "$first_leader" --wait=true --timeout="${TIMEOUT}s" >&2
new_leader() {
    local h
    h=$(holder)
    [[ -n $h && $h != "$first_leader" ]]
}
until_ok "$TIMEOUT" "another replica to take the lease from $first_leader" new_leader
kubectl rollout status -n "$OPNS" "$deploy" --timeout="${TIMEOUT}s" >&2
log "$(holder) leads now; the scenarios below run under it"

scenario() {
    local driver=$1 backend_pod sid uid out a b a2 pods old_backend_uid old_pods sid2 uid2
    NS=e2e-$driver
    case $driver in
    redis) backend_pod=$STORE-redis-0 ;;
    db) backend_pod=$STORE-postgres-0 ;;
    *) fail "unknown driver $driver (redis, db)" ;;
    esac

    step "[$driver] store and two-replica stand-in"
    apply_namespace
    apply_store "$driver" 3600
    kubectl wait -n "$NS" "oss/$STORE" --for=condition=Ready --timeout="${TIMEOUT}s" >&2
    apply_workloads
    kubectl wait -n "$NS" pod/client --for=condition=Ready --timeout="${TIMEOUT}s" >&2
    kubectl rollout status -n "$NS" "deploy/$APP" --timeout="${TIMEOUT}s" >&2
    until_ok "$TIMEOUT" "two ready stand-in pods" two_ready

    step "[$driver] both pods got the sidecar and the variables"
    check_injected 3600 "$driver"

    step "[$driver] a Pod naming a store that does not exist is refused, with the reason"
    if out=$(kubectl run -n "$NS" orphan --image="$E2E_STANDIN_IMAGE" --restart=Never \
        --labels="odoo-ha.io/session-store=no-such-store" 2>&1); then
        kubectl delete pod -n "$NS" orphan --wait=false >&2
        fail "a Pod labelled for a missing store was admitted: $out"
    fi
    if ! grep -q '"no-such-store"' <<<"$out" || ! grep -q 'does not exist' <<<"$out"; then
        fail "refused, but without naming the missing store: $out"
    fi
    log "refused: $(grep -o 'OdooSessionStore.*' <<<"$out" | head -c 160)"

    step "[$driver] a session created through pod A is valid through pod B"
    mapfile -t pods < <(ready_pods)
    a=${pods[0]:-} b=${pods[1]:-}
    [[ -n $a && -n $b ]] || fail "expected two ready stand-in pods, got: ${pods[*]}"
    out=$(http POST "$a" /web/login - "alice-$driver")
    [[ $(jq -r .status <<<"$out") == 200 ]] || fail "login through $a: $out"
    sid=$(jq -r .sid <<<"$out")
    uid=$(jq -r .body.uid <<<"$out")
    [[ ${#sid} == 84 ]] || fail "login gave no 84-character sid: $out"
    expect_session "$b" "$sid" "$uid"
    expect_session "$a" "$sid" "$uid"

    step "[$driver] pod A deleted: still logged in through B and through A's replacement"
    kubectl delete pod -n "$NS" "$a" --wait=true --timeout="${TIMEOUT}s" >&2
    expect_session "$b" "$sid" "$uid"
    until_ok "$TIMEOUT" "A's replacement" two_ready
    a2=$(ready_pods | grep -vx "$b")
    [[ -n $a2 && $a2 != "$a" ]] || fail "no replacement for $a"
    check_injected 3600 "$driver"
    expect_session "$a2" "$sid" "$uid"

    step "[$driver] backend pod $backend_pod restarted: sessions still there"
    old_backend_uid=$(kubectl get pod -n "$NS" "$backend_pod" -o jsonpath='{.metadata.uid}')
    kubectl delete pod -n "$NS" "$backend_pod" --wait=true --timeout="${TIMEOUT}s" >&2
    backend_back() {
        [[ $(kubectl get pod -n "$NS" "$backend_pod" -o jsonpath='{.metadata.uid}') != "$old_backend_uid" ]] &&
            kubectl wait -n "$NS" "pod/$backend_pod" --for=condition=Ready --timeout=2s
    }
    until_ok "$TIMEOUT" "$backend_pod to come back" backend_back
    # The sidecars reconnect by themselves; 503 meanwhile is fine, 401 (a lost session) is not.
    local deadline=$((SECONDS + TIMEOUT)) status
    while :; do
        status=$(session_status "$b" "$sid")
        [[ $status == 200 ]] && break
        [[ $status == 401 ]] && fail "session lost with the backend restart (401 through $b)"
        ((SECONDS < deadline)) || fail "sidecar of $b never recovered (last status $status)"
        sleep 1
    done
    expect_session "$b" "$sid" "$uid"
    expect_session "$a2" "$sid" "$uid"

    step "[$driver] logout through one pod ends the session through the other"
    out=$(http POST "$a2" /web/session/logout "$sid")
    [[ $(jq -r .status <<<"$out") == 200 ]] || fail "logout through $a2: $out"
    [[ $(session_status "$b" "$sid") == 401 ]] || fail "session still valid through $b after logout"
    out=$(http POST "$b" /web/login - "bob-$driver")
    sid2=$(jq -r .sid <<<"$out")
    uid2=$(jq -r .body.uid <<<"$out")
    [[ $(jq -r .status <<<"$out") == 200 ]] || fail "second login: $out"

    step "[$driver] expiry changed: the Deployment rolls, the new pods carry the new value"
    old_pods=$(live_pods | tr '\n' ' ')
    kubectl patch -n "$NS" "oss/$STORE" --type merge -p '{"spec":{"expirySeconds":7200}}' >&2
    rolled() {
        local p
        two_ready || return 1
        for p in $(live_pods); do
            [[ " $old_pods " != *" $p "* ]] || return 1
        done
    }
    until_ok "$TIMEOUT" "the stand-in to roll after the expiry change" rolled
    kubectl rollout status -n "$NS" "deploy/$APP" --timeout="${TIMEOUT}s" >&2
    [[ -n $(kubectl get deploy -n "$NS" "$APP" -o jsonpath='{.spec.template.metadata.annotations.odoo-ha\.io/config-hash}') ]] ||
        fail "the Deployment's template has no odoo-ha.io/config-hash annotation"
    check_injected 7200 "$driver"
    mapfile -t pods < <(ready_pods)
    a=${pods[0]:-} b=${pods[1]:-}
    [[ -n $a && -n $b ]] || fail "expected two ready stand-in pods, got: ${pods[*]}"
    expect_session "$a" "$sid2" "$uid2"
    out=$(http POST "$a" /web/login - "carol-$driver")
    local ttl
    ttl=$(http GET "$b" /web/session/get_session_info "$(jq -r .sid <<<"$out")" | jq -r .body.ttl)
    ((ttl > 3600 && ttl <= 7200)) || fail "a new login's TTL is $ttl, expected the new expiry 7200"
    log "new sessions live ${ttl}s"

    step "[$driver] store deleted: what it created is gone"
    local before
    before=$(owned | sort)
    log "owned by the store: $(tr '\n' ' ' <<<"$before")"
    for kind in statefulset service secret networkpolicy persistentvolumeclaim; do
        grep -q "^$kind" <<<"$before" || fail "expected a $kind owned by the store before deleting it"
    done
    kubectl delete -n "$NS" "oss/$STORE" --wait=true --timeout="${TIMEOUT}s" >&2
    nothing_left() { [[ -z $(owned) ]]; }
    until_ok "$TIMEOUT" "the store's objects to be deleted (left: $(owned | tr '\n' ' '))" nothing_left
    log "nothing left of the store"

    step "[$driver] namespace removed"
    kubectl delete namespace "$NS" --wait=false >&2
}

for driver in "${backends[@]}"; do
    scenario "$driver"
done
step "done"
log "all scenarios passed (${backends[*]}) in $((SECONDS - T0))s"

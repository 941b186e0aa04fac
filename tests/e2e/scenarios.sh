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
#   E2E_LOAD_FROM         where tests/e2e/standin/load.py runs: `pod` (the client Pod, default;
#                         kind) or `host` (this machine: the local node's ClusterIPs and Pod
#                         IPs are reachable from it; run-local.sh sets it)
#   E2E_HOST_PYTHON       python for E2E_LOAD_FROM=host (python3)
#   E2E_LOAD_RATE         authenticated requests per second of the load (20)
#   E2E_LOAD_SESSIONS     logged-in sessions the load cycles through (8)
#   E2E_HA                1 (default): the managed Redis runs 3 Pods with Sentinel and its
#                         primary is deleted under load (graceful, then forced), then every
#                         Redis Pod at once; the first login waits until the store's status
#                         and the Sentinels agree on a healthy replication. 0: a single Redis
#                         Pod, restarted (outage case)
#   E2E_ENFORCE           1: a missed availability target fails the run; 0: it is reported
#                         (NOT MET) and the run goes on, to measure every case (default: E2E_HA)
#   E2E_ENFORCE_LATE      1: a failed login just before a measured case (a request failing
#                         outside every measured window, e.g. on a connection left from the
#                         previous failover) fails the run; 0 (default): reported as NOT MET
#   E2E_FAILOVER_RUNS     times each primary deletion (graceful, forced) is repeated (1)
#   E2E_MAX_FAILURE_WINDOW  seconds of failed requests a primary deletion may cause (5)
#   E2E_PARALLEL          1 (default): the backends' scenarios run at the same time, each in
#                         its namespace; the measured parts take turns (a lock); 0: in turn
#   E2E_HELM              the helm command of the caller (`helm`, or run-local.sh's
#                         `python tests/e2e/helm.py`); unset: the upgrade case is skipped
#   E2E_VALUES            the values file the chart was installed with (the upgrade adds to it)
#   E2E_RESULTS           folder for the load records and measurements.jsonl
#                         (default: a new folder under ${TMPDIR:-/tmp}/odoo-ha-e2e-results)
#
# Availability cases, under a steady authenticated load (E2E_LOAD_RATE requests/s, each on
# a new connection, through the stand-in's ClusterIP Service; load.py records every
# request's time and outcome):
#   rollout    `kubectl rollout restart` of the two-replica stand-in (it serves 5 s after
#              SIGTERM): 0 failed requests, 0 refused sessions, every session valid after;
#   failover   (E2E_HA=1) the Redis primary deleted, graceful and forced: failures within
#              E2E_MAX_FAILURE_WINDOW s (first to last), no session refused, every session
#              valid after, a logout acknowledged just before the kill refused through both
#              pods after the failover;
#   upgrade    (db scenario, E2E_HELM set) `helm upgrade` of the chart with changed values
#              (webhook failurePolicy and timeoutSeconds, the Lease duration: the operator
#              Deployment rolls): release deployed at the next revision, the webhook
#              configuration and the operator carry the new values, the caBundle kept, a
#              leader, 0 failed requests, 0 refused, the store Ready, every session valid, a
#              Pod created after it injected; then an upgrade back to the install's values;
#   outage     the backend down (the PostgreSQL Pod deleted; every Redis Pod at once, or the
#              single one with E2E_HA=0): the stand-in Pods stay Ready, the Service keeps
#              both endpoints, a request that needs no session answers 200, the sidecars'
#              *_backend_up gauge reads 0; the sessions are there once it is back.
# Every case appends one line to $E2E_RESULTS/measurements.jsonl; a table of them closes the run.

# The wait predicates (old_gone, promoted, rolled, ...) are called through until_ok.
# shellcheck disable=SC2317
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

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LOAD_FROM=${E2E_LOAD_FROM:-pod}
HOST_PY=${E2E_HOST_PYTHON:-python3}
RATE=${E2E_LOAD_RATE:-20}
SESSIONS=${E2E_LOAD_SESSIONS:-8}
HA=${E2E_HA:-1}
ENFORCE=${E2E_ENFORCE:-$HA}
ENFORCE_LATE=${E2E_ENFORCE_LATE:-0}
FAILOVER_RUNS=${E2E_FAILOVER_RUNS:-1}
MAX_WINDOW=${E2E_MAX_FAILURE_WINDOW:-5}
PARALLEL=${E2E_PARALLEL:-1}
RESULTS=${E2E_RESULTS:-${TMPDIR:-/tmp}/odoo-ha-e2e-results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$RESULTS"
# Name of the primary the managed Redis's Sentinels monitor, and their port.
SENTINEL_MASTER=odoo-sessions
SENTINEL_PORT=26379

backends=("$@")
((${#backends[@]})) || backends=(redis db)

T0=$SECONDS
CURRENT="start"
STEP_T=$SECONDS
NS=""
log() { printf '[e2e %4ss] %s\n' "$((SECONDS - T0))" "$*" >&2; }
step() {
    [[ $CURRENT != start ]] && log "   (took $((SECONDS - STEP_T)) s: $CURRENT)"
    CURRENT="$*"
    STEP_T=$SECONDS
    log "== $*"
}
DUMPED=0
fail() {
    log "FAILED in step '$CURRENT': $*"
    stop_load_on_error
    if ((!DUMPED)); then
        DUMPED=1
        # A failing command inside the dump must not end it through the ERR trap.
        trap - ERR
        dump_logs >&2
    fi
    exit 1
}
# require WHAT COMMAND...: WHAT must hold. With E2E_ENFORCE=1 a miss fails the run; with 0
# it is reported and the run goes on.
NOT_MET=0
require() {
    local what=$1
    shift
    if "$@"; then
        log "ok: $what"
    elif [[ $ENFORCE == 1 ]]; then
        fail "$what"
    else
        log "NOT MET (reported, not enforced): $what"
        NOT_MET=$((NOT_MET + 1))
        echo "$NS: $what" >>"$RESULTS/not-met.txt"
    fi
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
            # A failover is decided in the Sentinels' event lines (+sdown, +odown, +vote-for-leader,
            # -failover-abort-*), which the watch loop's reaped children ("waitpid() returned a
            # pid ...", every 2 s) push out of any tail: keep the events only, further back.
            if kubectl get -n "$ns" "$pod" -o jsonpath='{.spec.containers[*].name}' | grep -qw sentinel; then
                log "---- sentinel events $ns/$pod"
                kubectl logs -n "$ns" "$pod" -c sentinel --tail=5000 | grep -v 'waitpid() returned' | tail -150 || true
            fi
        done
    done
    kubectl get events -n "$OPNS" --sort-by=.lastTimestamp | tail -20
    kubectl get pv
}
stop_load_on_error() {
    [[ -n ${LOAD_PID:-} ]] && kill "$LOAD_PID" 2>/dev/null
    return 0
}
# shellcheck disable=SC2154 # rc is set inside the trap
trap 'rc=$?; trap - ERR; log "FAILED in step '"'"'$CURRENT'"'"': exit $rc of \`$BASH_COMMAND'"'"' (line $LINENO)"
    stop_load_on_error; ((DUMPED)) || dump_logs >&2; exit $rc' ERR

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
    # A 503 is an answer a user retries; these functional steps retry it twice, and a 503
    # outside every measured window is reported (it fails the run with E2E_ENFORCE_LATE=1).
    local try out first=""
    for try in 1 2 3; do
        out=$(kubectl exec -n "$NS" client -- "$PY" -B /app/client.py "${args[@]}")
        [[ $(jq -r .status <<<"$out" 2>/dev/null) == 503 ]] || break
        first=${first:-$out}
        log "503 from $pod on $method $path (try $try): $(jq -c .body <<<"$out" | head -c 200)"
        sleep 1
    done
    [[ -z $first ]] || ENFORCE=$ENFORCE_LATE require "no 503 on $method $path through $pod outside the measured cases (first: $(jq -c .body <<<"$first" | head -c 200))" false
    printf '%s\n' "$out"
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

# apply_store DRIVER EXPIRY [REPLICAS]: spec.backend.managed.replicas only when given.
apply_store() {
    local driver=$1 expiry=$2 replicas=${3:-}
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
      storageSize: 64Mi${replicas:+
      replicas: $replicas}
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
      # load.py's stop files (E2E_LOAD_FROM=pod).
      volumeMounts: [{name: tmp, mountPath: /tmp}]
  volumes: [{name: tmp, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata:
  name: $APP
spec:
  selector: {app: $APP}
  ports: [{name: http, port: 80, targetPort: http}]
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
      # The stand-in serves STANDIN_SIGTERM_GRACE s after SIGTERM (endpoints and kube-proxy
      # rules drop the Pod meanwhile), then finishes its requests in flight.
      terminationGracePeriodSeconds: 20
      securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}
      containers:
        - name: odoo
          image: $E2E_STANDIN_IMAGE
          imagePullPolicy: IfNotPresent
          env:
            - name: POD_NAME
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
            - {name: STANDIN_SIGTERM_GRACE, value: "5"}
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

# check_injected EXPIRY DRIVER: every live stand-in Pod has the sidecar and the variables
# (and the process sees them: /standin/env).
check_injected() {
    local expiry=$1 driver=$2 pod json out
    for pod in $(live_pods); do
        json=$(kubectl get pod -n "$NS" "$pod" -o json)
        jq -e --arg s "$SIDECAR" '[.spec.containers[].name, (.spec.initContainers // [])[].name] | index($s)' <<<"$json" >/dev/null ||
            fail "$pod has no $SIDECAR container: $(jq -c '[.spec.containers[].name]' <<<"$json")"
        # The operator's default address: the sidecar's Unix socket in a shared emptyDir.
        for var in "DKN_AUTH_SOCKET=/run/dkn-auth/sidecar.sock" "DKN_AUTH_EXPIRY=$expiry" "DKN_AUTH_ANONYMOUS_EXPIRY=600"; do
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
    kubectl get statefulsets,services,secrets,networkpolicies,persistentvolumeclaims,poddisruptionbudgets -n "$NS" \
        -l "app.kubernetes.io/instance=$STORE,app.kubernetes.io/managed-by=$MANAGER" -o name
}

# -- load, measurements ---------------------------------------------------------------

# loadpy ARGS...: tests/e2e/standin/load.py from the test machine (E2E_LOAD_FROM=host) or
# from the client Pod (E2E_LOAD_FROM=pod, the image's /app/load.py).
loadpy() {
    if [[ $LOAD_FROM == host ]]; then
        "$HOST_PY" -B "$ROOT/tests/e2e/standin/load.py" "$@"
    else
        kubectl exec -n "$NS" client -- "$PY" -B /app/load.py "$@"
    fi
}
svc_url() { printf 'http://%s:80' "$(kubectl get svc -n "$NS" "$APP" -o jsonpath='{.spec.clusterIP}')"; }
# pod_urls PORT [SUFFIX]: comma-separated http://IP:PORT[SUFFIX] of the stand-in Pods (not
# being deleted).
pod_urls() {
    local pod
    for pod in $(live_pods); do
        printf 'http://%s:%s%s\n' "$(kubectl get pod -n "$NS" "$pod" -o jsonpath='{.status.podIP}')" "$1" "${2:-}"
    done | paste -sd, -
}
endpoints_count() {
    kubectl get endpoints -n "$NS" "$APP" -o json | jq '[.subsets[]?.addresses[]?] | length'
}

# The measured parts of parallel scenarios take turns, so one's load or kill does not
# disturb another's numbers (setup and checks still overlap).
measure_lock() {
    local t=$SECONDS
    exec 9>"$RESULTS/measure.lock"
    flock 9
    ((SECONDS - t < 2)) || log "waited $((SECONDS - t)) s for the other scenario's measurement"
}
measure_unlock() {
    flock -u 9
    exec 9>&-
}

# load_start NAME: logs E2E_LOAD_SESSIONS users in through the Service, then runs the load
# in the background (records: $RESULTS/$NS-NAME.jsonl). load_stop ends it and sets
# LOAD_SUMMARY.
LOAD_PID="" LOAD_SIDS="" LOAD_FILE="" LOAD_STOP="" LOAD_SUMMARY=""
load_start() {
    local name=$1 url out
    url=$(svc_url)
    local try first=""
    for try in 1 2 3; do
        out=$(loadpy login "$url" "$SESSIONS" "$NS-$name") || true
        LOAD_SIDS=$(jq -r '.sids // empty | join(",")' <<<"$out" 2>/dev/null) || LOAD_SIDS=""
        [[ -n $LOAD_SIDS ]] && break
        first=${first:-$out}
        log "logins for the load failed (try $try): $out"
        sleep 1
    done
    [[ -n $LOAD_SIDS ]] || fail "logins for the load failed 3 times: $out"
    # Outside any measured window, so a failure here is one no case would count.
    ENFORCE=$ENFORCE_LATE require "the logins before '$name' succeed at the first try${first:+ (first: $first)}" test -z "$first"
    LOAD_FILE=$RESULTS/$NS-$name.jsonl
    if [[ $LOAD_FROM == host ]]; then
        LOAD_STOP=$RESULTS/$NS-$name.stop
    else
        LOAD_STOP=/tmp/$name.stop
    fi
    rm -f "$LOAD_STOP"
    loadpy run "$url" --sids="$LOAD_SIDS" --rate "$RATE" --max-seconds 400 --stop-file "$LOAD_STOP" >"$LOAD_FILE" &
    LOAD_PID=$!
    log "load: $RATE req/s, $SESSIONS sessions, through $url (records $LOAD_FILE)"
}
load_stop() {
    if [[ $LOAD_FROM == host ]]; then
        touch "$LOAD_STOP"
    else
        kubectl exec -n "$NS" client -- "$PY" -c "open('$LOAD_STOP', 'w').close()"
    fi
    wait "$LOAD_PID" || fail "the load generator failed (records $LOAD_FILE)"
    LOAD_PID=""
    LOAD_SUMMARY=$(tail -n 1 "$LOAD_FILE")
    jq -e '.type == "summary"' <<<"$LOAD_SUMMARY" >/dev/null 2>&1 ||
        fail "the load generator printed no summary: $(tail -c 300 "$LOAD_FILE")"
    log "load: $(jq -r '"\(.requests) requests in \(.seconds) s: \(.ok) ok, \(.failed) failed (window \(.failure_window_s) s), \(.refused) refused; by status \(.by_status | tostring); by pod \(.by_pod | tostring); latency \(.latency_ms | tostring) ms"' <<<"$LOAD_SUMMARY")"
    [[ $(jq '.failure_errors | length' <<<"$LOAD_SUMMARY") == 0 ]] ||
        log "load failures: $(jq -c .failure_errors <<<"$LOAD_SUMMARY")"
}
# record CASE [JSON]: one line of measurements.jsonl (the load summary, when one was taken,
# without the bulky parts, plus JSON).
record() {
    local case=$1 extra=${2:-"{}"} base=${LOAD_SUMMARY:-"{}"}
    jq -c --arg case "$case" --arg ns "$NS" --argjson extra "$extra" \
        'del(.type, .failure_errors, .by_status) + {case: $case, ns: $ns} + $extra' <<<"$base" >>"$RESULTS/measurements.jsonl"
}
# bad_sessions EXPECTED SIDS: the sid/pod pairs (through every ready stand-in Pod) whose
# status is not EXPECTED; empty when all are.
bad_sessions() {
    loadpy check "$(pod_urls 8069)" --sids="$2" |
        jq -r --argjson e "$1" '[to_entries[] | .key as $u | .value | to_entries[]
            | select(.value != $e) | "\(.key[0:8])... via \($u): \(.value)"] | join("; ")'
}

# rollout_under_load: `kubectl rollout restart` of the stand-in while the load runs.
rollout_under_load() {
    local old failed refused bad pods
    step "[$NS] rollout restart of the stand-in under load: no failed request, no logout"
    measure_lock
    old=$(live_pods | tr '\n' ' ')
    # What the old Pods' containers say while they stop (SIGTERM grace, the sidecar's drain).
    local p
    local -a followers=()
    for p in $old; do
        kubectl logs -f -n "$NS" "$p" --all-containers --prefix --timestamps --tail=0 \
            >"$RESULTS/$NS-rollout-$p.log" 2>&1 &
        followers+=($!)
    done
    load_start rollout
    sleep 5
    kubectl rollout restart -n "$NS" "deploy/$APP" >&2
    kubectl rollout status -n "$NS" "deploy/$APP" --timeout="${TIMEOUT}s" >&2
    # The old Pods serve for their SIGTERM grace: the roll ends when they are gone.
    old_gone() {
        local p
        for p in $old; do
            kubectl get pod -n "$NS" "$p" >/dev/null 2>&1 && return 1
        done
        return 0
    }
    until_ok "$TIMEOUT" "the old stand-in pods ($old) to exit" old_gone
    sleep 3
    load_stop
    measure_unlock
    kill "${followers[@]}" 2>/dev/null || true
    for p in $old; do
        log "while $p stopped: $(grep -hiE 'sigterm|drain|exiting|stopped accepting' "$RESULTS/$NS-rollout-$p.log" |
            sed -E 's/"(level|target|fields|span)":[^,]*,//g' | cut -c1-220 | tr '\n' '|' | head -c 900)"
    done
    pods=$(jq '.by_pod | length' <<<"$LOAD_SUMMARY")
    ((pods >= 3)) || fail "the load reached only $pods pods: it did not span the roll"
    bad=$(bad_sessions 200 "$LOAD_SIDS")
    record rollout "$(jq -nc --arg bad "$bad" '{sessions_invalid_after: $bad}')"
    failed=$(jq .failed <<<"$LOAD_SUMMARY")
    refused=$(jq .refused <<<"$LOAD_SUMMARY")
    require "0 failed requests across the roll (got $failed)" test "$failed" -eq 0
    require "0 refused sessions (logouts) across the roll (got $refused)" test "$refused" -eq 0
    require "every load session valid through both new pods after the roll${bad:+ (not: $bad)}" test -z "$bad"
}

# outage_readiness CASE BACK SID: while the backend is down (the caller deleted it) and
# until BACK succeeds and SID answers 200 again: the stand-in Pods stay Ready, the Service
# keeps 2 endpoints, a request that needs no session answers 200, the sidecars' backend
# gauge reads 0 at least once; SID is never refused (401).
outage_readiness() {
    local case=$1 back=$2 sid=$3 url metrics t0=$SECONDS deadline probe ready eps
    local min_ready=9 min_eps=9 anon_bad=0 samples=0 down_seen=0 auth_503=0 back_at=""
    local file=$RESULTS/$NS-$case.jsonl
    url=$(svc_url)
    metrics=$(pod_urls 7071 /metrics)
    deadline=$((SECONDS + TIMEOUT))
    : >"$file"
    while :; do
        ready=$(ready_pods | wc -l)
        eps=$(endpoints_count)
        probe=$(loadpy probe "$url" --sid="$sid" --metrics="$metrics")
        jq -c --argjson r "$ready" --argjson e "$eps" '. + {ready: $r, endpoints: $e}' <<<"$probe" >>"$file"
        samples=$((samples + 1))
        ((ready < min_ready)) && min_ready=$ready
        ((eps < min_eps)) && min_eps=$eps
        [[ $(jq .anon <<<"$probe") == 200 ]] || anon_bad=$((anon_bad + 1))
        jq -e '.backend_up | any(. == 0)' <<<"$probe" >/dev/null && down_seen=1
        case $(jq .auth <<<"$probe") in
        401) fail "session refused (401) during the backend outage: $probe" ;;
        503) auth_503=$((auth_503 + 1)) ;;
        200) if "$back"; then back_at=$((SECONDS - t0)); fi ;;
        esac
        [[ -n $back_at ]] && break
        ((SECONDS < deadline)) || fail "the backend never came back ($case; last probe $probe)"
        sleep 1
    done
    log "$case: back after ${back_at} s; $samples looks: ready pods >= $min_ready, endpoints >= $min_eps, anonymous not 200: $anon_bad, authenticated 503: $auth_503, backend gauge 0 seen: $down_seen (records $file)"
    LOAD_SUMMARY=""
    record "$case" "$(jq -nc --argjson b "$back_at" --argjson s "$samples" --argjson r "$min_ready" \
        --argjson e "$min_eps" --argjson a "$anon_bad" --argjson u "$auth_503" --argjson d "$down_seen" \
        '{back_after_s: $b, looks: $s, min_ready_pods: $r, min_endpoints: $e, anonymous_not_200: $a, authenticated_503: $u, backend_down_seen: ($d == 1)}')"
    require "both stand-in pods stayed Ready while the backend was down (min $min_ready)" test "$min_ready" -eq 2
    require "the Service kept both endpoints (min $min_eps)" test "$min_eps" -eq 2
    require "requests that need no session answered 200 throughout ($anon_bad did not)" test "$anon_bad" -eq 0
    require "the sidecars' metrics said the backend was down (a *_backend_up sample of 0)" test "$down_seen" -eq 1
}

# -- the chart upgrade -----------------------------------------------------------------

HELM=()
[[ -n ${E2E_HELM:-} ]] && read -ra HELM <<<"$E2E_HELM"
# helm_upgrade [VALUES...]: the chart upgraded with the install's values plus VALUES.
helm_upgrade() {
    local -a files=()
    [[ -n ${E2E_VALUES:-} ]] && files+=(-f "$E2E_VALUES")
    local f
    for f in "$@"; do files+=(-f "$f"); done
    "${HELM[@]}" upgrade "$RELEASE" "$ROOT/charts/odoo-ha-session" --namespace "$OPNS" "${files[@]}" --wait >&2
}
release_json() { "${HELM[@]}" status "$RELEASE" --namespace "$OPNS" -o json; }
webhook_field() { kubectl get "$mwc" -o jsonpath="{.webhooks[0].$1}"; }
operator_env() {
    kubectl get -n "$OPNS" "$deploy" -o jsonpath="{.spec.template.spec.containers[0].env[?(@.name==\"$1\")].value}"
}
operator_pods() {
    kubectl get pods -n "$OPNS" -l "app.kubernetes.io/instance=$RELEASE" -o json |
        jq -r '.items[] | select(.metadata.deletionTimestamp == null) | .metadata.name' | sort
}
# The operator Deployment rolled to its newest template and only its Pods are left.
operator_rolled() {
    local want
    want=$(kubectl get -n "$OPNS" "$deploy" -o jsonpath='{.spec.replicas}')
    kubectl rollout status -n "$OPNS" "$deploy" --timeout=2s >/dev/null 2>&1 &&
        [[ $(kubectl get pods -n "$OPNS" -l "app.kubernetes.io/instance=$RELEASE" -o name | wc -l) -eq $want ]]
}

# The Lease is held by a running operator Pod of the current revision.
new_pod_leads() {
    local h
    h=$(holder)
    [[ -n $h ]] && operator_pods | grep -qx "$h"
}

# upgrade_under_load: `helm upgrade` with changed values while the load runs through the
# two injected stand-in Pods; then back to the install's values (not measured).
upgrade_under_load() {
    local t0=$SECONDS values rev0 rev1 json status old_ops t_up upgrade_s failed refused bad pods
    step "[$NS] helm upgrade of the chart under load (failurePolicy Ignore, timeoutSeconds 8, Lease 20 s): deployed, no failed request, the store Ready, sessions valid"
    values=$RESULTS/upgrade-values.yaml
    cat >"$values" <<'YAML'
webhook:
  failurePolicy: Ignore
  timeoutSeconds: 8
leaderElection:
  leaseDurationSeconds: 20
YAML
    rev0=$(release_json | jq -r .version)
    [[ $(webhook_field failurePolicy) == Fail ]] || fail "the install's failurePolicy is not Fail: $(webhook_field failurePolicy)"
    measure_lock
    old_ops=$(operator_pods | tr '\n' ' ')
    load_start upgrade
    sleep 3
    t_up=$SECONDS
    helm_upgrade "$values" || fail "helm upgrade failed"
    until_ok "$TIMEOUT" "the operator Deployment to roll" operator_rolled
    upgrade_s=$((SECONDS - t_up))
    sleep 3
    load_stop
    measure_unlock
    json=$(release_json)
    status=$(jq -r .info.status <<<"$json")
    rev1=$(jq -r .version <<<"$json")
    pods=$(jq '.by_pod | length' <<<"$LOAD_SUMMARY")
    failed=$(jq .failed <<<"$LOAD_SUMMARY")
    refused=$(jq .refused <<<"$LOAD_SUMMARY")
    bad=$(bad_sessions 200 "$LOAD_SIDS")
    log "upgrade: revision $rev0 -> $rev1 ($status) in ${upgrade_s} s (helm and the operator's roll); operator Pods $old_ops-> $(operator_pods | tr '\n' ' ')"
    record helm-upgrade "$(jq -nc --arg s "$status" --argjson r0 "$rev0" --argjson r1 "$rev1" --argjson u "$upgrade_s" --arg bad "$bad" \
        '{release_status: $s, revision_before: $r0, revision_after: $r1, upgrade_s: $u, sessions_invalid_after: $bad}')"
    [[ $status == deployed ]] || fail "release $RELEASE is $status after the upgrade"
    ((rev1 == rev0 + 1)) || fail "release revision $rev0 -> $rev1, expected one more"
    [[ $(webhook_field failurePolicy) == Ignore && $(webhook_field timeoutSeconds) == 8 ]] ||
        fail "webhook configuration after the upgrade: failurePolicy $(webhook_field failurePolicy), timeoutSeconds $(webhook_field timeoutSeconds)"
    has_ca || fail "the upgrade lost the webhook's caBundle"
    [[ $(operator_env LEASE_DURATION_SECONDS) == 20 ]] || fail "operator LEASE_DURATION_SECONDS is $(operator_env LEASE_DURATION_SECONDS)"
    local p
    for p in $old_ops; do
        [[ $(operator_pods) != *"$p"* ]] || fail "operator Pod $p of the old revision still runs"
    done
    until_ok "$TIMEOUT" "a leader among the new operator replicas" new_pod_leads
    ((pods == 2)) || fail "the load reached $pods stand-in pods, expected both"
    kubectl wait -n "$NS" "oss/$STORE" --for=condition=Ready --timeout=10s >&2 || fail "store $STORE not Ready after the upgrade"
    require "0 failed requests across the upgrade (got $failed)" test "$failed" -eq 0
    require "0 refused sessions across the upgrade (got $refused)" test "$refused" -eq 0
    require "every load session valid through both pods after the upgrade${bad:+ (not: $bad)}" test -z "$bad"
    log "upgrade case took $((SECONDS - t0)) s"
}

# upgrade_back: the install's values again (failurePolicy Fail for the rest of the run).
upgrade_back() {
    local t0=$SECONDS
    step "[$NS] helm upgrade back to the install's values"
    # Not measured, but the other scenario's measurements do not overlap the operator's roll.
    measure_lock
    helm_upgrade || fail "helm upgrade back failed"
    until_ok "$TIMEOUT" "the operator Deployment to roll back" operator_rolled
    [[ $(release_json | jq -r .info.status) == deployed ]] || fail "release not deployed after the upgrade back"
    [[ $(webhook_field failurePolicy) == Fail && $(webhook_field timeoutSeconds) == 5 ]] ||
        fail "webhook configuration after the upgrade back: $(webhook_field failurePolicy) $(webhook_field timeoutSeconds)"
    has_ca || fail "the upgrade back lost the webhook's caBundle"
    until_ok "$TIMEOUT" "a leader among the operator replicas" new_pod_leads
    measure_unlock
    log "upgrade back took $((SECONDS - t0)) s"
}

# -- managed Redis with Sentinel ----------------------------------------------------------

redis_pods() {
    kubectl get pods -n "$NS" -o json |
        jq -r --arg re "^$STORE-redis-[0-9]+$" '.items[] | select(.metadata.name | test($re))
            | select(.metadata.deletionTimestamp == null) | .metadata.name' | sort
}
redis_pods_ready() {
    local want=$1 n
    n=$(kubectl get pods -n "$NS" -o json | jq --arg re "^$STORE-redis-[0-9]+$" \
        '[.items[] | select(.metadata.name | test($re)) | select(.metadata.deletionTimestamp == null)
          | select(all(.status.containerStatuses[]?; .ready))
          | select(any(.status.conditions[]?; .type == "Ready" and .status == "True"))] | length')
    [[ $n == "$want" ]]
}
# sentinel_primary: the Pod the Sentinels name as primary (the first one that answers), by
# its address (a Pod IP or a <pod>.<headless> name). Asked from the `redis` container, whose
# REDISCLI_AUTH (from the store's Secret) the Sentinels also require; Pods being deleted
# are not asked.
sentinel_primary() {
    local pod addr
    for pod in $(redis_pods); do
        addr=$(kubectl exec -n "$NS" "$pod" -c redis -- \
            redis-cli -p "$SENTINEL_PORT" --raw SENTINEL get-master-addr-by-name "$SENTINEL_MASTER" 2>/dev/null | head -1) || continue
        [[ -n $addr ]] || continue
        if [[ $addr =~ ^[0-9.]+$ ]]; then
            kubectl get pods -n "$NS" -o json | jq -r --arg ip "$addr" \
                '.items[] | select(.status.podIP == $ip) | .metadata.name' | head -1
            return 0
        elif [[ $addr =~ ^$STORE-redis-[0-9]+(\.|$) ]]; then
            printf '%s\n' "${addr%%.*}"
            return 0
        fi
        log "Sentinel in $pod answered: $addr"
    done
    return 1
}
# The store's status agrees with the Sentinels and calls the replication healthy.
replication_healthy() {
    local st now
    st=$(kubectl get oss -n "$NS" "$STORE" -o json | jq -c '.status.redis // {}')
    now=$(sentinel_primary) || return 1
    [[ -n $now && $(jq -r .primary <<<"$st") == "$now" && $(jq -r .healthy <<<"$st") == true ]]
}

# failover_under_load MODE RUN: the primary deleted (graceful or forced) under the load.
failover_under_load() {
    local mode=$1 run=$2 name url primary out sidx t_logout t_kill t_new="" new="" failed refused window bad gone pods
    name=failover-$mode-$run
    step "[$NS] Redis primary deleted ($mode, run $run) under load: <= ${MAX_WINDOW} s of failures, no session lost, a logout just before stays a logout"
    until_ok "$TIMEOUT" "a healthy replication named by the store's status and the Sentinels" replication_healthy
    measure_lock
    url=$(svc_url)
    load_start "$name"
    sleep 5
    # A logout acknowledged just before the kill.
    out=$(loadpy login "$url" 1 "$NS-logout-$name") || true
    sidx=$(jq -r '.sids[0] // empty' <<<"$out")
    [[ -n $sidx ]] || fail "login for the logout check: $out"
    out=$(loadpy logout "$url" --sid="$sidx") || true
    [[ $(jq .status <<<"$out") == 200 ]] || fail "logout before the kill not acknowledged: $out"
    t_logout=$(jq .t <<<"$out")
    primary=$(sentinel_primary) || fail "no Sentinel names a primary"
    pods=$(redis_pods | wc -l)
    t_kill=$(date +%s.%N)
    if [[ $mode == forced ]]; then
        kubectl delete pod -n "$NS" "$primary" --grace-period=0 --force --wait=false >&2
    else
        kubectl delete pod -n "$NS" "$primary" --wait=false >&2
    fi
    log "deleted the primary $primary ($mode), $(awk -v a="$t_kill" -v b="$t_logout" 'BEGIN {printf "%.2f", a - b}') s after the logout was acknowledged"
    # Until the Sentinels name another Pod (the old primary's replacement has its name and
    # address, and must come back as a replica), and all Pods are back and Ready.
    promoted() {
        local p
        p=$(sentinel_primary) || return 1
        [[ -n $p && $p != "$primary" ]] || return 1
        new=$p
    }
    until_ok "$TIMEOUT" "the Sentinels to name a primary after $primary" promoted
    t_new=$(date +%s.%N)
    until_ok "$TIMEOUT" "the Redis pods to be Ready again" redis_pods_ready "$pods"
    sleep 10
    load_stop
    measure_unlock
    failed=$(jq .failed <<<"$LOAD_SUMMARY")
    refused=$(jq .refused <<<"$LOAD_SUMMARY")
    window=$(jq .failure_window_s <<<"$LOAD_SUMMARY")
    bad=$(bad_sessions 200 "$LOAD_SIDS")
    gone=$(bad_sessions 401 "$sidx")
    log "primary $primary -> $new, named $(awk -v a="$t_new" -v b="$t_kill" 'BEGIN {printf "%.1f", a - b}') s after the kill (as polled)"
    record "$name" "$(jq -nc --arg mode "$mode" --arg old "$primary" --arg new "$new" --argjson k "$t_kill" \
        --argjson n "$t_new" --arg bad "$bad" --arg gone "$gone" \
        '{mode: $mode, old_primary: $old, new_primary: $new, killed_at: $k, primary_named_after_s: (($n - $k) * 10 | round / 10),
          sessions_invalid_after: $bad, logout_not_refused: $gone}')"
    require "failed requests within ${MAX_WINDOW} s (window $window s, $failed failed)" \
        awk -v w="$window" -v m="$MAX_WINDOW" 'BEGIN {exit !(w <= m)}'
    require "no session refused during the failover (got $refused 401s)" test "$refused" -eq 0
    require "every load session valid through both pods after the failover${bad:+ (not: $bad)}" test -z "$bad"
    require "the logout acknowledged before the kill is refused through both pods${gone:+ (not: $gone)}" test -z "$gone"
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

    # Redis: 3 Pods with Sentinel (E2E_HA=1) or a single one (the outage case needs it).
    local replicas=""
    if [[ $driver == redis ]]; then
        replicas=1
        [[ $HA == 1 ]] && replicas=3
    fi
    step "[$driver] store${replicas:+ ($replicas Redis pod(s))} and two-replica stand-in"
    apply_namespace
    apply_store "$driver" 3600 "$replicas"
    kubectl wait -n "$NS" "oss/$STORE" --for=condition=Ready --timeout="${TIMEOUT}s" >&2
    # A new Sentinel set needs a few seconds after the Pods are Ready to agree on a primary
    # (seen once: every Sentinel still had the primary flagged down at epoch 0 for 4 s).
    if [[ $driver == redis && $HA == 1 ]]; then
        until_ok "$TIMEOUT" "a healthy replication named by the store's status and the Sentinels" replication_healthy
    fi
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

    if [[ $driver == db ]]; then
        if ((${#HELM[@]})); then
            upgrade_under_load
            step "[$driver] a Pod created after the upgrade gets the sidecar; sessions valid through it"
            mapfile -t pods < <(ready_pods)
            kubectl delete pod -n "$NS" "${pods[0]}" --wait=true --timeout="${TIMEOUT}s" >&2
            until_ok "$TIMEOUT" "a replacement stand-in pod after the upgrade" two_ready
            check_injected 3600 "$driver"
            mapfile -t pods < <(ready_pods)
            a2=${pods[0]:-} b=${pods[1]:-}
            expect_session "$a2" "$sid" "$uid"
            expect_session "$b" "$sid" "$uid"
            upgrade_back
        else
            log "E2E_HELM not set: the chart upgrade case is skipped"
        fi
    fi

    # Before the backend cases: a sidecar connection left broken by a failover can still
    # fail one request later on (reported by those cases), which is not what this measures.
    if [[ $driver == redis ]]; then
        rollout_under_load
        mapfile -t pods < <(ready_pods)
        a2=${pods[0]:-} b=${pods[1]:-}
        [[ -n $a2 && -n $b ]] || fail "expected two ready stand-in pods after the roll, got: ${pods[*]}"
        expect_session "$b" "$sid" "$uid"
        expect_session "$a2" "$sid" "$uid"
    fi

    if [[ $driver == redis && $HA == 1 ]]; then
        local mode run
        for run in $(seq 1 "$FAILOVER_RUNS"); do
            for mode in graceful forced; do
                failover_under_load "$mode" "$run"
            done
        done
        expect_session "$b" "$sid" "$uid"
        expect_session "$a2" "$sid" "$uid"

        step "[$driver] every Redis pod deleted: the stand-in stays Ready and answers, the metrics say down; sessions there after"
        local n_redis
        n_redis=$(redis_pods | wc -l)
        all_redis_back() { redis_pods_ready "$n_redis"; }
        local -a all_redis
        mapfile -t all_redis < <(redis_pods)
        kubectl delete pod -n "$NS" "${all_redis[@]}" --wait=false >&2
        outage_readiness outage-all-redis all_redis_back "$sid"
    else
        step "[$driver] backend pod $backend_pod deleted: the stand-in stays Ready and answers, the metrics say down; sessions there after"
        old_backend_uid=$(kubectl get pod -n "$NS" "$backend_pod" -o jsonpath='{.metadata.uid}')
        kubectl delete pod -n "$NS" "$backend_pod" --wait=false >&2
        backend_back() {
            [[ $(kubectl get pod -n "$NS" "$backend_pod" -o jsonpath='{.metadata.uid}') != "$old_backend_uid" ]] &&
                kubectl wait -n "$NS" "pod/$backend_pod" --for=condition=Ready --timeout=2s >/dev/null 2>&1
        }
        # The sidecars reconnect by themselves; 503 meanwhile is fine, 401 (a lost session) is not.
        outage_readiness "outage-$backend_pod" backend_back "$sid"
    fi
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
    local kinds=(statefulset service secret networkpolicy persistentvolumeclaim)
    [[ $replicas == 3 ]] && kinds+=(poddisruptionbudget)
    for kind in "${kinds[@]}"; do
        grep -q "^$kind" <<<"$before" || fail "expected a $kind owned by the store before deleting it"
    done
    kubectl delete -n "$NS" "oss/$STORE" --wait=true --timeout="${TIMEOUT}s" >&2
    nothing_left() { [[ -z $(owned) ]]; }
    until_ok "$TIMEOUT" "the store's objects to be deleted (left: $(owned | tr '\n' ' '))" nothing_left
    log "nothing left of the store"

    step "[$driver] namespace removed"
    kubectl delete namespace "$NS" --wait=false >&2
}

run_scenario() {
    local t=$SECONDS
    CURRENT=start
    scenario "$1"
    step "[$1] done"
    log "[$1] scenario passed in $((SECONDS - t)) s"
}
step "scenarios ${backends[*]}$([[ $PARALLEL == 1 ]] && echo " (in parallel)"); E2E_HA=$HA E2E_ENFORCE=$ENFORCE E2E_ENFORCE_LATE=$ENFORCE_LATE; load from $LOAD_FROM; results in $RESULTS"
failed=()
if [[ $PARALLEL == 1 ]] && ((${#backends[@]} > 1)); then
    declare -A pids=()
    for driver in "${backends[@]}"; do
        # Each line of a scenario's output carries its name.
        (run_scenario "$driver") > >(sed -u "s/^/[$driver] /" >&2) 2>&1 &
        pids[$driver]=$!
    done
    for driver in "${backends[@]}"; do
        wait "${pids[$driver]}" || failed+=("$driver")
    done
else
    for driver in "${backends[@]}"; do
        (run_scenario "$driver") || failed+=("$driver")
    done
fi
CURRENT=start
step "done"
if [[ -s $RESULTS/measurements.jsonl ]]; then
    log "measurements ($RESULTS/measurements.jsonl):"
    jq -r 'def v(k): if has(k) then .[k] else "-" end;
        [.ns, .case, v("requests"), v("failed"), v("failure_window_s"), v("refused"), v("min_ready_pods"),
         v("min_endpoints"), v("backend_down_seen"), v("back_after_s")] | @tsv' \
        "$RESULTS/measurements.jsonl" |
        awk -F'\t' 'BEGIN {f = "    %-10s %-24s %8s %6s %8s %7s %9s %13s %12s %6s\n"
                printf f, "namespace", "case", "requests", "failed", "window_s", "refused", "min_ready", "min_endpoints", "backend_down", "back_s"}
            {printf f, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10}' >&2
fi
if [[ -s $RESULTS/not-met.txt ]]; then
    log "NOT MET, reported only (E2E_ENFORCE=0 / E2E_ENFORCE_LATE=0):"
    sed 's/^/    /' "$RESULTS/not-met.txt" >&2
fi
((${#failed[@]} == 0)) || fail "scenarios failed: ${failed[*]}"
log "all scenarios passed (${backends[*]}) in $((SECONDS - T0))s"

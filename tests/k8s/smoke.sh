#!/usr/bin/env bash
# Smoke test of the local Kubernetes harness: brings up a node, runs pods from locally
# built images, checks Services (ClusterIP from pods and from the host, DNS names,
# headless names), exec and logs through the API server, PVC-backed persistence, the
# redis and postgres images, then tears everything down and checks nothing is left.
#
#   tests/k8s/smoke.sh [--keep]     --keep leaves the cluster running at the end
#
# If a cluster was already running, the smoke test reuses it and leaves it running.
set -euo pipefail
export LOG_TAG=smoke
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KEEP=false
[[ ${1:-} == --keep ]] && KEEP=true
NS=odoo-ha-smoke
CLUSTER=$K8S_DIR/cluster.sh
FAILED=0
T0=$SECONDS

fail() {
    log "FAIL: $*"
    FAILED=1
}
pass() { log "ok: $*"; }

k() { kubectl_admin -n "$NS" "$@"; }

# check DESCRIPTION EXPECTED_SUBSTRING COMMAND...: COMMAND's output must contain it.
check() {
    local what=$1 want=$2 out
    shift 2
    if out=$("$@" 2>&1) && [[ $out == *"$want"* ]]; then
        pass "$what"
    else
        fail "$what: wanted '$want', got: $(head -c 600 <<<"$out")"
    fi
}

# retry SECONDS COMMAND...: for things that settle (DNS refresh, kube-proxy rules).
retry() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
}

on_exit() {
    local rc=$?
    if ((rc != 0 || FAILED)); then
        log "smoke test failed; pods and events:"
        kubectl_admin get pods -A -o wide >&2 2>/dev/null || true
        kubectl_admin -n "$NS" get events --sort-by=.lastTimestamp >&2 2>/dev/null | tail -n 20 || true
        "$CLUSTER" logs "" 15 >&2 2>/dev/null || true
    fi
    if [[ $STARTED == true && $KEEP == false ]]; then
        "$CLUSTER" down || true
    fi
}

require_root
STARTED=true
if [[ -f $KUBECONFIG_ADMIN ]] && kubectl_admin get node "$NODE_NAME" >/dev/null 2>&1; then
    STARTED=false
    log "reusing the running cluster"
fi
trap on_exit EXIT

t=$SECONDS
"$CLUSTER" up node
UP_SECONDS=$((SECONDS - t))

# A test image from a dynamically linked binary: exercises image.sh's ldd path.
"$K8S_DIR/image.sh" odoo-ha-smoke:1 --binary /bin/busybox
for preset in busybox:busybox_odoo-ha redis:redis_7 postgres:postgres_15; do
    [[ -f $IMAGE_CACHE/${preset#*:}.oci.tar ]] || "$K8S_DIR/image.sh" --preset "${preset%%:*}"
done

kubectl_admin delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
kubectl_admin create namespace "$NS" >/dev/null
wait_for 30 "default ServiceAccount in $NS" k get serviceaccount default

k apply -f - >/dev/null <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      securityContext: {runAsNonRoot: true}
      containers:
      - name: web
        image: localhost/odoo-ha-smoke:1
        imagePullPolicy: Never
        args:
        - sh
        - -c
        - busybox mkdir -p /tmp/www && echo "hello from $(busybox hostname)" > /tmp/www/index.html && exec busybox httpd -f -p 8080 -h /tmp/www
        ports:
        - containerPort: 8080
        readinessProbe:
          httpGet: {path: /index.html, port: 8080}
          periodSeconds: 1
        securityContext:
          readOnlyRootFilesystem: true
          allowPrivilegeEscalation: false
          capabilities: {drop: [ALL]}
        volumeMounts:
        - {name: tmp, mountPath: /tmp}
      volumes:
      - {name: tmp, emptyDir: {}}
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - {port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata:
  name: web-headless
spec:
  clusterIP: None
  selector: {app: web}
  ports:
  - {port: 8080}
---
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  securityContext: {runAsNonRoot: true}
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: localhost/busybox:odoo-ha
    imagePullPolicy: Never
    command: [sleep, "3600"]
EOF

if k rollout status deployment/web --timeout=90s >/dev/null &&
    k wait --for=condition=Ready pod/client --timeout=60s >/dev/null; then
    pass "Deployment (2 replicas) and client pod ready"
else
    fail "pods did not become ready"
    exit 1
fi

CLUSTER_IP=$(k get svc web -o jsonpath='{.spec.clusterIP}')
FQDN=web.$NS.svc.$CLUSTER_DOMAIN
mapfile -t POD_IPS < <(k get pods -l app=web -o jsonpath='{range .items[*]}{.status.podIP}{"\n"}{end}')

# Host side: the path the API server uses to call webhook Services.
check "host -> ClusterIP $CLUSTER_IP:80" "hello from web-" \
    retry 20 curl -fsS --max-time 3 "http://$CLUSTER_IP/"
check "host -> kubernetes Service $API_SERVICE_IP:443 (TLS verified, SAN)" '"gitVersion": "v1.20.2"' \
    curl -fsS --max-time 5 --cacert "$STATE/pki/ca.crt" \
    -H "Authorization: Bearer $(awk -F, '$2 == "odoo-ha-admin" {print $1}' "$STATE/pki/tokens.csv")" \
    "https://$API_SERVICE_IP/version"
check "host DNS $FQDN" "$CLUSTER_IP" \
    retry 20 busybox nslookup "$FQDN" "$NODE_IP"

# Pod side, through exec (API server -> kubelet -> containerd).
check "pod -> Service by short name (search domains)" "hello from web-" \
    retry 20 k exec client -- timeout 5 wget -qO- http://web/
check "pod -> Service by FQDN" "hello from web-" \
    retry 20 k exec client -- timeout 5 wget -qO- "http://$FQDN/"
headless_ok() {
    local out ip
    out=$(k exec client -- nslookup "web-headless.$NS.svc.$CLUSTER_DOMAIN" 2>&1) || return 1
    for ip in "${POD_IPS[@]}"; do
        [[ $out == *"$ip"* ]] || return 1
    done
}
if retry 20 headless_ok; then
    pass "headless Service resolves to both pod IPs (${POD_IPS[*]})"
else
    fail "headless Service does not resolve to ${POD_IPS[*]}"
fi
# shellcheck disable=SC2016 # expanded inside the pod
check "pod -> kubernetes Service (in-cluster API endpoint)" '"gitVersion": "v1.20.2"' \
    k exec client -- sh -c 'timeout 5 wget -qO- --no-check-certificate \
        --header "Authorization: Bearer $(cat /var/run/secrets/kubernetes.io/serviceaccount/token)" \
        https://kubernetes.default.svc/version'
check "pod egress beyond the bridge is dropped" "ODOOHA-ISOLATE" iptables -w -S FORWARD
check "exec into a Deployment's pod" "hello" \
    k exec deploy/web -- busybox cat /tmp/www/index.html
check "container runs as the image's non-root user" "uid=65532" \
    k exec client -- id
check "a missing image is not pulled from a registry" "ErrImagePull" \
    retry 30 bash -c "kubectl --kubeconfig '$KUBECONFIG_ADMIN' -n $NS run nopull --image=docker.io/library/not-here:1 \
        --image-pull-policy=IfNotPresent --restart=Never >/dev/null 2>&1; \
        kubectl --kubeconfig '$KUBECONFIG_ADMIN' -n $NS get pod nopull -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}' | grep -E 'ErrImagePull|ImagePullBackOff' && \
        kubectl --kubeconfig '$KUBECONFIG_ADMIN' -n $NS get events --field-selector involvedObject.name=nopull -o jsonpath='{.items[*].message}' | grep -q 127.0.0.1:9 && echo ErrImagePull"

# A PVC-backed pod writes, a second pod on the same claim reads it back.
k apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata:
  name: writer
spec:
  restartPolicy: Never
  securityContext: {runAsUser: 65532, runAsNonRoot: true}
  containers:
  - name: writer
    image: localhost/busybox:odoo-ha
    imagePullPolicy: Never
    command: [sh, -c, 'echo persisted-$(date +%s) > /data/marker && cat /data/marker']
    volumeMounts:
    - {name: data, mountPath: /data}
  volumes:
  - {name: data, persistentVolumeClaim: {claimName: data}}
EOF
if k wait --for=jsonpath='{.status.phase}'=Succeeded pod/writer --timeout=60s >/dev/null 2>&1 ||
    [[ $(k get pod writer -o jsonpath='{.status.phase}') == Succeeded ]]; then
    MARK=$(k logs writer)
    k apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: reader
spec:
  restartPolicy: Never
  securityContext: {runAsUser: 1000, runAsNonRoot: true}
  containers:
  - name: reader
    image: localhost/busybox:odoo-ha
    imagePullPolicy: Never
    command: [cat, /data/marker]
    volumeMounts:
    - {name: data, mountPath: /data, readOnly: true}
  volumes:
  - {name: data, persistentVolumeClaim: {claimName: data}}
EOF
    retry 60 bash -c "[[ \$(kubectl --kubeconfig '$KUBECONFIG_ADMIN' -n $NS get pod reader -o jsonpath='{.status.phase}') == Succeeded ]]" || true
    check "PVC data persists across pods (class local, hostPath)" "$MARK" k logs reader
else
    fail "PVC writer pod did not succeed: $(k get pvc data -o jsonpath='{.status.phase}')"
fi

# The images the operator's managed backends use, with upstream-style command lines.
k apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: redis
  labels: {app: redis}
spec:
  securityContext: {runAsNonRoot: true, runAsUser: 999}
  containers:
  - name: redis
    image: localhost/redis:7
    imagePullPolicy: Never
    args: [redis-server, --appendonly, "yes", --requirepass, smoke-secret]
    securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
    volumeMounts:
    - {name: data, mountPath: /data}
  volumes:
  - {name: data, emptyDir: {}}
---
apiVersion: v1
kind: Service
metadata:
  name: redis
spec:
  selector: {app: redis}
  ports:
  - {port: 6379}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: pgdata
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata:
  name: postgres
  labels: {app: postgres}
spec:
  securityContext: {runAsNonRoot: true, runAsUser: 999}
  containers:
  - name: postgres
    image: localhost/postgres:15
    imagePullPolicy: Never
    env:
    - {name: POSTGRES_PASSWORD, value: smoke-pg}
    - {name: POSTGRES_USER, value: odoo}
    - {name: POSTGRES_DB, value: sessions}
    - {name: PGDATA, value: /var/lib/postgresql/data/pgdata}
    securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
    readinessProbe:
      exec: {command: [pg_isready, -h, 127.0.0.1, -U, odoo, -d, sessions]}
      periodSeconds: 2
    volumeMounts:
    - {name: data, mountPath: /var/lib/postgresql/data}
    - {name: run, mountPath: /var/run/postgresql}
  volumes:
  - {name: data, persistentVolumeClaim: {claimName: pgdata}}
  - {name: run, emptyDir: {}}
---
apiVersion: v1
kind: Service
metadata:
  name: postgres
spec:
  selector: {app: postgres}
  ports:
  - {port: 5432}
EOF
if k wait --for=condition=Ready pod/redis pod/postgres --timeout=90s >/dev/null; then
    pass "redis and postgres pods ready"
    check "redis: AUTH required" "NOAUTH" \
        k exec redis -- redis-cli -h "redis.$NS.svc.$CLUSTER_DOMAIN" ping
    check "redis: PING through the Service with the password" "PONG" \
        retry 20 k exec redis -- redis-cli -h redis --no-auth-warning -a smoke-secret ping
    check "postgres: password login over TCP through the Service" "sessions" \
        retry 20 k exec postgres -- sh -c 'PGPASSWORD=smoke-pg psql -h postgres -U odoo -d sessions -Atc "select current_database()"'
    check "postgres: wrong password refused" "password authentication failed" \
        k exec postgres -- sh -c 'PGPASSWORD=wrong psql -h postgres -U odoo -d sessions -Atc "select 1" 2>&1; true'
else
    fail "redis/postgres pods not ready"
fi
k run pg-nopass --image=localhost/postgres:15 --image-pull-policy=Never --restart=Never >/dev/null
check "postgres without POSTGRES_PASSWORD stops with a clear error" "POSTGRES_PASSWORD is not set" \
    retry 30 k logs pg-nopass

kubectl_admin delete namespace "$NS" --wait=false >/dev/null
log "up + checks took $((SECONDS - T0))s (up node: ${UP_SECONDS}s)"

if [[ $STARTED == true && $KEEP == false ]]; then
    STARTED=false
    "$CLUSTER" down
    # down must leave nothing behind, or the next `up` would trip over it.
    ! ip link show "$BRIDGE" >/dev/null 2>&1 || fail "bridge $BRIDGE still exists"
    ! iptables -w -t nat -S 2>/dev/null | grep -qE 'KUBE-|CNI-' || fail "KUBE-/CNI- nat rules remain"
    ! iptables -w -S 2>/dev/null | grep -qE 'KUBE-|ODOOHA-' || fail "KUBE-/ODOOHA- filter rules remain"
    ! findmnt -rn -o TARGET | grep -qF "$STATE/" || fail "mounts under $STATE remain"
    [[ ! -e $STATE ]] || fail "$STATE still exists"
    ! curl -ks --max-time 1 "https://127.0.0.1:$API_PORT/" >/dev/null || fail "API server still answers"
    ((FAILED)) || pass "down left no bridge, rules, mounts or listeners"
fi

if ((FAILED)); then
    log "SMOKE TEST FAILED"
    exit 1
fi
log "SMOKE TEST PASSED in $((SECONDS - T0))s"

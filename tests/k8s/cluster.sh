#!/usr/bin/env bash
# A real single-node Kubernetes 1.20.2 for the project's tests, with no Docker engine.
#
#   cluster.sh up api      etcd + kube-apiserver + kube-controller-manager + kube-scheduler
#                          (CRDs, RBAC, webhooks, Deployments -> Pods; no node runs them)
#   cluster.sh up [node]   all of that + containerd, kubelet, kube-proxy, service DNS and
#                          hostPath volumes: pods run
#   cluster.sh down        stops everything, cleans mounts, iptables, the bridge and state
#   cluster.sh status      what runs
#   cluster.sh logs [COMPONENT] [LINES]   tails of the component logs
#   cluster.sh pv NAME SIZE              an extra hostPath PersistentVolume (class local)
#   cluster.sh env         prints `export KUBECONFIG=...`
#
# State: ${ODOO_HA_K8S_STATE:-/tmp/odoo-ha-k8s}; admin kubeconfig: $STATE/kubeconfig.
# Binaries: tests/k8s/build-kubernetes.sh (cached under /var/cache/odoo-ha-session).
set -euo pipefail
export LOG_TAG=cluster
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PKI=$STATE/pki
RUN=$STATE/run
LOGS=$STATE/logs
ADMIN_KUBECONFIG=$KUBECONFIG_ADMIN
export PATH=$K8S_BIN:$PATH

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

# --- processes ---------------------------------------------------------------------

pid_of() {
    local f=$RUN/$1.pid pid
    [[ -f $f ]] || return 1
    pid=$(<"$f")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
    printf '%s' "$pid"
}

running() { pid_of "$1" >/dev/null; }

# start NAME COMMAND...: runs COMMAND in its own session, logs to $LOGS/NAME.log.
start() {
    local name=$1
    shift
    if running "$name"; then
        return 0
    fi
    mkdir -p "$RUN" "$LOGS"
    # fd 8 is the harness lock: daemons must not inherit it or `down` would wait forever.
    setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 8>&- &
    echo $! >"$RUN/$name.pid"
    log "started $name (pid $!)"
}

# stop NAME...: TERM to all, then KILL what is left after 10 s (they stop in parallel).
stop() {
    local name pid i t0=$SECONDS
    local -A pids=()
    for name; do
        if pid=$(pid_of "$name"); then
            pids[$name]=$pid
            kill -TERM "$pid" 2>/dev/null || true
        fi
        rm -f "$RUN/$name.pid"
    done
    ((${#pids[@]})) || return 0
    for ((i = 0; i < 100; i++)); do
        for name in "${!pids[@]}"; do
            # A zombie is dead too (whoever adopted it may reap it late).
            if ! kill -0 "${pids[$name]}" 2>/dev/null ||
                [[ $(awk '{print $3}' "/proc/${pids[$name]}/stat" 2>/dev/null) == Z ]]; then
                unset "pids[$name]"
            fi
        done
        ((${#pids[@]})) || break
        sleep 0.1
    done
    for name in "${!pids[@]}"; do
        log "$name ignored TERM; killing it"
        kill -KILL "${pids[$name]}" 2>/dev/null || true
    done
    log "stopped $* ($((SECONDS - t0))s)"
}

# wait_up SECONDS NAME COMMAND...: waits for NAME to answer, or exits with its log tail.
wait_up() {
    local timeout=$1 name=$2 t0=$SECONDS
    shift 2
    if wait_for "$timeout" "$name" "$@"; then
        log "$name ready (+$((SECONDS - t0))s)"
        return 0
    fi
    log "$name is not ready; last lines of $LOGS/$name.log:"
    tail -n 30 "$LOGS/$name.log" >&2 || true
    exit 1
}

# Fails fast with the log tail when a component died during start-up.
check_alive() {
    local name
    for name; do
        running "$name" || {
            log "$name exited; last lines of $LOGS/$name.log:"
            tail -n 30 "$LOGS/$name.log" >&2 || true
            exit 1
        }
    done
}

# --- certificates, tokens, kubeconfigs ---------------------------------------------

gen_pki() {
    [[ -f $PKI/.complete ]] && return 0
    log "generating certificates and tokens in $PKI"
    rm -rf "$PKI"
    mkdir -p "$PKI"
    chmod 0700 "$PKI"
    (
        cd "$PKI"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
            -subj "/CN=odoo-ha-session-test-ca" 2>/dev/null
        sign() { # sign NAME SUBJECT EXTENSIONS
            openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
            printf '%b' "$3" >"$1.ext"
            openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
                -out "$1.crt" -days 3650 -extfile "$1.ext" 2>/dev/null
            rm -f "$1.csr" "$1.ext"
        }
        local san="DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
        san+=",DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,IP:127.0.0.1,IP:$API_SERVICE_IP,IP:$NODE_IP"
        sign apiserver "/CN=kube-apiserver" \
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=$san\n"
        # The API server's identity towards kubelets (exec, logs, port-forward).
        sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" \
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
        tok() { openssl rand -hex 24; }
        {
            echo "$(tok),odoo-ha-admin,odoo-ha-admin,\"system:masters\""
            echo "$(tok),system:kube-controller-manager,system:kube-controller-manager"
            echo "$(tok),system:kube-scheduler,system:kube-scheduler"
            echo "$(tok),system:node:$NODE_NAME,system:node:$NODE_NAME,\"system:nodes\""
            echo "$(tok),system:kube-proxy,system:kube-proxy"
        } >tokens.csv
        chmod 0600 ./*.key tokens.csv
    )
    touch "$PKI/.complete"
}

token_of() {
    awk -F, -v u="$1" '$2 == u {print $1}' "$PKI/tokens.csv"
}

write_kubeconfig() { # write_kubeconfig FILE USER
    local file=$1 user=$2 token
    token=$(token_of "$user")
    [[ -n $token ]] || die "no token for $user"
    umask 077
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: odoo-ha
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $user
  user:
    token: $token
contexts:
- name: odoo-ha
  context:
    cluster: odoo-ha
    user: $user
current-context: odoo-ha
EOF
    umask 022
}

gen_kubeconfigs() {
    mkdir -p "$STATE/kubeconfigs"
    write_kubeconfig "$ADMIN_KUBECONFIG" odoo-ha-admin
    write_kubeconfig "$STATE/kubeconfigs/controller-manager" system:kube-controller-manager
    write_kubeconfig "$STATE/kubeconfigs/scheduler" system:kube-scheduler
    write_kubeconfig "$STATE/kubeconfigs/kubelet" "system:node:$NODE_NAME"
    write_kubeconfig "$STATE/kubeconfigs/kube-proxy" system:kube-proxy
}

# --- control plane -----------------------------------------------------------------

api_ready() {
    curl -fsS --max-time 2 --cacert "$PKI/ca.crt" \
        -H "Authorization: Bearer $(token_of odoo-ha-admin)" \
        "https://127.0.0.1:$API_PORT/readyz" >/dev/null
}

https_healthz() { # component self-signed serving certs: only liveness is asked here
    curl -fsSk --max-time 2 "https://127.0.0.1:$1/healthz" >/dev/null
}

up_api() {
    mkdir -p "$ETCD_DATA" "$LOGS" "$RUN"
    chmod 0700 "$ETCD_DATA"
    gen_pki
    gen_kubeconfigs

    start etcd etcd --name odoo-ha --data-dir "$ETCD_DATA" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "odoo-ha=http://127.0.0.1:$ETCD_PEER_PORT" \
        --quota-backend-bytes 2147483648
    wait_up 30 etcd curl -fsS --max-time 1 "http://127.0.0.1:$ETCD_PORT/health"

    # --endpoint-reconciler-type=none: the API server listens on loopback, which cannot
    # be the kubernetes Service's endpoint; `up node` publishes a bridge address instead.
    start kube-apiserver kube-apiserver \
        --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
        --bind-address 127.0.0.1 --secure-port "$API_PORT" --insecure-port 0 \
        --advertise-address "$NODE_IP" \
        --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
        --client-ca-file "$PKI/ca.crt" \
        --token-auth-file "$PKI/tokens.csv" --anonymous-auth=false \
        --authorization-mode Node,RBAC \
        --enable-admission-plugins NodeRestriction \
        --service-account-key-file "$PKI/sa.pub" \
        --service-account-signing-key-file "$PKI/sa.key" \
        --service-account-issuer "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
        --api-audiences "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
        --service-cluster-ip-range "$SERVICE_CIDR" \
        --endpoint-reconciler-type none \
        --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
        --kubelet-preferred-address-types InternalIP,Hostname \
        --allow-privileged=false --profiling=false
    wait_up 90 kube-apiserver api_ready

    start kube-controller-manager kube-controller-manager \
        --kubeconfig "$STATE/kubeconfigs/controller-manager" \
        --authentication-kubeconfig "$STATE/kubeconfigs/controller-manager" \
        --authorization-kubeconfig "$STATE/kubeconfigs/controller-manager" \
        --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --port 0 \
        --leader-elect=false --use-service-account-credentials \
        --controllers '*,bootstrapsigner,tokencleaner' \
        --service-account-private-key-file "$PKI/sa.key" \
        --root-ca-file "$PKI/ca.crt" \
        --service-cluster-ip-range "$SERVICE_CIDR" \
        --allocate-node-cidrs=false --cluster-name odoo-ha --profiling=false
    start kube-scheduler kube-scheduler \
        --kubeconfig "$STATE/kubeconfigs/scheduler" \
        --authentication-kubeconfig "$STATE/kubeconfigs/scheduler" \
        --authorization-kubeconfig "$STATE/kubeconfigs/scheduler" \
        --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --port 0 \
        --leader-elect=false --profiling=false
    wait_up 60 kube-controller-manager https_healthz "$KCM_PORT"
    wait_up 60 kube-scheduler https_healthz "$SCHED_PORT"
    # Pods cannot be created before their namespace's default ServiceAccount exists.
    wait_up 60 kube-controller-manager kubectl_admin -n default get serviceaccount default
    check_alive etcd kube-apiserver kube-controller-manager kube-scheduler
}

# --- node --------------------------------------------------------------------------

setup_network() {
    mkdir -p "$STATE/net"
    [[ -f $STATE/net/ip_forward.orig ]] || cat /proc/sys/net/ipv4/ip_forward >"$STATE/net/ip_forward.orig"
    echo 1 >/proc/sys/net/ipv4/ip_forward
    # kube-proxy's DNAT must see pod-to-pod traffic crossing the bridge.
    [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] || modprobe br_netfilter 2>/dev/null ||
        die "br_netfilter is not available in this kernel"
    echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables

    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
    fi
    ip addr replace "$NODE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    # Service IPs stay on the bridge: with no route they would follow the default
    # route out of the machine whenever kube-proxy has no rule for them.
    ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP"

    # Pods talk to each other, to Services and to the host; never to the outside.
    iptables -w -N ODOOHA-ISOLATE 2>/dev/null || true
    iptables -w -F ODOOHA-ISOLATE
    iptables -w -A ODOOHA-ISOLATE -i "$BRIDGE" -o "$BRIDGE" -j RETURN
    iptables -w -A ODOOHA-ISOLATE -i "$BRIDGE" -j DROP
    iptables -w -A ODOOHA-ISOLATE -o "$BRIDGE" -j DROP
    iptables -w -C FORWARD -j ODOOHA-ISOLATE 2>/dev/null || iptables -w -I FORWARD 1 -j ODOOHA-ISOLATE

    mkdir -p "$STATE/cni/net.d" "$STATE/cni/ipam"
    cat >"$STATE/cni/net.d/10-odooha.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "odooha",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$STATE/cni/ipam"
      }
    }
  ]
}
EOF
}

start_containerd() {
    local runc
    runc=$(command -v runc) || die "runc is missing"
    mkdir -p "$STATE/containerd" "$STATE/bin"
    # The sandbox this runs in lacks CAP_SYS_RESOURCE, so runc cannot apply the negative
    # oom_score_adj kubelet asks for (-998 for sandboxes): container creation then fails
    # with "can't get final child's PID from pipe: EOF". Clamp it to 0 in the bundle.
    cat >"$STATE/bin/runc-wrapper" <<EOF
#!/bin/bash
set -euo pipefail
bundle=""
prev=""
for arg in "\$@"; do
    case \$arg in
    --bundle=*) bundle=\${arg#--bundle=} ;;
    *) [[ \$prev == --bundle || \$prev == -b ]] && bundle=\$arg ;;
    esac
    prev=\$arg
done
if [[ -n \$bundle && -f \$bundle/config.json ]] &&
    jq -e '(.process.oomScoreAdj // 0) < 0' "\$bundle/config.json" >/dev/null; then
    jq '.process.oomScoreAdj = 0' "\$bundle/config.json" >"\$bundle/config.json.clamped"
    mv "\$bundle/config.json.clamped" "\$bundle/config.json"
fi
exec $runc "\$@"
EOF
    chmod 0755 "$STATE/bin/runc-wrapper"
    cat >"$STATE/containerd/config.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$STATE/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$STATE/bin/runc-wrapper"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
EOF
    # Images come from local archives only. Should a pod name an image that is not
    # there, the pull goes to a proxy that does not exist and fails at once, instead of
    # reaching a public registry.
    start containerd env HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 \
        NO_PROXY= containerd --config "$STATE/containerd/config.toml"
    wait_up 30 containerd containerd_up
}

# Imports the cached image archives in the background (postgres alone is 40 MB to
# unpack); up_node waits for it before it reports the cluster up.
IMPORT_PID=""
load_images() {
    local preset
    # What the e2e suites need; built once into the cache (ODOO_HA_K8S_PRESETS to choose).
    for preset in pause:pause_3.2 ${ODOO_HA_K8S_PRESETS-busybox:busybox_odoo-ha redis:redis_7 postgres:postgres_15}; do
        [[ -f $IMAGE_CACHE/${preset#*:}.oci.tar ]] || "$K8S_DIR/image.sh" --preset "${preset%%:*}"
    done
    "$K8S_DIR/image.sh" --import-cached 8>&- &
    IMPORT_PID=$!
}

dns_listening() {
    ss -Hlun "sport = :53" | grep -qF "$NODE_IP:53"
}

start_dns() {
    mkdir -p "$STATE/dns"
    chmod 0755 "$STATE" "$STATE/dns"
    touch "$STATE/dns/hosts"
    chmod 0644 "$STATE/dns/hosts"
    # Pods get only the cluster's search domains, not the host's.
    printf 'nameserver %s\noptions ndots:5\n' "$NODE_IP" >"$STATE/dns/pod-resolv.conf"
    # No upstream: names outside cluster.local are refused, so nothing leaves the machine.
    start dnsmasq dnsmasq --keep-in-foreground --log-facility=- \
        --no-resolv --no-hosts --no-poll --bind-interfaces --listen-address="$NODE_IP" \
        --interface="$BRIDGE" --except-interface=lo --port=53 \
        --addn-hosts="$STATE/dns/hosts" --local="/$CLUSTER_DOMAIN/" --domain-needed \
        --pid-file= --user=nobody --group=nogroup
    wait_up 10 dnsmasq dns_listening
}

# Pods reach the API server through the kubernetes Service (10.204.0.1:443). Its endpoint
# must be a non-loopback address, while the API server itself only listens on loopback:
# a forwarder on the bridge address, reachable from pods and the host only.
start_api_forwarder() {
    start api-forwarder socat "TCP-LISTEN:$API_PORT,bind=$NODE_IP,reuseaddr,fork" \
        "TCP:127.0.0.1:$API_PORT"
    kubectl_admin apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Endpoints
metadata:
  name: kubernetes
  namespace: default
subsets:
- addresses:
  - ip: $NODE_IP
  ports:
  - name: https
    port: $API_PORT
    protocol: TCP
EOF
}

start_kubelet() {
    mkdir -p "$STATE/kubelet/pki" "$VOLUMES"
    cat >"$STATE/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
cgroupDriver: cgroupfs
failSwapOn: false
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: Webhook
clusterDNS:
- $NODE_IP
clusterDomain: $CLUSTER_DOMAIN
resolvConf: $STATE/dns/pod-resolv.conf
podCIDR: $POD_CIDR
maxPods: 110
# Reported Ready within ~2 s of registering instead of the default 10 s.
nodeStatusUpdateFrequency: 2s
serializeImagePulls: false
# Images come from local archives and cannot be pulled again: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
EOF
    # kubelet 1.20 links the AWS image-credential provider even with `providerless`; its
    # credential chain would ask the EC2 metadata address (169.254.169.254). Forbid it.
    start kubelet env AWS_EC2_METADATA_DISABLED=true kubelet \
        --config "$STATE/kubelet/config.yaml" \
        --kubeconfig "$STATE/kubeconfigs/kubelet" \
        --root-dir "$STATE/kubelet/root" --cert-dir "$STATE/kubelet/pki" \
        --container-runtime remote \
        --container-runtime-endpoint "unix://$CONTAINERD_SOCK" \
        --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
        --volume-plugin-dir "$STATE/kubelet/volume-plugins"
    local t0=$SECONDS
    if wait_for 120 "node $NODE_NAME Ready" node_ready; then
        log "node $NODE_NAME Ready (+$((SECONDS - t0))s)"
    else
        check_alive kubelet
        log "kubelet runs but the node is not Ready:"
        kubectl_admin get node -o wide >&2 || true
        tail -n 30 "$LOGS/kubelet.log" >&2
        exit 1
    fi
}

node_ready() {
    [[ $(kubectl_admin get node "$NODE_NAME" \
        -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

start_kube_proxy() {
    start kube-proxy kube-proxy \
        --kubeconfig "$STATE/kubeconfigs/kube-proxy" \
        --proxy-mode iptables --cluster-cidr "$POD_CIDR" \
        --hostname-override "$NODE_NAME" \
        --healthz-bind-address "127.0.0.1:$PROXY_HEALTHZ_PORT" \
        --metrics-bind-address "127.0.0.1:$PROXY_METRICS_PORT" \
        --nodeport-addresses "$POD_CIDR" \
        --conntrack-max-per-core 0 \
        --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0
    wait_up 60 kube-proxy curl -fsS --max-time 1 "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz"
}

apply_storage_class() {
    kubectl_admin apply -f - >/dev/null <<'EOF'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: local
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/no-provisioner
reclaimPolicy: Retain
volumeBindingMode: Immediate
EOF
}

# --- the refresher: service DNS and hostPath volumes ------------------------------

# dns_hosts ALL_JSON: the dnsmasq hosts file for the Services and Endpoints in ALL_JSON.
# ClusterIP Services resolve to their IP; headless ones to their ready pods, and each
# pod with a hostname (StatefulSets) also as <hostname>.<service>.
dns_hosts() {
    jq -r --arg d "$CLUSTER_DOMAIN" '
      def fq($n; $ns): "\($n).\($ns).svc.\($d)";
      [.items[] | select(.kind == "Service")] as $svcs
      | [.items[] | select(.kind == "Endpoints")] as $eps
      | ($svcs | map(select(.spec.clusterIP == "None")
                     | "\(.metadata.namespace)/\(.metadata.name)")) as $headless
      | ($svcs[]
          | select((.spec.clusterIP // "") != "" and .spec.clusterIP != "None")
          | "\(.spec.clusterIP) \(fq(.metadata.name; .metadata.namespace))"),
        ($eps[]
          | select("\(.metadata.namespace)/\(.metadata.name)" as $k | $headless | index($k))
          | . as $e | fq($e.metadata.name; $e.metadata.namespace) as $svcname
          | (.subsets // [])[] | (.addresses // [])[]
          | "\(.ip) \($svcname)" + (if .hostname then " \(.hostname).\($svcname)" else "" end))' \
        "$1" | sort
}

# Pending claims of class local get a hostPath volume bound to them at once; volumes
# made this way are deleted (data included) when their claim goes away.
provision_volumes() { # provision_volumes ALL_JSON
    local all=$1 ns name uid size modes pv
    while IFS=$'\t' read -r ns name uid size modes; do
        [[ -n $uid ]] || continue
        pv=pvc-$uid
        mkdir -p "$VOLUMES/$pv"
        # Pods run as arbitrary non-root users and fsGroup does not apply to hostPath.
        chmod 0777 "$VOLUMES/$pv"
        kubectl_admin create -f - >/dev/null 2>&1 <<EOF || true
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $pv
  labels:
    odoo-ha.io/hostpath-provisioned: "true"
  annotations:
    pv.kubernetes.io/provisioned-by: odoo-ha-harness
spec:
  capacity:
    storage: $size
  accessModes: $(jq -cn --arg m "$modes" '$m | split(",")')
  persistentVolumeReclaimPolicy: Retain
  storageClassName: local
  volumeMode: Filesystem
  claimRef:
    namespace: $ns
    name: $name
    uid: $uid
  hostPath:
    path: $VOLUMES/$pv
    type: Directory
EOF
    done < <(jq -r '.items[] | select(.kind == "PersistentVolumeClaim")
        | select(.status.phase == "Pending" and (.spec.volumeName // "") == ""
                 and (.spec.storageClassName // "") == "local"
                 and (.spec.volumeMode // "Filesystem") == "Filesystem")
        | [.metadata.namespace, .metadata.name, .metadata.uid,
           .spec.resources.requests.storage, (.spec.accessModes | join(","))] | @tsv' "$all")
    while read -r pv; do
        [[ -n $pv ]] || continue
        kubectl_admin delete pv "$pv" --wait=false >/dev/null 2>&1 || true
        rm -rf "${VOLUMES:?}/$pv"
    done < <(jq -r '.items[] | select(.kind == "PersistentVolume")
        | select(.metadata.labels["odoo-ha.io/hostpath-provisioned"] == "true"
                 and .status.phase == "Released") | .metadata.name' "$all")
}

refresher() {
    local tmp pid
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    while :; do
        if ! kubectl_admin get services,endpoints,persistentvolumeclaims,persistentvolumes \
            -A -o json >"$tmp/all.json" 2>"$tmp/err"; then
            echo "$(date -Is) listing failed: $(head -c 300 "$tmp/err")"
            sleep 2
            continue
        fi
        if dns_hosts "$tmp/all.json" >"$tmp/hosts" 2>"$tmp/err"; then
            if ! cmp -s "$tmp/hosts" "$STATE/dns/hosts"; then
                install -m 0644 "$tmp/hosts" "$STATE/dns/hosts.new"
                mv "$STATE/dns/hosts.new" "$STATE/dns/hosts"
                pid=$(pid_of dnsmasq) && kill -HUP "$pid"
                echo "$(date -Is) dns: $(wc -l <"$tmp/hosts") names"
            fi
        else
            echo "$(date -Is) dns refresh failed: $(head -c 300 "$tmp/err")"
        fi
        provision_volumes "$tmp/all.json" || echo "$(date -Is) volume provisioning failed"
        sleep "${ODOO_HA_K8S_REFRESH_SECONDS:-1}"
    done
}

NODE_OWNER=/run/odoo-ha-k8s-node.owner

# One node per machine (fixed bridge, addresses, kubelet port).
claim_node() {
    local owner
    if [[ -f $NODE_OWNER ]]; then
        owner=$(<"$NODE_OWNER")
        if [[ $owner != "$STATE" && -d $owner ]]; then
            die "the node part is held by the cluster in $owner (ODOO_HA_K8S_STATE=$owner tests/k8s/cluster.sh down)"
        fi
    fi
    echo "$STATE" >"$NODE_OWNER"
}

up_node() {
    [[ -d /sys/fs/cgroup ]] || die "no cgroup filesystem"
    setup_network
    start_containerd
    load_images
    start_dns
    start_api_forwarder
    start_kubelet
    start_kube_proxy
    start refresher "$K8S_DIR/cluster.sh" _refresher
    apply_storage_class
    wait_up 30 refresher busybox nslookup "kubernetes.default.svc.$CLUSTER_DOMAIN" "$NODE_IP"
    wait "$IMPORT_PID" || die "importing the cached images failed"
    check_alive containerd dnsmasq api-forwarder kubelet kube-proxy refresher
}

cmd_up() {
    local mode=${1:-node} t0=$SECONDS
    [[ $mode == api || $mode == node ]] || die "up api|node, not '$mode'"
    require_root
    command -v kubectl >/dev/null || die "kubectl is required (any version >= 1.20)"
    ensure_packages
    "$K8S_DIR/build-kubernetes.sh"
    mkdir -p "$STATE"
    exec 8>"$STATE/.lock"
    flock 8
    if [[ $mode == node ]]; then
        claim_node
    fi
    up_api
    if [[ $mode == node ]]; then
        up_node
    fi
    echo "$mode" >"$STATE/mode"
    log "cluster ($mode) is up in $((SECONDS - t0))s; export KUBECONFIG=$ADMIN_KUBECONFIG"
}

# --- down --------------------------------------------------------------------------

# Deletes the rules and chains of kube-proxy, kubelet, CNI and the harness, everywhere.
clean_iptables() {
    local table chain rule
    command -v iptables >/dev/null || return 0
    for table in filter nat mangle; do
        while read -r rule; do
            [[ $rule =~ ^-A\ (KUBE-|CNI-|ODOOHA-) ]] && continue
            [[ $rule =~ -j\ (KUBE-|CNI-|ODOOHA-) ]] || continue
            # shellcheck disable=SC2086 # the rule is a list of iptables arguments
            iptables -w -t "$table" ${rule/-A/-D} 2>/dev/null || true
        done < <(iptables -w -t "$table" -S 2>/dev/null | grep '^-A ')
        for chain in $(iptables -w -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-|ODOOHA-)/ {print $2}'); do
            iptables -w -t "$table" -F "$chain" 2>/dev/null || true
        done
        for chain in $(iptables -w -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-|ODOOHA-)/ {print $2}'); do
            iptables -w -t "$table" -X "$chain" 2>/dev/null || true
        done
    done
}

kill_pods() {
    local sandboxes=() ns id pid f
    if containerd_up; then
        # The network namespaces of our sandboxes, to remove once everything is dead.
        for id in $(ctr --address "$CONTAINERD_SOCK" -n k8s.io containers ls -q 2>/dev/null); do
            ns=$(ctr --address "$CONTAINERD_SOCK" -n k8s.io containers info "$id" 2>/dev/null |
                jq -r '.Spec.linux.namespaces[]? | select(.type == "network") | .path // empty') || true
            [[ -n $ns ]] && sandboxes+=("$ns")
        done
        printf '%s\n' "${sandboxes[@]}" | sort -u >"$STATE/net/netns" 2>/dev/null || true
    fi
    # Every container process lives under kubelet's kubepods cgroups.
    for f in /sys/fs/cgroup/*/kubepods/cgroup.procs /sys/fs/cgroup/*/kubepods/*/cgroup.procs \
        /sys/fs/cgroup/*/kubepods/*/*/cgroup.procs /sys/fs/cgroup/*/kubepods/*/*/*/cgroup.procs \
        /sys/fs/cgroup/kubepods/cgroup.procs /sys/fs/cgroup/kubepods/*/cgroup.procs \
        /sys/fs/cgroup/kubepods/*/*/cgroup.procs /sys/fs/cgroup/kubepods/*/*/*/cgroup.procs; do
        [[ -f $f ]] || continue
        while read -r pid; do
            if [[ -n $pid ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
        done <"$f"
    done
}

kill_shims() { # the shims of our containerd, found by its socket path
    local p cmd
    for p in /proc/[0-9]*; do
        cmd=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
        if [[ $cmd == *containerd-shim* && $cmd == *"$CONTAINERD_SOCK"* ]]; then
            kill -KILL "${p#/proc/}" 2>/dev/null || true
        fi
    done
}

remove_cgroups() {
    local d
    # Deepest first; a cgroup directory can only be removed once it is empty.
    while read -r d; do
        rmdir "$d" 2>/dev/null || true
    done < <(find /sys/fs/cgroup -depth -type d -path '*kubepods*' 2>/dev/null)
}

node_is_ours() {
    if [[ -f $NODE_OWNER ]]; then
        [[ $(<"$NODE_OWNER") == "$STATE" ]]
        return
    fi
    [[ -d $STATE/containerd || -d $STATE/kubelet || -d $STATE/cni ]]
}

down_node() {
    local ns m
    mkdir -p "$STATE/net"
    stop refresher kube-proxy kubelet
    if [[ -x $K8S_BIN/kube-proxy ]]; then
        kube-proxy --cleanup >/dev/null 2>&1 || true
    fi
    kill_pods
    stop containerd
    kill_shims
    sleep 0.5
    while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(findmnt -rn -o TARGET | grep -F "$STATE/" | sort -r)
    if [[ -f $STATE/net/netns ]]; then
        while read -r ns; do
            [[ -n $ns ]] || continue
            umount -l "$ns" 2>/dev/null || true
            rm -f "$ns"
        done <"$STATE/net/netns"
    fi
    remove_cgroups
    stop api-forwarder dnsmasq
    clean_iptables
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link delete "$BRIDGE"
    fi
    if [[ -f $STATE/net/ip_forward.orig ]]; then
        cat "$STATE/net/ip_forward.orig" >/proc/sys/net/ipv4/ip_forward
    fi
}

cmd_down() {
    require_root
    [[ -d $STATE ]] || {
        log "nothing to do ($STATE does not exist)"
        return 0
    }
    mkdir -p "$RUN"
    exec 8>"$STATE/.lock"
    flock 8
    # The machine-wide cleanup (pods, iptables, bridge, cgroups) belongs to the state dir
    # that runs the node; an `up api` cluster's down must not touch another suite's node.
    if node_is_ours; then
        down_node
    fi
    stop kube-scheduler kube-controller-manager
    stop kube-apiserver
    stop etcd
    # Keep the last logs for post-mortems; everything else goes.
    rm -rf "$STATE.last-logs"
    if [[ -d $LOGS ]]; then
        mv "$LOGS" "$STATE.last-logs"
    fi
    rm -rf "$STATE" "$DATA_DIR"
    if [[ -f $NODE_OWNER && $(<"$NODE_OWNER") == "$STATE" ]]; then
        rm -f "$NODE_OWNER"
    fi
    log "down; logs kept in $STATE.last-logs"
}

# --- small commands ----------------------------------------------------------------

cmd_status() {
    local name
    for name in etcd kube-apiserver kube-controller-manager kube-scheduler containerd \
        dnsmasq api-forwarder kubelet kube-proxy refresher; do
        if running "$name"; then
            printf '%-24s running (pid %s)\n' "$name" "$(pid_of "$name")"
        elif [[ -f $RUN/$name.pid ]]; then
            printf '%-24s DEAD (see %s)\n' "$name" "$LOGS/$name.log"
        fi
    done
    if [[ -f $ADMIN_KUBECONFIG ]] && running kube-apiserver; then
        kubectl_admin get nodes -o wide 2>/dev/null || true
    fi
}

cmd_logs() {
    local which=${1:-} lines=${2:-40} dir=$LOGS f
    [[ -d $dir ]] || dir=$STATE.last-logs
    [[ -d $dir ]] || die "no logs in $LOGS or $STATE.last-logs"
    for f in "$dir"/*.log; do
        [[ -z $which || $(basename "$f" .log) == "$which" ]] || continue
        echo "===== $f"
        tail -n "$lines" "$f"
    done
}

cmd_pv() {
    local name=${1:-} size=${2:-}
    [[ $name =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || die "pv NAME SIZE: NAME must be a DNS label"
    [[ $size =~ ^[0-9]+(Ki|Mi|Gi|Ti)$ ]] || die "pv NAME SIZE: SIZE like 1Gi"
    running kubelet || die "the node is not up (cluster.sh up node)"
    mkdir -p "$VOLUMES/$name"
    chmod 0777 "$VOLUMES/$name"
    kubectl_admin apply -f - <<EOF
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $name
spec:
  capacity:
    storage: $size
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: local
  hostPath:
    path: $VOLUMES/$name
    type: Directory
EOF
}

main() {
    local cmd=${1:-}
    (($#)) && shift
    case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    pv) cmd_pv "$@" ;;
    env) echo "export KUBECONFIG=$ADMIN_KUBECONFIG" ;;
    _refresher) refresher ;;
    -h | --help | "") usage ;;
    *) die "unknown command '$cmd' (see --help)" ;;
    esac
}

main "$@"

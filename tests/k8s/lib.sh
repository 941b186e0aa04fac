# shellcheck shell=bash disable=SC2034 # settings used by the scripts that source this file
# Shared settings and helpers for the local Kubernetes harness (sourced, not run).
#
# Every listener is pinned to loopback or to the harness's own bridge, on ports chosen
# to stay clear of a real cluster on the same machine (6443, 2379, 10250, ...).

K8S_VERSION=1.20.2
K8S_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

STATE=${ODOO_HA_K8S_STATE:-/tmp/odoo-ha-k8s}
# etcd's data and the hostPath volumes (the managed PostgreSQL's and Redis's data) are in
# memory where the machine has /dev/shm. Both fsync at every write; on this machine's disk,
# shared with the builds and the node, one fsync took 0.7 s while an e2e ran and more
# during a `helm upgrade`: the PostgreSQL commits behind the e2e's load then passed the
# sidecar's 1 s budget and were answered 503, an outage of the test disk, not of the
# product. ODOO_HA_K8S_DATA_ON_DISK=1 keeps them under $STATE, as does a /dev/shm with
# less than 1 GiB free.
shm_free_kib=$(df --output=avail -k /dev/shm 2>/dev/null | tail -n 1 | tr -d ' ')
if [[ ${ODOO_HA_K8S_DATA_ON_DISK:-0} != 1 && -w /dev/shm && ${shm_free_kib:-0} =~ ^[0-9]+$ ]] &&
    ((shm_free_kib >= 1048576)); then
    DATA_DIR=/dev/shm/$(basename "$STATE").data
else
    DATA_DIR=$STATE/data
fi
ETCD_DATA=$DATA_DIR/etcd
VOLUMES=$DATA_DIR/volumes
CACHE_ROOT=${ODOO_HA_K8S_CACHE:-/var/cache/odoo-ha-session}
K8S_BIN=$CACHE_ROOT/kubernetes-$K8S_VERSION/bin
IMAGE_CACHE=$CACHE_ROOT/images

# The control plane's loopback ports can be moved (ODOO_HA_K8S_*_PORT) so that an `up api`
# cluster of one suite can run beside another suite's; the node part exists once per machine.
ETCD_PORT=${ODOO_HA_K8S_ETCD_PORT:-23790}
ETCD_PEER_PORT=${ODOO_HA_K8S_ETCD_PEER_PORT:-23800}
API_PORT=${ODOO_HA_K8S_API_PORT:-16443}
KCM_PORT=${ODOO_HA_K8S_KCM_PORT:-16257}
SCHED_PORT=${ODOO_HA_K8S_SCHED_PORT:-16259}
KUBELET_PORT=16250
KUBELET_HEALTHZ_PORT=16248
PROXY_HEALTHZ_PORT=16256
PROXY_METRICS_PORT=16249

# The node's only network: a bridge that exists for the harness alone. The node IP,
# the cluster DNS and the pods' route to the API server all live on its gateway address.
BRIDGE=odooha0
POD_CIDR=10.203.0.0/24
NODE_IP=10.203.0.1
SERVICE_CIDR=10.204.0.0/16
API_SERVICE_IP=10.204.0.1
CLUSTER_DOMAIN=cluster.local
NODE_NAME=odoo-ha-node
PAUSE_IMAGE=localhost/pause:3.2

CONTAINERD_SOCK=$STATE/containerd/containerd.sock
KUBECONFIG_ADMIN=$STATE/kubeconfig

log() { printf '[%s] %s\n' "${LOG_TAG:-k8s}" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

require_root() {
    [[ $(id -u) -eq 0 ]] || die "run as root: the harness manages mounts, iptables and a bridge"
}

# Installs the Debian packages the harness needs, only when one is missing.
ensure_packages() {
    local missing=() pkg
    local -A probe=(
        [etcd-server]=/usr/bin/etcd
        [containerd]=/usr/bin/containerd
        [runc]=/usr/sbin/runc
        [containernetworking-plugins]=/usr/lib/cni/bridge
        [iptables]=/usr/sbin/iptables
        [conntrack]=/usr/sbin/conntrack
        [dnsmasq-base]=/usr/sbin/dnsmasq
        [buildah]=/usr/bin/buildah
        [socat]=/usr/bin/socat
        [busybox]=/bin/busybox
        [jq]=/usr/bin/jq
        [openssl]=/usr/bin/openssl
        [curl]=/usr/bin/curl
        [iproute2]=/usr/sbin/ip
        [gcc]=/usr/bin/gcc
        [libc6-dev]=/usr/lib/x86_64-linux-gnu/libc.a
        [util-linux]=/usr/bin/findmnt
    )
    for pkg in "${!probe[@]}"; do
        [[ -e ${probe[$pkg]} ]] || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    apt_install "${missing[@]}"
}

# apt_install PACKAGE...: installs without starting the packages' services (etcd,
# containerd, redis, postgresql): the harness runs its own instances on its own ports.
apt_install() {
    local rc=0 policy=/usr/sbin/policy-rc.d created=false
    log "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# odoo-ha-session test harness: no service starts during its installs\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        created=true
    fi
    if ! apt-get install -y -qq --no-install-recommends "$@" >/dev/null; then
        apt-get update -qq || rc=$?
        ((rc)) || apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?
    fi
    if [[ $created == true ]]; then
        rm -f "$policy"
    fi
    return "$rc"
}

kubectl_admin() {
    kubectl --kubeconfig "$KUBECONFIG_ADMIN" "$@"
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds.
wait_for() {
    local timeout=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${timeout}s waiting for $what"
            return 1
        fi
        sleep 0.5
    done
}

containerd_up() {
    [[ -S $CONTAINERD_SOCK ]] && ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1
}

#!/usr/bin/env bash
# Build the Kubernetes 1.20.2 server binaries from Debian's source package with Go 1.15.
#
# Why Go 1.15: the vendored reflect2 1.0.1 corrupts memory under Go >= 1.18, so a
# kube-apiserver built with bookworm's Go 1.19 crashes on the first mutating webhook
# that returns a patch. Go 1.15 comes from Debian bullseye.
#
# The bullseye and deb-src sources are used through a private apt configuration (own
# source list, own package lists, own cache), so the machine's apt setup is never
# changed and later `apt-get install` calls cannot pick bullseye packages.
#
# The `providerless` build tag leaves out the in-tree cloud providers and credential
# helpers: a kubelet with them probes cloud metadata endpoints (169.254.169.254), and
# this harness must never send traffic beyond loopback and its own bridge.
#
# Output: $ODOO_HA_K8S_CACHE/kubernetes-1.20.2/bin/{kube-apiserver,...}. Returns at once
# when those binaries exist (the cache is keyed by version and build flavour).
set -euo pipefail

K8S_VERSION=1.20.2
GO_PKG_VERSION=1.15
CACHE_ROOT=${ODOO_HA_K8S_CACHE:-/var/cache/odoo-ha-session}
CACHE=$CACHE_ROOT/kubernetes-$K8S_VERSION
BIN=$CACHE/bin
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
# What the cache holds; a cache built another way is rebuilt.
BUILD_ID="v$K8S_VERSION go$GO_PKG_VERSION providerless"

log() { printf '[build-kubernetes] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cached() {
    local b
    for b in "${BINARIES[@]}"; do
        [[ -x $BIN/$b ]] || return 1
    done
    [[ -f $BIN/.complete && $(<"$BIN/.complete") == "$BUILD_ID" ]]
}

if cached; then
    log "cached in $BIN"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "run as root (installs apt packages and writes $CACHE_ROOT)"
[[ $(dpkg --print-architecture) == amd64 ]] || die "only amd64 is supported"

# One build at a time: a second caller waits for the first and then sees the cache.
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if cached; then
    log "cached in $BIN (built by a concurrent run)"
    exit 0
fi

start=$(date +%s)

log "installing build tools"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq --no-install-recommends make rsync jq dpkg-dev ca-certificates \
    debian-archive-keyring >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends make rsync jq dpkg-dev ca-certificates \
        debian-archive-keyring >/dev/null
fi

# Private apt configuration: bullseye binaries (Go 1.15) and bookworm sources.
APT_DIR=$CACHE/apt
mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$APT_DIR/etc/preferences.d"
MIRROR=${ODOO_HA_DEBIAN_MIRROR:-http://deb.debian.org/debian}
cat >"$APT_DIR/etc/sources.list" <<SOURCES
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bullseye main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bookworm main
SOURCES
APT_OPTS=(
    -o "Dir::Etc::SourceList=$APT_DIR/etc/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::Etc::Preferences=/dev/null"
    -o "Dir::Etc::PreferencesParts=$APT_DIR/etc/preferences.d"
    -o "Dir::State::Lists=$APT_DIR/lists"
    -o "Dir::Cache=$APT_DIR/cache"
    -o "APT::Get::List-Cleanup=false"
    -o "APT::Sandbox::User=root"
)
log "updating private apt lists (bullseye, bookworm deb-src)"
apt-get "${APT_OPTS[@]}" update -qq

# Go 1.15, unpacked (never installed) into the cache.
GO_DIR=$CACHE/go$GO_PKG_VERSION
if [[ ! -x $GO_DIR/usr/lib/go-$GO_PKG_VERSION/bin/go ]]; then
    log "fetching golang-$GO_PKG_VERSION from bullseye"
    rm -rf "$GO_DIR" "$CACHE/debs"
    mkdir -p "$GO_DIR" "$CACHE/debs"
    (cd "$CACHE/debs" && apt-get "${APT_OPTS[@]}" download "golang-$GO_PKG_VERSION-go" "golang-$GO_PKG_VERSION-src")
    for deb in "$CACHE"/debs/*.deb; do
        dpkg -x "$deb" "$GO_DIR"
    done
fi
export GOROOT=$GO_DIR/usr/lib/go-$GO_PKG_VERSION
export PATH=$GOROOT/bin:$PATH
go version | grep -q "go$GO_PKG_VERSION" || die "unexpected Go: $(go version)"

# The Debian source of kubernetes (bookworm: 1.20.2 with vendored dependencies).
SRC_DIR=$CACHE/src
BUILD=$CACHE/build
mkdir -p "$SRC_DIR"
if ! compgen -G "$SRC_DIR/kubernetes_*.orig.tar.*" >/dev/null; then
    log "downloading the Debian kubernetes source"
    (cd "$SRC_DIR" && apt-get "${APT_OPTS[@]}" source --download-only kubernetes)
fi
orig=$(compgen -G "$SRC_DIR/kubernetes_*.orig.tar.*" | head -n1)
[[ $orig == *"$K8S_VERSION"* ]] || die "Debian source is not $K8S_VERSION: $orig"

rm -rf "$BUILD"
mkdir -p "$BUILD"
log "unpacking $(basename "$orig")"
tar -xf "$orig" -C "$BUILD"
tree=$(find "$BUILD" -mindepth 1 -maxdepth 1 -type d | head -n1)
[[ -f $tree/hack/lib/version.sh ]] || die "unexpected source layout in $BUILD"

# No .git in a tarball: give the version explicitly, or the binaries report v0.0.0
# and clients that check the server version (the operator does) get nonsense.
cat >"$BUILD/version.env" <<VERSION
KUBE_GIT_COMMIT='faecb196815e248d3ecfb03c680a4507229c2a56'
KUBE_GIT_TREE_STATE='clean'
KUBE_GIT_VERSION='v$K8S_VERSION'
KUBE_GIT_MAJOR='1'
KUBE_GIT_MINOR='20'
VERSION

log "building ${BINARIES[*]} (about 10 minutes on 2 cores)"
(
    cd "$tree"
    # hack/lib/golang.sh turns -tags= in GOFLAGS into the build's tag list.
    export GOPATH=$PWD/.go CGO_ENABLED=0 GOFLAGS=-tags=providerless
    export KUBE_GIT_VERSION_FILE=$BUILD/version.env
    export GOCACHE=$CACHE/gocache
    mkdir -p .go/src/k8s.io
    ln -sfn ../../.. .go/src/k8s.io/kubernetes
    what=()
    for b in "${BINARIES[@]}"; do what+=("cmd/$b"); done
    make WHAT="${what[*]}"
)

out=$(find "$tree/_output" -type d -path '*/bin' -name bin | head -n1)
mkdir -p "$BIN"
for b in "${BINARIES[@]}"; do
    install -m 0755 "$out/$b" "$BIN/$b"
done
"$BIN/kube-apiserver" --version
echo "$BUILD_ID" >"$BIN/.complete"
rm -rf "$BUILD" "$CACHE/gocache"
log "built in $(( $(date +%s) - start ))s into $BIN"

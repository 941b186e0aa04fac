#!/usr/bin/env bash
# Builds minimal OCI images without a registry or a Docker engine, and loads them into
# the harness's containerd (namespace k8s.io) so pods can use them with
# imagePullPolicy: Never or IfNotPresent.
#
#   image.sh NAME:TAG --binary PATH [--user UID] [--add SRC:DEST]... [--arg ARG]...
#       A binary (static, or dynamic plus the shared libraries ldd lists) as the
#       entrypoint /usr/local/bin/<basename PATH>. Image name: localhost/NAME:TAG.
#       --user defaults to 65532 (non-root); --add copies extra host files;
#       --arg appends default arguments (the image's CMD).
#   image.sh --preset pause|busybox|redis|postgres
#       pause    localhost/pause:3.2      static pause process for pod sandboxes
#       busybox  localhost/busybox:odoo-ha  shell and tools for test pods
#       redis    localhost/redis:7        Debian's redis-server, official-image style entrypoint
#       postgres localhost/postgres:15    Debian's PostgreSQL 15, official-image style entrypoint
#   image.sh --import-cached
#       Loads every cached archive into the running containerd (used by cluster.sh).
#   image.sh --list
#
# Archives are cached in $ODOO_HA_K8S_CACHE/images (default /var/cache/odoo-ha-session)
# so `cluster.sh up node` can re-import them into a fresh containerd. Building while no
# cluster runs only fills the cache.
set -euo pipefail
export LOG_TAG=image
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BUILDAH_ROOT=$CACHE_ROOT/buildah/storage
BUILDAH_RUNROOT=/run/odoo-ha-session-buildah
POLICY=$CACHE_ROOT/buildah/policy.json

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

WORK=""
# A fresh staging directory; all of them go when the script exits.
new_root() {
    local d
    d=$(mktemp -d "$WORK/root.XXXXXX")
    chmod 0755 "$d"
    printf '%s' "$d"
}

bah() {
    buildah --root "$BUILDAH_ROOT" --runroot "$BUILDAH_RUNROOT" --storage-driver vfs "$@"
}

archive_path() {
    # localhost/redis:7 -> redis_7.oci.tar
    local ref=${1#localhost/}
    printf '%s/%s.oci.tar' "$IMAGE_CACHE" "${ref//[:\/]/_}"
}

# Copies FILE's shared libraries (and the ELF interpreter) into ROOT at the same paths.
copy_libs() {
    local root=$1 file=$2 out lib
    if ! out=$(ldd "$file" 2>&1); then
        # Static binaries and non-ELF files (scripts) need nothing.
        return 0
    fi
    if grep -q 'not found' <<<"$out"; then
        die "$file needs libraries this machine lacks: $(grep 'not found' <<<"$out" | tr -s ' \t' ' ')"
    fi
    while read -r lib; do
        [[ -n $lib && -e $lib ]] || continue
        [[ -e $root$lib ]] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$out")
}

# stage_bin ROOT SRC DEST: the file plus its libraries.
stage_bin() {
    local root=$1 src=$2 dest=$3
    [[ -f $src ]] || die "no such file: $src"
    mkdir -p "$root$(dirname "$dest")"
    cp -L "$src" "$root$dest"
    chmod 0755 "$root$dest"
    copy_libs "$root" "$src"
}

# stage_base ROOT [NAME:UID]: filesystem skeleton; NAME:UID adds a service account user
# (the official redis and postgres images both use 999).
stage_base() {
    local root=$1 account=${2:-}
    mkdir -p "$root"/{etc,tmp,proc,sys,dev,run} "$root/etc/ssl/certs"
    chmod 1777 "$root/tmp"
    cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
PASSWD
    cat >"$root/etc/group" <<'GROUP'
root:x:0:
nonroot:x:65532:
nobody:x:65534:
GROUP
    if [[ -n $account ]]; then
        echo "${account%%:*}:x:${account#*:}:${account#*:}::/:/bin/sh" >>"$root/etc/passwd"
        echo "${account%%:*}:x:${account#*:}:" >>"$root/etc/group"
    fi
    if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
        cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
    fi
}

# busybox as /bin/sh and the usual tools, for entrypoint scripts and test pods.
stage_busybox() {
    local root=$1 applet
    stage_bin "$root" /bin/busybox /bin/busybox
    mkdir -p "$root/usr/bin" "$root/sbin"
    for applet in $(/bin/busybox --list); do
        [[ $applet == busybox ]] && continue
        [[ -e $root/bin/$applet ]] || ln -s busybox "$root/bin/$applet"
    done
}

# commit_image ROOT REF BUILDAH_CONFIG_ARGS...: turns a staged root into an image.
commit_image() {
    local root=$1 ref=$2 ctr mnt archive tmp
    shift 2
    mkdir -p "$IMAGE_CACHE" "$(dirname "$POLICY")"
    [[ -f $POLICY ]] || printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' >"$POLICY"
    ctr=$(bah from --signature-policy "$POLICY" scratch)
    # Files keep their owners and modes (buildah copy would make everything root's).
    mnt=$(bah mount "$ctr")
    cp -a "$root/." "$mnt/"
    bah umount "$ctr" >/dev/null
    bah config --os linux --arch amd64 "$@" "$ctr"
    bah commit --signature-policy "$POLICY" --quiet --format oci --rm "$ctr" "$ref" >/dev/null
    archive=$(archive_path "$ref")
    tmp=$archive.tmp
    rm -f "$tmp"
    bah push --signature-policy "$POLICY" --quiet "$ref" "oci-archive:$tmp:$ref"
    bah rmi "$ref" >/dev/null
    mv "$tmp" "$archive"
    log "built $ref ($(du -h "$archive" | cut -f1)) -> $archive"
    import_archive "$archive"
}

import_archive() {
    local archive=$1
    if containerd_up; then
        ctr --address "$CONTAINERD_SOCK" -n k8s.io images import --no-unpack=false "$archive" >/dev/null
        log "imported $(basename "$archive") into containerd (k8s.io)"
    fi
}

import_cached() {
    local archive
    containerd_up || die "containerd of the harness is not running ($CONTAINERD_SOCK)"
    shopt -s nullglob
    for archive in "$IMAGE_CACHE"/*.oci.tar; do
        import_archive "$archive"
    done
}

build_generic() {
    local ref=$1 binary=$2 user=$3 root name
    shift 3
    local -a adds=() cmd=()
    while (($#)); do
        case $1 in
        --add) adds+=("$2"); shift 2 ;;
        --arg) cmd+=("$2"); shift 2 ;;
        *) die "unknown option $1" ;;
        esac
    done
    [[ -f $binary ]] || die "--binary $binary: no such file"
    [[ $ref == *:* && $ref != */* ]] || die "image name must be NAME:TAG (localhost/ is added): $ref"
    [[ $user =~ ^[0-9]+(:[0-9]+)?$ ]] || die "--user must be a numeric UID[:GID]: $user"
    name=$(basename "$binary")
    root=$(new_root)
    stage_base "$root"
    stage_bin "$root" "$binary" "/usr/local/bin/$name"
    local add src dest
    for add in "${adds[@]}"; do
        src=${add%%:*} dest=${add#*:}
        [[ -e $src && $dest == /* ]] || die "--add $add: want an existing SRC and an absolute DEST"
        mkdir -p "$root$(dirname "$dest")"
        cp -aL "$src" "$root$dest"
        [[ -f $src ]] && copy_libs "$root" "$src"
    done
    [[ $user == *:* ]] || user=$user:$user
    commit_image "$root" "localhost/$ref" \
        --entrypoint "$(jq -cn --arg b "/usr/local/bin/$name" '[$b]')" \
        --cmd "$(jq -cn '$ARGS.positional' --args "${cmd[@]}")" \
        --user "$user" \
        --env PATH=/usr/local/bin:/usr/bin:/bin
}

build_pause() {
    local root
    root=$(new_root)
    # Pod sandboxes only need a process that sleeps, reaps orphans and exits on TERM.
    cat >"$root/pause.c" <<'C'
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
    struct sigaction q = {.sa_handler = quit}, r = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
    sigaction(SIGINT, &q, NULL);
    sigaction(SIGTERM, &q, NULL);
    sigaction(SIGCHLD, &r, NULL);
    for (;;) pause();
}
C
    mkdir -p "$root/rootfs"
    gcc -static -Os -s -o "$root/rootfs/pause" "$root/pause.c"
    commit_image "$root/rootfs" "$PAUSE_IMAGE" --entrypoint '["/pause"]' --user 65535:65535
}

build_busybox() {
    local root
    root=$(new_root)
    stage_base "$root"
    stage_busybox "$root"
    commit_image "$root" localhost/busybox:odoo-ha \
        --entrypoint '["/bin/sh"]' --cmd '[]' --user 65532:65532 --env PATH=/bin
}

build_redis() {
    local root
    [[ -x /usr/bin/redis-server && -x /usr/bin/redis-cli ]] || {
        apt_install redis-server redis-tools
    }
    root=$(new_root)
    stage_base "$root" redis:999
    stage_busybox "$root"
    stage_bin "$root" /usr/bin/redis-server /usr/local/bin/redis-server
    stage_bin "$root" /usr/bin/redis-cli /usr/local/bin/redis-cli
    ln -s redis-server "$root/usr/local/bin/redis-check-aof"
    ln -s redis-server "$root/usr/local/bin/redis-check-rdb"
    install -D -m 0755 "$K8S_DIR/images/redis-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
    install -d -m 0755 -o 999 -g 999 "$root/data"
    commit_image "$root" localhost/redis:7 \
        --entrypoint '["docker-entrypoint.sh"]' --cmd '["redis-server"]' \
        --user 999:999 --workingdir /data --port 6379 --volume /data \
        --env PATH=/usr/local/bin:/usr/bin:/bin
}

build_postgres() {
    local root f pgbin=/usr/lib/postgresql/15/bin pglib=/usr/lib/postgresql/15/lib
    [[ -x $pgbin/postgres && -x $pgbin/psql ]] || {
        apt_install postgresql-15 postgresql-client-15
    }
    root=$(new_root)
    stage_base "$root" postgres:999
    stage_busybox "$root"
    for f in "$pgbin"/*; do
        stage_bin "$root" "$f" "$f"
    done
    mkdir -p "$root$pglib"
    for f in "$pglib"/*.so; do
        # JIT needs LLVM (hundreds of MB); PostgreSQL runs without it when absent.
        [[ $(basename "$f") == llvmjit* ]] && continue
        stage_bin "$root" "$f" "$f"
    done
    mkdir -p "$root/usr/share/postgresql" "$root/usr/share/zoneinfo" "$root/usr/lib/locale"
    cp -a /usr/share/postgresql/15 "$root/usr/share/postgresql/"
    cp -aL /usr/share/zoneinfo/. "$root/usr/share/zoneinfo/"
    cp -a /usr/lib/locale/C.utf8 "$root/usr/lib/locale/"
    install -D -m 0755 "$K8S_DIR/images/postgres-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
    install -d -m 0755 -o 999 -g 999 "$root/var/lib/postgresql"
    install -d -m 0700 -o 999 -g 999 "$root/var/lib/postgresql/data"
    install -d -m 3777 -o 999 -g 999 "$root/var/run/postgresql"
    commit_image "$root" localhost/postgres:15 \
        --entrypoint '["docker-entrypoint.sh"]' --cmd '["postgres"]' \
        --user 999:999 --port 5432 --volume /var/lib/postgresql/data --stop-signal SIGINT \
        --env "PATH=/usr/local/bin:$pgbin:/usr/bin:/bin" --env PGDATA=/var/lib/postgresql/data \
        --env LANG=C.UTF-8 --env PG_MAJOR=15
}

main() {
    (($#)) || usage
    require_root
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    case $1 in
    -h | --help) usage ;;
    --list)
        ls -l "$IMAGE_CACHE" 2>/dev/null || true
        return
        ;;
    --import-cached)
        import_cached
        return
        ;;
    --preset)
        (($# == 2)) || usage
        ensure_packages
        case $2 in
        pause) build_pause ;;
        busybox) build_busybox ;;
        redis) build_redis ;;
        postgres) build_postgres ;;
        *) die "unknown preset $2 (pause, busybox, redis, postgres)" ;;
        esac
        return
        ;;
    esac
    local ref=$1 binary="" user=65532
    shift
    local -a rest=()
    while (($#)); do
        case $1 in
        --binary) binary=${2:?--binary needs a path}; shift 2 ;;
        --user) user=${2:?--user needs a UID}; shift 2 ;;
        --add | --arg) rest+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
        *) die "unknown option $1 (see --help)" ;;
        esac
    done
    [[ -n $binary ]] || die "--binary PATH is required"
    ensure_packages
    build_generic "$ref" "$binary" "$user" "${rest[@]}"
}

main "$@"

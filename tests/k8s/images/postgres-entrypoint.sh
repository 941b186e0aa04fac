#!/bin/sh
# Entrypoint of the harness's localhost/postgres:15 image: the part of the official
# image's docker-entrypoint.sh that operators rely on, in POSIX sh.
#
#   POSTGRES_PASSWORD (required unless POSTGRES_HOST_AUTH_METHOD=trust), POSTGRES_USER
#   (default postgres), POSTGRES_DB (default POSTGRES_USER), POSTGRES_INITDB_ARGS,
#   POSTGRES_HOST_AUTH_METHOD (default scram-sha-256), PGDATA, and the *_FILE variants.
#   /docker-entrypoint-initdb.d/*.sh are run and *.sql are fed to the new database.
#
# It never runs as root: the image's user is postgres (999). PGDATA must be writable by
# that user; a volume mounted at PGDATA's parent with PGDATA a subdirectory always is.
set -eu

err() { echo "docker-entrypoint: error: $*" >&2; exit 1; }
info() { echo "docker-entrypoint: $*" >&2; }

# file_env VAR [DEFAULT]: VAR or the content of the file named by VAR_FILE.
file_env() {
    var=$1 def=${2:-}
    eval "val=\${$var:-}" "fval=\${${var}_FILE:-}"
    if [ -n "$val" ] && [ -n "$fval" ]; then
        err "both $var and ${var}_FILE are set (but are exclusive)"
    fi
    if [ -n "$fval" ]; then
        val=$(cat "$fval")
    fi
    [ -n "$val" ] || val=$def
    export "$var=$val"
    unset "${var}_FILE"
}

# SQL fed to the single-user backend: identifiers are quoted, quotes doubled.
quote_ident() { printf '"%s"' "$(printf '%s' "$1" | sed 's/"/""/g')"; }

case "${1:-}" in
-*) set -- postgres "$@" ;;
esac

if [ "${1:-}" = postgres ]; then
    for arg in "$@"; do
        case $arg in -C | --describe-config | -V | --version | --help | -\?) exec "$@" ;; esac
    done
    [ "$(id -u)" != 0 ] || err "refusing to run as root; run as the postgres user (999)"

    file_env POSTGRES_PASSWORD
    file_env POSTGRES_USER postgres
    file_env POSTGRES_DB "$POSTGRES_USER"
    file_env POSTGRES_INITDB_ARGS
    : "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
    : "${PGDATA:=/var/lib/postgresql/data}"
    export PGDATA

    mkdir -p "$PGDATA" || err "cannot create PGDATA $PGDATA (is its parent writable by uid $(id -u)?)"
    chmod 0700 "$PGDATA" 2>/dev/null || true

    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
            err "the database is uninitialized and POSTGRES_PASSWORD is not set; set it (or POSTGRES_HOST_AUTH_METHOD=trust, never in production)"
        fi
        if [ -n "$(ls -A "$PGDATA")" ]; then
            err "PGDATA $PGDATA is not empty and holds no database (a volume root with lost+found? point PGDATA at a subdirectory)"
        fi
        info "initializing $PGDATA"
        # shellcheck disable=SC2086 # word splitting of POSTGRES_INITDB_ARGS is upstream's contract
        printf '%s\n' "$POSTGRES_PASSWORD" |
            initdb --username="$POSTGRES_USER" --pwfile=/dev/stdin --auth-local=trust \
                --auth-host="$POSTGRES_HOST_AUTH_METHOD" $POSTGRES_INITDB_ARGS >&2
        printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"
        printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"

        if [ "$POSTGRES_DB" != postgres ]; then
            info "creating database $POSTGRES_DB"
            echo "CREATE DATABASE $(quote_ident "$POSTGRES_DB");" |
                postgres --single -D "$PGDATA" postgres >/dev/null
        fi
        for f in /docker-entrypoint-initdb.d/*; do
            [ -e "$f" ] || continue
            case $f in
            *.sh)
                info "running $f"
                sh "$f"
                ;;
            *.sql)
                info "loading $f"
                postgres --single -j -D "$PGDATA" "$POSTGRES_DB" <"$f" >/dev/null
                ;;
            *) info "ignoring $f" ;;
            esac
        done
        info "init done"
    fi
fi

exec "$@"

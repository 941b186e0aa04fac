#!/bin/sh
# Entrypoint of the harness's localhost/redis:7 image, compatible with the official
# image's command lines: `redis-server --appendonly yes --requirepass ...`, or only
# options (`--appendonly yes`), or a config file path.
set -eu

# Options or a config file alone mean "run redis-server with these", as upstream does.
case "${1:-}" in
-* | *.conf) set -- redis-server "$@" ;;
esac

if [ "${1:-}" = redis-server ]; then
    # The official image builds Redis with protected mode off by default, because a
    # container is reached through its pod IP, never loopback. Debian's binary keeps it
    # on, so do the same here unless the caller chose a value or passed a config file.
    case " $* " in
    *" --protected-mode "* | *.conf" "*) ;;
    *)
        shift
        set -- redis-server --protected-mode no "$@"
        ;;
    esac
fi

exec "$@"

#!/bin/sh
# Runs the dkn_auth test suite on a fresh Debian machine: installs what it needs
# (redis-server from apt, pytest/werkzeug/ruff from PyPI), builds the sidecar,
# checks formatting and lint, then runs tests/addon against the real sidecar.
set -eu
cd "$(dirname "$0")/../.."

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server missing (apt-get install redis-server); Redis tests will be skipped" >&2
  fi
fi
python3 -m pip install -q -r tests/addon/requirements.txt

if [ -z "${DKN_SIDECAR_BIN:-}" ]; then
  cargo build -q -p odoo-session-sidecar
  DKN_SIDECAR_BIN="${CARGO_TARGET_DIR:-target}/debug/odoo-session-sidecar"
  export DKN_SIDECAR_BIN
fi

ruff format --check addons tests/addon tests/realodoo
ruff check addons tests/addon tests/realodoo
exec python3 -m pytest -q tests/addon "$@"

#!/bin/sh
# Property-based check of the sidecar against docs/openapi.json: builds the sidecar, starts
# it on the memory driver on a free loopback port, and runs schemathesis (from PyPI, in its
# own venv) with the server-error and response-schema checks. The served copy of the
# document must equal docs/openapi.json; schemathesis reads a copy of the file, because it
# leaves out the operation a schema is loaded from.
#
# Environment:
#   DKN_SIDECAR_BIN             sidecar binary to use instead of building one
#   SCHEMATHESIS_MAX_EXAMPLES   test cases per operation and phase (default 100)
#   SCHEMATHESIS_SEED           fixed seed to repeat a run
#   SCHEMATHESIS_REPORT_DIR     write a JUnit report there
# Extra arguments go to `schemathesis run`.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)

SCHEMATHESIS_VERSION=4.32.5
VALIDATOR_VERSION=0.9.0
VENV="${XDG_CACHE_HOME:-/var/cache}/odoo-ha-session/venv-schemathesis"

if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
  else
    echo "python3 venv support missing: apt-get install python3-venv" >&2
    exit 2
  fi
fi
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" \
    "openapi-spec-validator==$VALIDATOR_VERSION"
fi

"$VENV/bin/openapi-spec-validator" docs/openapi.json

if [ -z "${DKN_SIDECAR_BIN:-}" ]; then
  # Built here so the binary embeds the current docs/openapi.json.
  cargo build -q -p odoo-session-sidecar
  DKN_SIDECAR_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/odoo-session-sidecar"
fi

WORK=$(mktemp -d)
PID=
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
  if [ -n "$PID" ]; then
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"

# Settings from the caller's environment (DKN_AUTH_*) must not change what is tested.
for v in $(env | sed -n 's/^\(DKN_AUTH_[A-Z_]*\)=.*/\1/p'); do
  unset "$v"
done
"$DKN_SIDECAR_BIN" --driver memory --listen "127.0.0.1:$PORT" --log-level warn \
  2>"$WORK/sidecar.log" &
PID=$!

python3 - "$BASE" "$ROOT/docs/openapi.json" <<'EOF'
import json
import sys
import time
import urllib.request

base, path = sys.argv[1], sys.argv[2]
deadline = time.monotonic() + 30
while True:
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=2) as r:
            if r.status == 200:
                break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("sidecar did not become ready at " + base)
    time.sleep(0.1)
with urllib.request.urlopen(base + "/v1/openapi.json", timeout=5) as r:
    served = json.load(r)
with open(path, encoding="utf-8") as f:
    if json.load(f) != served:
        sys.exit("the sidecar serves another openapi.json than docs/openapi.json: rebuild it")
EOF

cp "$ROOT/docs/openapi.json" "$WORK/openapi.json"

set -- --checks not_a_server_error,response_schema_conformance \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-100}" \
  --request-timeout 65 --no-color "$@"
if [ -n "${SCHEMATHESIS_SEED:-}" ]; then
  set -- --seed "$SCHEMATHESIS_SEED" "$@"
fi
if [ -n "${SCHEMATHESIS_REPORT_DIR:-}" ]; then
  mkdir -p "$SCHEMATHESIS_REPORT_DIR"
  set -- --report junit --report-junit-path "$SCHEMATHESIS_REPORT_DIR/schemathesis.xml" "$@"
fi

# Run from a scratch directory: schemathesis and Hypothesis keep state in the current one.
status=0
(cd "$WORK" && "$VENV/bin/schemathesis" run "$WORK/openapi.json" --url "$BASE" "$@") \
  || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- sidecar log" >&2
  tail -n 50 "$WORK/sidecar.log" >&2
fi
exit "$status"

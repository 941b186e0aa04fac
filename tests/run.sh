#!/usr/bin/env bash
# Runs every test of the project, installing and starting what they need.
#
#   tests/run.sh                 all stages
#   tests/run.sh rust addon      only these stages
#
# Stages: rust (fmt, clippy, unit tests, sidecar suites on real Redis and PostgreSQL,
# operator unit/mock tests), addon (dkn_auth against a real sidecar), realodoo (real Odoo
# trees named by DKN_REALODOO_16=/path/to/odoo[:venv] ... _19, one sidecar per Odoo process;
# skipped with one line when none is given), operator (integration on a real Kubernetes
# 1.20.2 API server, built once and cached).
# Each stage's output is also kept in ${TEST_LOGS:-/tmp/odoo-ha-session-tests}/<stage>.log;
# a failed stage's reasons are repeated after the stage list.
# Slow builds are cached outside the repository, keyed by version:
#   cargo:       $CARGO_TARGET_DIR (default /var/cache/odoo-ha-session/cargo-target)
#   Kubernetes:  /var/cache/odoo-ha-session/kubernetes-1.20.2
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/odoo-ha-session/cargo-target}
export CARGO_TERM_COLOR=never
mkdir -p "$CARGO_TARGET_DIR"

stages=("$@")
((${#stages[@]})) || stages=(rust addon realodoo operator chart e2e)

# Each stage's output is also kept in $LOGS/<stage>.log: a failed stage's reasons are
# repeated at the very end, where a CI page that shows only the tail still has them.
LOGS=${TEST_LOGS:-${TMPDIR:-/tmp}/odoo-ha-session-tests}
mkdir -p "$LOGS"

passed=0
failed=0
results=()
reasons=()
run_stage() {
    local name=$1 rc
    shift
    local start=$SECONDS log=$LOGS/$name.log
    echo "=== stage $name" >&2
    set +e
    "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    if ((rc == 0)); then
        passed=$((passed + 1))
        results+=("ok     $name ($((SECONDS - start)) s)")
    else
        failed=$((failed + 1))
        results+=("FAILED $name ($((SECONDS - start)) s, exit $rc; log $log)")
        reasons+=("$(failure_lines "$name" "$log")")
    fi
}

# failure_lines STAGE LOG: the lines of LOG that say what failed (a failed e2e step, a
# failed or panicking Rust test, a pytest failure, a compiler error; then targets reported
# as not met), at most 12, each cut to 300 characters.
failure_lines() {
    local lines not_met
    lines=$(grep -aE '^(\[[a-z]+\] )?\[e2e.*FAILED in step|^test .* \.\.\. FAILED$|panicked at|^error(\[E[0-9]+\])?:|^FAILED |^E +[A-Za-z]' "$2" |
        tail -n 8 | cut -c1-300)
    not_met=$(grep -a 'NOT MET' "$2" | grep -av 'NOT MET, reported only' | tail -n 4 | cut -c1-300)
    printf -- '--- why %s failed:\n%s' "$1" "${lines:-(no known failure line; see the log)}"
    [[ -z $not_met ]] || printf '\n%s' "$not_met"
}

stage_rust() {
    cargo fmt --all -- --check &&
        cargo clippy --workspace --all-targets -- -D warnings &&
        cargo test --workspace
}

stage_addon() {
    cargo build -p odoo-session-sidecar &&
        DKN_SIDECAR_BIN="$CARGO_TARGET_DIR/debug/odoo-session-sidecar" tests/addon/run.sh
}

stage_realodoo() {
    if ! env | grep -qE '^DKN_REALODOO_[0-9]+=.'; then
        echo "realodoo: skipped, no Odoo tree given (DKN_REALODOO_16=/path/to/odoo[:venv] ... _19, see docs/odoo-addon-realodoo.md)"
        return 0
    fi
    cargo build -p odoo-session-sidecar &&
        DKN_SIDECAR_BIN="$CARGO_TARGET_DIR/debug/odoo-session-sidecar" python3 tests/realodoo/stage.py
}

stage_operator() {
    tests/operator-integration.sh
}

stage_chart() {
    tests/chart/run.sh
}

stage_e2e() {
    tests/e2e/run-local.sh
}

tests/install-deps.sh
for s in "${stages[@]}"; do
    case $s in
        rust | addon | realodoo | operator | chart | e2e) run_stage "$s" "stage_$s" ;;
        *)
            echo "unknown stage $s (rust, addon, realodoo, operator, chart, e2e)" >&2
            exit 2
            ;;
    esac
done

echo
printf '%s\n' "${results[@]}"
((${#reasons[@]} == 0)) || printf '%s\n' "${reasons[@]}"
echo "stages: $passed passed, $failed failed"
((failed == 0))

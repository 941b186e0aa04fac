#!/usr/bin/env bash
# Chart checks without a helm binary: Helm's own engine through PyPI helm-python-sdk
# (lint, schema validation, render), then assertions on the rendered manifests.
#
#   tests/chart/run.sh [pytest args]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
VENV=${HELM_VENV:-/var/cache/odoo-ha-session/venv-helm}
REQS=(helm-python-sdk==0.2.2 pytest pyyaml ruff)

if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import helm_python, pytest, yaml' 2>/dev/null; then
    python3 -m venv "$VENV" 2>/dev/null || {
        apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$VENV"
    }
    "$VENV/bin/pip" install -q "${REQS[@]}"
fi
[[ -x $VENV/bin/ruff ]] || "$VENV/bin/pip" install -q ruff

"$VENV/bin/ruff" format --check --line-length 120 tests/chart tests/e2e
"$VENV/bin/ruff" check --line-length 120 tests/chart tests/e2e
# The chart's CRDs are the generated ones (the test also compares them with crds/).
if command -v cargo >/dev/null; then
    cargo run -q -p odoo-session-operator --bin crdgen -- --check charts/odoo-ha-session/crds
    # The settings contract the addon's tests read (docs/settings-contract.json).
    cargo run -q -p odoo-ha-contract --bin contractgen -- --check
fi
exec "$VENV/bin/python" -m pytest -q tests/chart "$@"

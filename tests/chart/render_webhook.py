"""Renders the chart's MutatingWebhookConfiguration twice (failurePolicy Ignore, then Fail,
as a `helm upgrade` would change it) to a JSON file for the operator's integration test
`chart_upgrade_and_operator_ca_bundle_do_not_conflict` (tests/operator-integration.sh).

    render_webhook.py OUT.json
"""

import json
import pathlib
import sys

import helm_python as helm
import yaml

CHART = pathlib.Path(__file__).resolve().parents[2] / "charts" / "odoo-ha-session"
# Not the name of the configuration the other integration tests use.
RELEASE, NAMESPACE = "it-ownership", "it-ownership-system"


def webhook_config(values):
    out = helm.Chart.load(str(CHART)).render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc and doc.get("kind") == "MutatingWebhookConfiguration":
                return doc
    raise SystemExit("the chart rendered no MutatingWebhookConfiguration")


def main():
    configs = {
        "install": webhook_config({}),
        "upgrade": webhook_config({"webhook": {"failurePolicy": "Fail", "timeoutSeconds": 9}}),
    }
    pathlib.Path(sys.argv[1]).write_text(json.dumps(configs, indent=1))


if __name__ == "__main__":
    main()

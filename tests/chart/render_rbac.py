"""Renders the chart's RBAC for a namespaced install (watchNamespaces: [it-watched]) to a JSON
file for the operator's integration test `namespaced_operator_under_its_role` (tests/
operator-integration.sh): the ServiceAccount, ClusterRole, Roles and bindings and the webhook
configuration as a kubectl List, and the operator variables of the rendered Deployment that name what those rules allow
(the Lease, the TLS Secret, the watched namespaces).

    render_rbac.py OUT.json
"""

import json
import pathlib
import sys

import helm_python as helm
import yaml

CHART = pathlib.Path(__file__).resolve().parents[2] / "charts" / "odoo-ha-session"
# The integration tests' operator namespace; a release name no other test uses.
RELEASE, NAMESPACE, WATCHED = "it-ns", "odoo-ha-system", ["it-watched"]
# The webhook configuration too: the operator's caBundle patch is one of the ClusterRole's rules.
KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "MutatingWebhookConfiguration"}


def main():
    values = {"watchNamespaces": WATCHED}
    out = helm.Chart.load(str(CHART)).render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    items, env = [], {}
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            if doc["kind"] in KINDS:
                items.append(doc)
            elif doc["kind"] == "Deployment":
                container = doc["spec"]["template"]["spec"]["containers"][0]
                env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
                service_account = doc["spec"]["template"]["spec"]["serviceAccountName"]
    rendered = {
        "list": {"apiVersion": "v1", "kind": "List", "items": items},
        "env": env,
        "serviceAccount": f"system:serviceaccount:{NAMESPACE}:{service_account}",
    }
    pathlib.Path(sys.argv[1]).write_text(json.dumps(rendered, indent=1))


if __name__ == "__main__":
    main()

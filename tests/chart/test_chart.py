"""Lint and render charts/odoo-ha-session with Helm's own engine (helm_python) and check
the rendered manifests: least-privilege RBAC matching the operator's calls, hardened
Pods, a narrowly scoped webhook, CRDs identical to crds/, and a schema that rejects bad
values."""

import json
import pathlib
import re
import shutil
import subprocess

import helm_python as helm
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "odoo-ha-session"
NS = "odoo-ha-system"
RELEASE = "ohs"


def render(values=None, namespace=NS, name=RELEASE):
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values or {}, name=name, namespace=namespace, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def default_docs():
    return render()


# -- lint ------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", [None, "v1.20.2", "v1.30.0"])
def test_lint_strict_is_clean(kube_version):
    report = helm.lint(str(CHART), strict=True, kube_version=kube_version)
    assert report["errors"] == [], report
    assert not [m for m in report["messages"] if m["severity"] >= 2], report


def test_lint_strict_with_every_option_on():
    values = {
        "webhook": {"certManager": {"enabled": True}},
        "metrics": {"serviceMonitor": {"enabled": True}},
        "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]},
    }
    report = helm.lint(str(CHART), values, strict=True, kube_version="v1.30.0")
    assert report["errors"] == [], report


# -- what is rendered --------------------------------------------------------


def test_default_objects(default_docs):
    kinds = sorted(d["kind"] for d in default_docs)
    assert kinds == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "MutatingWebhookConfiguration",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ]
    )
    for d in default_docs:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"):
            assert d["metadata"]["namespace"] == NS, d["kind"]


def test_deployment_wiring(default_docs):
    dep = one(default_docs, "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    svc = one(default_docs, "Service")
    mwc = one(default_docs, "MutatingWebhookConfiguration")
    # The operator patches the caBundle of the chart's configuration, and its certificate
    # names the Service the configuration calls.
    assert env["WEBHOOK_CONFIG_NAME"] == mwc["metadata"]["name"]
    assert env["WEBHOOK_CONFIG_MODE"] == "ca-bundle"
    assert env["WEBHOOK_SERVICE"] == svc["metadata"]["name"]
    assert env["WEBHOOK_SERVICE"] == mwc["webhooks"][0]["clientConfig"]["service"]["name"]
    assert int(env["WEBHOOK_SERVICE_PORT"]) == mwc["webhooks"][0]["clientConfig"]["service"]["port"]
    # The chart alone owns the shape: a changed failurePolicy or timeout is no operator
    # setting (and rolls no operator Pod).
    assert "WEBHOOK_FAILURE_POLICY" not in env
    assert "WEBHOOK_TIMEOUT_SECONDS" not in env
    assert env["CERT_MODE"] == "generate"
    assert "DISABLE_LEADER_ELECTION" not in env
    assert env["LEASE_NAME"]
    assert env["DEFAULT_SIDECAR_IMAGE"] == "ghcr.io/odoo-ha-session/sidecar:0.1.0"
    assert c["image"] == "ghcr.io/odoo-ha-session/operator:0.1.0"
    assert pod["serviceAccountName"] == one(default_docs, "ServiceAccount")["metadata"]["name"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    sel = dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["selector"] == sel
    assert one(default_docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == sel


def test_security_context_hardened(default_docs):
    pod = one(default_docs, "Deployment")["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 65532
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert "add" not in sc["capabilities"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert not sc.get("privileged")
    assert not pod.get("hostNetwork") and not pod.get("hostPID")


def test_webhook_scoped(default_docs):
    mwc = one(default_docs, "MutatingWebhookConfiguration")
    (w,) = mwc["webhooks"]
    assert w["sideEffects"] == "None"
    assert 1 <= w["timeoutSeconds"] <= 10
    assert w["admissionReviewVersions"] == ["v1"]
    (rule,) = w["rules"]
    assert rule["operations"] == ["CREATE"]
    assert rule["resources"] == ["pods"]
    assert rule["apiGroups"] == [""]
    assert w["objectSelector"] == {"matchExpressions": [{"key": "odoo-ha.io/session-store", "operator": "Exists"}]}
    exprs = w["namespaceSelector"]["matchExpressions"]
    excluded = next(e for e in exprs if e["key"] == "kubernetes.io/metadata.name")
    assert excluded["operator"] == "NotIn"
    assert set(excluded["values"]) == {"kube-system", NS}
    assert w["clientConfig"]["service"]["namespace"] == NS
    assert w["clientConfig"]["service"]["path"] == "/mutate-pods"
    assert "caBundle" not in w["clientConfig"], "generate mode: the operator fills caBundle"
    assert w["failurePolicy"] == "Ignore"


def test_webhook_excludes_the_release_namespace_it_is_installed_in():
    docs = render(namespace="platform")
    w = one(docs, "MutatingWebhookConfiguration")["webhooks"][0]
    excluded = next(e for e in w["namespaceSelector"]["matchExpressions"] if e["key"] == "kubernetes.io/metadata.name")
    assert set(excluded["values"]) == {"kube-system", "platform"}


# -- RBAC ------------------------------------------------------------------

# (apiGroup, resource) -> verbs on the stores' namespaces: what operator/src calls (see
# comments in charts/odoo-ha-session/templates/rbac.yaml). Any new verb must be added here
# on purpose. Cluster-wide install: in the ClusterRole; namespaced: a Role per namespace.
STORE_RULES = {
    ("odoo-ha.io", "odoosessionstores"): {"get", "list", "watch", "patch"},
    ("odoo-ha.io", "odoosessionstores/status"): {"patch"},
    ("apps", "statefulsets"): {"list", "watch", "patch", "create", "delete"},
    ("apps", "deployments"): {"list", "patch"},
    ("", "services"): {"list", "watch", "patch", "create", "delete"},
    ("", "secrets"): {"get", "list", "watch", "patch", "create", "delete"},
    ("networking.k8s.io", "networkpolicies"): {"list", "watch", "patch", "create", "delete"},
    ("", "pods"): {"list", "watch"},
    ("", "persistentvolumeclaims"): {"list", "delete"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("postgresql.cnpg.io", "clusters"): {"list", "patch", "create", "delete"},
    # Managed Redis with Sentinel: applied (patch + create), removed when replicas go back
    # to 1 or the backend changes (list by name + delete). Not watched.
    ("policy", "poddisruptionbudgets"): {"list", "patch", "create", "delete"},
}
# Cluster-scoped objects, each limited to one name: always in the ClusterRole.
CLUSTER_ONLY = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get"},
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"): {"patch"},
}
EXPECTED_CLUSTER = STORE_RULES | CLUSTER_ONLY
# What `delete` is for: objects a store's own change leaves behind while the store exists
# (garbage collection acts only once the owner is gone) and a deleted store's claims (no
# owner on 1.20). Nothing else may be deleted.
DELETED = {
    ("apps", "statefulsets"),
    ("", "services"),
    ("", "secrets"),
    ("networking.k8s.io", "networkpolicies"),
    ("policy", "poddisruptionbudgets"),
    ("postgresql.cnpg.io", "clusters"),
    ("", "persistentvolumeclaims"),
}
EXPECTED_NAMESPACED = {
    ("coordination.k8s.io", "leases"): {"create", "get", "update"},
    ("", "secrets"): {"update"},
}

# Kinds the operator builds an Api<...> for, and their resource.
KIND_RESOURCE = {
    "OdooSessionStore": ("odoo-ha.io", "odoosessionstores"),
    "StatefulSet": ("apps", "statefulsets"),
    "Deployment": ("apps", "deployments"),
    "Service": ("", "services"),
    "Secret": ("", "secrets"),
    "NetworkPolicy": ("networking.k8s.io", "networkpolicies"),
    "Pod": ("", "pods"),
    "PersistentVolumeClaim": ("", "persistentvolumeclaims"),
    "CustomResourceDefinition": ("apiextensions.k8s.io", "customresourcedefinitions"),
    "Lease": ("coordination.k8s.io", "leases"),
    "MutatingWebhookConfiguration": ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
    # apply_dynamic / prune_dynamic: CloudNativePG Clusters and PodDisruptionBudgets
    # (policy/v1, or policy/v1beta1 on 1.20).
    "DynamicObject": [("postgresql.cnpg.io", "clusters"), ("policy", "poddisruptionbudgets")],
}


def rules_table(role):
    table = {}
    for r in role["rules"]:
        for group in r["apiGroups"]:
            for res in r["resources"]:
                table.setdefault((group, res), set()).update(r["verbs"])
    return table


def test_rbac_is_exactly_what_the_operator_needs(default_docs):
    cluster = rules_table(one(default_docs, "ClusterRole"))
    assert cluster == EXPECTED_CLUSTER
    ns = rules_table(one(default_docs, "Role"))
    assert ns == EXPECTED_NAMESPACED
    for role in by_kind(default_docs, "ClusterRole") + by_kind(default_docs, "Role"):
        for r in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in r[field], r
            # Cluster-wide or namespaced: never escalate, bind or impersonate.
            assert not {"escalate", "bind", "impersonate"} & set(r["verbs"]), r


def test_rbac_names_are_pinned(default_docs):
    cluster = one(default_docs, "ClusterRole")
    mwc = next(r for r in cluster["rules"] if "mutatingwebhookconfigurations" in r["resources"])
    assert mwc["resourceNames"] == [one(default_docs, "MutatingWebhookConfiguration")["metadata"]["name"]]
    crd = next(r for r in cluster["rules"] if "customresourcedefinitions" in r["resources"])
    assert crd["resourceNames"] == ["clusters.postgresql.cnpg.io"]
    role = one(default_docs, "Role")
    env = {
        e["name"]: e.get("value")
        for e in one(default_docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    for r in role["rules"]:
        if "update" in r["verbs"] or "get" in r["verbs"]:
            assert r.get("resourceNames"), f"get/update must be limited to one name: {r}"
    names = {n for r in role["rules"] for n in r.get("resourceNames", [])}
    assert names == {env["LEASE_NAME"], env["WEBHOOK_TLS_SECRET"]}


def test_rbac_covers_every_api_the_operator_source_uses(default_docs):
    """A new Api<Kind> in operator/src without a rule here fails this test."""
    granted = set(rules_table(one(default_docs, "ClusterRole"))) | set(rules_table(one(default_docs, "Role")))
    kinds = set()
    for path in (ROOT / "operator" / "src").rglob("*.rs"):
        if path.name in ("mock_tests.rs",):
            continue
        kinds.update(re.findall(r"\b(?:Api|watch::api)(?:::)?<([A-Za-z]+)>", path.read_text()))
    kinds.discard("K")  # the generic apply helper; its callers' kinds are listed
    unknown = kinds - set(KIND_RESOURCE)
    assert not unknown, f"operator/src uses Api<{unknown}>: add its rule to rbac.yaml and KIND_RESOURCE"
    for kind in kinds:
        resources = KIND_RESOURCE[kind]
        for resource in resources if isinstance(resources, list) else [resources]:
            assert resource in granted, (kind, resource)
    # The kube events Recorder writes events.k8s.io Events.
    assert ("events.k8s.io", "events") in granted


def test_rbac_deletes_only_what_garbage_collection_cannot():
    for table in (EXPECTED_CLUSTER, EXPECTED_NAMESPACED):
        deleted = {k for k, verbs in table.items() if "delete" in verbs}
        assert deleted <= DELETED, deleted - DELETED
    assert {k for k, verbs in EXPECTED_CLUSTER.items() if "delete" in verbs} == DELETED


WATCHED = ["shop", "erp"]


@pytest.fixture(scope="module")
def namespaced_docs():
    return render({"watchNamespaces": WATCHED})


def test_namespaced_rbac_is_exact(namespaced_docs):
    """A namespaced install: the stores' rules in a Role per watched namespace, the
    ClusterRole only the two named cluster-scoped objects, nothing on Secrets outside the
    watched namespaces and the release's own."""
    docs = namespaced_docs
    cluster = one(docs, "ClusterRole")
    assert rules_table(cluster) == CLUSTER_ONLY
    assert all(r.get("resourceNames") for r in cluster["rules"]), cluster["rules"]
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in by_kind(docs, "Role")}
    assert set(roles) == {
        ("shop", f"{RELEASE}-odoo-ha-session-stores"),
        ("erp", f"{RELEASE}-odoo-ha-session-stores"),
    } | {(NS, f"{RELEASE}-odoo-ha-session")}
    for ns in WATCHED:
        assert rules_table(roles[(ns, f"{RELEASE}-odoo-ha-session-stores")]) == STORE_RULES
    own = roles[(NS, f"{RELEASE}-odoo-ha-session")]
    assert rules_table(own) == {
        ("coordination.k8s.io", "leases"): {"create", "get", "update"},
        ("", "secrets"): {"create", "get", "update"},
    }
    env = {
        e["name"]: e.get("value") for e in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    for r in own["rules"]:
        if r["resources"] == ["secrets"] and r["verbs"] != ["create"]:
            assert r["resourceNames"] == [env["WEBHOOK_TLS_SECRET"]], r
    # Each Role bound to the operator's ServiceAccount in its own namespace, nothing more.
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    bindings = {(b["metadata"]["namespace"], b["roleRef"]["name"]): b for b in by_kind(docs, "RoleBinding")}
    assert set(bindings) == set(roles)
    for b in by_kind(docs, "RoleBinding") + by_kind(docs, "ClusterRoleBinding"):
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NS}], b
    assert env["WATCH_NAMESPACES"] == "shop,erp"


def test_namespaced_webhook_only_in_watched_namespaces(namespaced_docs):
    w = one(namespaced_docs, "MutatingWebhookConfiguration")["webhooks"][0]
    exprs = w["namespaceSelector"]["matchExpressions"]
    assert {"key": "kubernetes.io/metadata.name", "operator": "In", "values": WATCHED} in exprs
    default_w = one(render(), "MutatingWebhookConfiguration")["webhooks"][0]
    assert not [e for e in default_w["namespaceSelector"]["matchExpressions"] if e["operator"] == "In"]
    assert "WATCH_NAMESPACES" not in {
        e["name"] for e in one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    }


def test_namespaced_with_cert_manager_and_no_cnpg_has_no_cluster_role():
    docs = render(
        {"watchNamespaces": ["shop"], "webhook": {"certManager": {"enabled": True}}, "rbac": {"cloudNativePG": False}}
    )
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    (role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["namespace"] == "shop"]
    assert rules_table(role) == {k: v for k, v in STORE_RULES.items() if k[0] != "postgresql.cnpg.io"}


@pytest.mark.parametrize("bad", [["Shop"], ["a_b"], ["shop", "shop"], "shop"])
def test_schema_rejects_bad_watch_namespaces(bad):
    with pytest.raises(helm.HelmError) as err:
        helm.Chart.load(str(CHART)).validate_schema({"watchNamespaces": bad})
    assert "watchNamespaces" in str(err.value)


def test_rbac_with_cert_manager_and_no_leader_election():
    docs = render(
        {
            "replicaCount": 1,
            "leaderElection": {"enabled": False},
            "webhook": {"certManager": {"enabled": True}},
            "rbac": {"cloudNativePG": False},
        }
    )
    cluster = rules_table(one(docs, "ClusterRole"))
    assert ("admissionregistration.k8s.io", "mutatingwebhookconfigurations") not in cluster
    assert ("postgresql.cnpg.io", "clusters") not in cluster
    assert not by_kind(docs, "Role"), "no Lease and no Secret writes: no namespaced Role"
    assert not by_kind(docs, "PodDisruptionBudget"), "one replica: no PDB"


# -- non-default values ------------------------------------------------------


def test_cert_manager_mode():
    docs = render({"webhook": {"certManager": {"enabled": True}}})
    cert = one(docs, "Certificate")
    issuer = one(docs, "Issuer")
    assert issuer["spec"] == {"selfSigned": {}}
    svc = one(docs, "Service")["metadata"]["name"]
    assert f"{svc}.{NS}.svc" in cert["spec"]["dnsNames"]
    mwc = one(docs, "MutatingWebhookConfiguration")
    assert mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NS}/{cert['metadata']['name']}"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["CERT_MODE"] == "files"
    assert env["UNMANAGED_WEBHOOK_CONFIG"] == "true"
    assert env["CERT_MANAGER_CERTIFICATE"] == f"{NS}/{cert['metadata']['name']}"
    assert pod["volumes"][0]["secret"]["secretName"] == cert["spec"]["secretName"]
    assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == env["CERT_DIR"]


def test_cert_manager_with_own_issuer():
    docs = render(
        {"webhook": {"certManager": {"enabled": True, "issuerRef": {"kind": "ClusterIssuer", "name": "corp-ca"}}}}
    )
    assert not by_kind(docs, "Issuer")
    assert one(docs, "Certificate")["spec"]["issuerRef"] == {"kind": "ClusterIssuer", "name": "corp-ca"}


def test_service_monitor_network_policy_and_images():
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    docs = render(
        {
            "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}, "interval": "15s"}},
            "networkPolicy": {"metricsFrom": [peer]},
            "image": {"repository": "localhost/odoo-session-operator", "tag": "dev", "pullPolicy": "Never"},
            "defaultImages": {"sidecar": "localhost/odoo-session-sidecar:dev", "redis": "localhost/redis:7"},
            "webhook": {"failurePolicy": "Fail", "timeoutSeconds": 3},
        }
    )
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["endpoints"][0]["interval"] == "15s"
    np = one(docs, "NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress"]
    webhook_rule, metrics_rule = np["spec"]["ingress"]
    assert "from" not in webhook_rule and webhook_rule["ports"][0]["port"] == "webhook"
    assert metrics_rule["from"] == [peer] and metrics_rule["ports"][0]["port"] == "metrics"
    c = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "localhost/odoo-session-operator:dev"
    assert c["imagePullPolicy"] == "Never"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DEFAULT_SIDECAR_IMAGE"] == "localhost/odoo-session-sidecar:dev"
    assert env["DEFAULT_REDIS_IMAGE"] == "localhost/redis:7"
    w = one(docs, "MutatingWebhookConfiguration")["webhooks"][0]
    assert w["failurePolicy"] == "Fail" and w["timeoutSeconds"] == 3
    # Only the chart's configuration carries them (one writer); the operator is not told.
    assert "WEBHOOK_FAILURE_POLICY" not in env and "WEBHOOK_TIMEOUT_SECONDS" not in env


def test_network_policy_off_and_metrics_closed_by_default(default_docs):
    np = one(default_docs, "NetworkPolicy")
    assert len(np["spec"]["ingress"]) == 1, "metrics closed unless metricsFrom is set"
    assert not by_kind(render({"networkPolicy": {"enabled": False}}), "NetworkPolicy")


def test_single_replica_without_leader_election():
    docs = render({"replicaCount": 1, "leaderElection": {"enabled": False}})
    env = {
        e["name"]: e.get("value") for e in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["DISABLE_LEADER_ELECTION"] == "true"
    assert "LEASE_NAME" not in env


def test_pdb_api_version_follows_the_cluster():
    # Offline rendering assumes a current Kubernetes: policy/v1.
    assert one(render(), "PodDisruptionBudget")["apiVersion"] == "policy/v1"


# -- CRDs --------------------------------------------------------------------


def test_chart_crds_identical_to_repository_crds():
    repo = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert repo and repo == chart
    for name in repo:
        assert (ROOT / "crds" / name).read_bytes() == (CHART / "crds" / name).read_bytes(), (
            f"{name}: run `cargo run -p odoo-session-operator --bin crdgen -- charts/odoo-ha-session/crds`"
        )
    crds = [c["name"] for c in helm.Chart.load(str(CHART)).crds]
    assert any("odoosessionstores.odoo-ha.io" in n for n in crds), crds


# -- schema ------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, needle",
    [
        ({"replicaCount": 0}, "replicaCount"),
        ({"replicaCount": "two"}, "replicaCount"),
        ({"replicaCount": 3, "leaderElection": {"enabled": False}}, "leaderElection"),
        ({"webhook": {"timeoutSeconds": 30}}, "timeoutSeconds"),
        ({"webhook": {"failurePolicy": "Maybe"}}, "failurePolicy"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"image": {"repository": ""}}, "repository"),
        ({"logFormat": "xml"}, "logFormat"),
        ({"unknownKey": True}, "unknownKey"),
        ({"webhook": {"certManager": {"enabled": "yes"}}}, "enabled"),
        ({"webhook": {"certManager": {"enabled": True, "issuerRef": {"kind": "Vault"}}}}, "kind"),
        (
            {
                "securityContext": {
                    "runAsNonRoot": False,
                    "readOnlyRootFilesystem": True,
                    "allowPrivilegeEscalation": False,
                }
            },
            "runAsNonRoot",
        ),
        (
            {
                "securityContext": {
                    "runAsNonRoot": True,
                    "readOnlyRootFilesystem": False,
                    "allowPrivilegeEscalation": False,
                }
            },
            "readOnlyRootFilesystem",
        ),
        ({"podSecurityContext": {"runAsNonRoot": True, "runAsUser": 0}}, "runAsUser"),
        ({"metrics": {"serviceMonitor": {"enabled": True, "interval": "often"}}}, "interval"),
        ({"podDisruptionBudget": {"enabled": True, "minAvailable": "half"}}, "minAvailable"),
        ({"leaderElection": {"enabled": True, "leaseDurationSeconds": 1}}, "leaseDurationSeconds"),
        ({"serviceAccount": {"create": True, "name": "Not_A_Name"}}, "name"),
    ],
)
def test_schema_rejects_bad_values(values, needle):
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError) as err:
        chart.render(values, name=RELEASE, namespace=NS)
    assert needle in str(err.value), str(err.value)


def test_template_guard_names_the_problem(tmp_path):
    """Without the schema (a chart copy that lost it), the template still refuses two
    replicas without leader election, naming the setting."""
    import shutil

    copy = tmp_path / "chart"
    shutil.copytree(CHART, copy)
    (copy / "values.schema.json").unlink()
    chart = helm.Chart.load(str(copy))
    with pytest.raises(helm.HelmError) as err:
        chart.render({"replicaCount": 2, "leaderElection": {"enabled": False}}, name=RELEASE, namespace=NS)
    assert "leaderElection.enabled" in str(err.value), str(err.value)


def test_schema_accepts_documented_values():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    helm.Chart.load(str(CHART)).validate_schema(values)


def test_every_value_is_documented():
    """Each key of values.yaml has a comment line above it, or an enclosing key has."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    key = re.compile(r"^(\s*)([A-Za-z][A-Za-z0-9]*):")

    def commented(i):
        return i > 0 and lines[i - 1].strip().startswith("#")

    undocumented = []
    for i, line in enumerate(lines):
        m = key.match(line)
        if not m:
            continue
        documented = commented(i)
        k, level = i - 1, len(m.group(1))
        while not documented and k >= 0 and level > 0:
            pm = key.match(lines[k])
            if pm and len(pm.group(1)) < level:
                level = len(pm.group(1))
                documented = commented(k)
            k -= 1
        if not documented:
            undocumented.append(m.group(2))
    assert not undocumented, f"values without a comment: {undocumented}"


def test_every_schema_property_is_described():
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    missing = []

    def walk(node, path):
        for name, child in node.get("properties", {}).items():
            if not child.get("description") and not path.endswith(("securityContext", "SecurityContext")):
                missing.append(f"{path}.{name}")
            walk(child, f"{path}.{name}")

    walk(schema, "values")
    assert not missing, missing


def test_webhook_matches_what_the_operator_reads(default_docs):
    """The operator's constants (path served, labels read) are the ones the chart's
    configuration uses."""
    src = (ROOT / "operator" / "src" / "webhook" / "config.rs").read_text()
    crd = (ROOT / "operator" / "src" / "crd.rs").read_text()

    def const(text, name):
        m = re.search(rf'pub const {name}: &str = "([^"]+)";', text)
        assert m, f"{name} not found in the operator source"
        return m.group(1)

    w = one(default_docs, "MutatingWebhookConfiguration")["webhooks"][0]
    assert w["clientConfig"]["service"]["path"] == const(src, "MUTATE_PATH")
    assert w["objectSelector"]["matchExpressions"][0]["key"] == const(crd, "STORE_LABEL")
    keys = [e["key"] for e in w["namespaceSelector"]["matchExpressions"]]
    assert const(src, "NAMESPACE_OPT_OUT_LABEL") in keys
    assert w["name"] == const(src, "WEBHOOK_NAME")


# -- one writer per field ------------------------------------------------------


def field_paths(obj, at=""):
    """Leaf paths of a manifest as server-side apply tracks them: list items of `webhooks`
    by their `name` key (an associative list), other lists whole (atomic)."""
    paths = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            paths |= field_paths(v, f"{at}.{k}")
    elif isinstance(obj, list) and obj and all(isinstance(i, dict) and "name" in i for i in obj):
        for item in obj:
            paths |= field_paths(item, f"{at}[name={item['name']}]")
    else:
        paths.add(at)
    return paths


# Identity fields every applier names: the object's kind and name and the list item's key.
# Server-side apply shares their ownership and never reports a conflict on them.
IDENTITY = {".apiVersion", ".kind", ".metadata.name"}


def operator_webhook_patch(name):
    """What the operator applies, printed by the operator's own builder (bin webhookgen)."""
    cargo = shutil.which("cargo")
    if not cargo:
        pytest.skip("cargo not installed: cannot print the operator's webhook patch")
    out = subprocess.run(
        [cargo, "run", "-q", "-p", "odoo-session-operator", "--bin", "webhookgen", "--", name],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"webhook": {"failurePolicy": "Fail", "timeoutSeconds": 10, "servicePort": 8443}},
        {"fullnameOverride": "other", "webhook": {"certManager": {"enabled": True}}},
    ],
)
def test_operator_and_chart_write_disjoint_webhook_fields(values):
    """The chart owns the configuration's shape, the operator only its caBundle: no field of
    the operator's server-side apply is one the chart renders, so neither `helm upgrade`
    (server-side apply as manager `helm`, or the three-way merge) nor the operator's apply
    can conflict with or undo the other."""
    docs = render(values)
    mwc = one(docs, "MutatingWebhookConfiguration")
    env = {
        e["name"]: e.get("value") for e in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    patch = operator_webhook_patch(mwc["metadata"]["name"])
    chart_fields = field_paths(mwc)
    operator_fields = field_paths(patch)
    keys = {f"{p.split('].')[0]}].name" for p in operator_fields if "[name=" in p}
    assert (operator_fields - IDENTITY - keys) == {".webhooks[name=sidecar.odoo-ha.io].clientConfig.caBundle"}
    assert (operator_fields - IDENTITY - keys) & chart_fields == set()
    # The webhook the operator names exists in the chart's (else its apply would add a
    # second, invalid webhook), and the object is the one the Deployment is told about.
    assert keys <= chart_fields
    assert patch["metadata"]["name"] == env["WEBHOOK_CONFIG_NAME"]
    assert not any("caBundle" in p for p in chart_fields), "the chart must not render caBundle"
    if values.get("webhook", {}).get("certManager", {}).get("enabled"):
        # cert-manager's injector writes the caBundle: the operator writes nothing.
        assert env["UNMANAGED_WEBHOOK_CONFIG"] == "true"
        assert "WEBHOOK_CONFIG_MODE" not in env
    else:
        assert env["WEBHOOK_CONFIG_MODE"] == "ca-bundle"
        assert "UNMANAGED_WEBHOOK_CONFIG" not in env


def test_operator_never_writes_a_crd():
    """The CRD's one writer is the chart's crds/ (Helm installs it once; upgrades are
    `kubectl apply --server-side -f crds/`): the operator only reads CloudNativePG's, and
    RBAC gives it `get` on that one name."""
    for path in (ROOT / "operator" / "src").rglob("*.rs"):
        text = path.read_text()
        if "Api<CustomResourceDefinition>" not in text:
            continue
        assert path.name == "dereference.rs", path
        assert not re.search(r"crds\s*\.\s*(patch|create|replace|delete)", text), path
    cluster = rules_table(one(render(), "ClusterRole"))
    assert cluster[("apiextensions.k8s.io", "customresourcedefinitions")] == {"get"}


@pytest.mark.parametrize(
    "values",
    [{}, {"webhook": {"certManager": {"enabled": True}}, "replicaCount": 1, "leaderElection": {"enabled": False}}],
)
def test_every_operator_variable_is_one_the_operator_reads(values):
    """A misspelt variable would be ignored silently: each must be a flag's `env` in main.rs."""
    main_rs = (ROOT / "operator" / "src" / "main.rs").read_text()
    known = set(re.findall(r'env = "([A-Z_]+)"', main_rs)) | {"RUST_LOG"}
    c = one(render(values), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    names = {e["name"] for e in c["env"]}
    assert names <= known, f"the operator reads no {sorted(names - known)}"

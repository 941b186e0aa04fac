//! The MutatingWebhookConfiguration: who writes which field.
//!
//! One writer per field. Under the chart (`--webhook-config-mode ca-bundle`, the default) the
//! chart owns the object and its shape (rules, selectors, failurePolicy, timeouts); the
//! operator only server-side applies `webhooks[name=sidecar.odoo-ha.io].clientConfig.caBundle`
//! ([`ca_bundle_patch`]) with its field manager, a field the chart never renders. Without the
//! chart (`full`: the operator run outside the cluster, tests) the operator applies the
//! whole object ([`build`]). With cert-manager the operator writes nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};

use crate::crd::{MANAGER, STORE_LABEL};
use crate::error::Result;

/// Path the webhook serves.
pub const MUTATE_PATH: &str = "/mutate-pods";
/// Namespace label that turns injection off for a whole namespace.
pub const NAMESPACE_OPT_OUT_LABEL: &str = "odoo-ha.io/injection";
/// Name of the one webhook in the configuration (the key of the `webhooks` list).
pub const WEBHOOK_NAME: &str = "sidecar.odoo-ha.io";

/// The only fields the operator applies to the chart's configuration: its identity (kind,
/// name, the webhook's list key) and the caBundle. Nothing the chart renders, so Helm's
/// server-side apply (manager `helm`, no force) and its three-way merge never meet the
/// operator's manager on a field (tests/chart/test_chart.py checks this against the
/// rendered chart through `webhookgen`).
pub fn ca_bundle_patch(config_name: &str, ca_pem: &str) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": config_name},
        "webhooks": [{
            "name": WEBHOOK_NAME,
            "clientConfig": {"caBundle": ByteString(ca_pem.as_bytes().to_vec())},
        }],
    })
}

/// Server-side applies [`ca_bundle_patch`] with the operator's field manager. The same
/// manager name as the earlier whole-object apply, on purpose: applying the smaller set
/// releases every other field it used to own (the chart's manager co-owns them, so they
/// stay), which is what lets a later `helm upgrade` change them without a conflict.
/// The object must exist (the chart creates it): a missing one fails (no `create` right).
pub async fn patch_ca_bundle(client: &Client, config_name: &str, ca_pem: &str) -> Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    api.patch(
        config_name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&ca_bundle_patch(config_name, ca_pem)),
    )
    .await?;
    Ok(())
}

/// Where the API server sends admission requests.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// The operator's Service in the cluster (normal deployments).
    Service {
        namespace: String,
        name: String,
        port: i32,
    },
    /// A URL (the operator run outside the cluster, e.g. in integration tests).
    Url(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    pub name: String,
    pub target: Target,
    /// PEM CA; None with cert-manager (its CA injector fills it).
    pub ca_bundle: Option<String>,
    /// `Ignore` (default) or `Fail`.
    pub failure_policy: String,
    pub operator_namespace: String,
    /// `<namespace>/<certificate>` for cert-manager's `inject-ca-from`.
    pub cert_manager_certificate: Option<String>,
    pub timeout_seconds: i32,
    /// A namespaced operator's namespaces (`--watch-namespaces`): the API server calls the
    /// webhook for these only. Empty: every namespace.
    pub watch_namespaces: Vec<String>,
}

pub fn build(p: &Params) -> MutatingWebhookConfiguration {
    let client_config = WebhookClientConfig {
        ca_bundle: p
            .ca_bundle
            .as_ref()
            .map(|pem| ByteString(pem.clone().into_bytes())),
        service: match &p.target {
            Target::Service {
                namespace,
                name,
                port,
            } => Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some(MUTATE_PATH.into()),
                port: Some(*port),
            }),
            Target::Url(_) => None,
        },
        url: match &p.target {
            Target::Url(u) => Some(u.clone()),
            Target::Service { .. } => None,
        },
    };
    let annotations = p
        .cert_manager_certificate
        .as_ref()
        .map(|c| BTreeMap::from([("cert-manager.io/inject-ca-from".to_string(), c.clone())]));
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(p.name.clone()),
            annotations,
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                crate::crd::MANAGER.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: WEBHOOK_NAME.into(),
            admission_review_versions: vec!["v1".into()],
            client_config,
            failure_policy: Some(p.failure_policy.clone()),
            match_policy: Some("Equivalent".into()),
            // Another webhook may add containers after us: run again so they get the variables.
            reinvocation_policy: Some("IfNeeded".into()),
            side_effects: "None".into(),
            timeout_seconds: Some(p.timeout_seconds),
            object_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: STORE_LABEL.into(),
                    operator: "Exists".into(),
                    values: None,
                }]),
                match_labels: None,
            }),
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(
                    vec![
                        // `kubernetes.io/metadata.name` is set on every namespace from 1.21 on.
                        LabelSelectorRequirement {
                            key: "kubernetes.io/metadata.name".into(),
                            operator: "NotIn".into(),
                            values: Some(vec!["kube-system".into(), p.operator_namespace.clone()]),
                        },
                        LabelSelectorRequirement {
                            key: NAMESPACE_OPT_OUT_LABEL.into(),
                            operator: "NotIn".into(),
                            values: Some(vec!["disabled".into()]),
                        },
                    ]
                    .into_iter()
                    .chain(
                        (!p.watch_namespaces.is_empty()).then(|| LabelSelectorRequirement {
                            key: "kubernetes.io/metadata.name".into(),
                            operator: "In".into(),
                            values: Some(p.watch_namespaces.clone()),
                        }),
                    )
                    .collect(),
                ),
                match_labels: None,
            }),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec!["".into()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(vec!["CREATE".into()]),
                resources: Some(vec!["pods".into()]),
                scope: Some("Namespaced".into()),
            }]),
            match_conditions: None,
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Leaf paths of a JSON object, list items named by their `name` key.
    fn leaves(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => m
                .iter()
                .for_each(|(k, v)| leaves(v, format!("{at}.{k}"), out)),
            Value::Array(items) => items.iter().for_each(|i| {
                let key = i["name"].as_str().unwrap_or("?");
                leaves(i, format!("{at}[name={key}]"), out)
            }),
            _ => out.push(at),
        }
    }

    #[test]
    fn ca_bundle_patch_sets_only_the_ca_bundle() {
        let v = ca_bundle_patch("ohs-odoo-ha-session", "PEM\n");
        let mut got = Vec::new();
        leaves(&v, String::new(), &mut got);
        got.sort();
        assert_eq!(
            got,
            vec![
                ".apiVersion",
                ".kind",
                ".metadata.name",
                ".webhooks[name=sidecar.odoo-ha.io].clientConfig.caBundle",
                ".webhooks[name=sidecar.odoo-ha.io].name",
            ]
        );
        // caBundle is base64 of the PEM, as the API expects.
        assert_eq!(v["webhooks"][0]["clientConfig"]["caBundle"], "UEVNCg==");
        assert_eq!(
            v["webhooks"][0]["name"],
            build(&params()).webhooks.unwrap()[0].name
        );
    }

    fn params() -> Params {
        Params {
            name: "odoo-session-operator".into(),
            target: Target::Service {
                namespace: "odoo-ha-system".into(),
                name: "odoo-session-operator".into(),
                port: 443,
            },
            ca_bundle: Some("PEM".into()),
            failure_policy: "Ignore".into(),
            operator_namespace: "odoo-ha-system".into(),
            cert_manager_certificate: None,
            timeout_seconds: 5,
            watch_namespaces: vec![],
        }
    }

    #[test]
    fn a_namespaced_operator_is_called_for_its_namespaces_only() {
        let exprs = |p: &Params| {
            serde_json::to_value(build(p)).expect("json")["webhooks"][0]["namespaceSelector"]
                ["matchExpressions"]
                .clone()
        };
        let cluster = exprs(&params());
        assert_eq!(cluster.as_array().map(Vec::len), Some(2), "{cluster}");
        let mut p = params();
        p.watch_namespaces = vec!["shop".into(), "erp".into()];
        let namespaced = exprs(&p);
        assert_eq!(
            namespaced[2],
            serde_json::json!({"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["shop", "erp"]})
        );
        assert_eq!(namespaced[0], cluster[0]);
    }

    #[test]
    fn pod_create_only_scoped_by_label_and_namespace() {
        let cfg = build(&params());
        let v = serde_json::to_value(&cfg).expect("json");
        let w = &v["webhooks"][0];
        assert_eq!(w["rules"][0]["operations"], serde_json::json!(["CREATE"]));
        assert_eq!(w["rules"][0]["resources"], serde_json::json!(["pods"]));
        assert_eq!(w["sideEffects"], "None");
        assert_eq!(w["reinvocationPolicy"], "IfNeeded");
        assert_eq!(w["failurePolicy"], "Ignore");
        assert_eq!(
            w["objectSelector"]["matchExpressions"][0]["key"],
            STORE_LABEL
        );
        assert_eq!(
            w["objectSelector"]["matchExpressions"][0]["operator"],
            "Exists"
        );
        let excluded = &w["namespaceSelector"]["matchExpressions"][0]["values"];
        assert_eq!(
            excluded,
            &serde_json::json!(["kube-system", "odoo-ha-system"])
        );
        assert_eq!(w["clientConfig"]["service"]["path"], MUTATE_PATH);
        assert!(w["clientConfig"].get("url").is_none());
        assert!(w["timeoutSeconds"].as_i64().is_some_and(|t| t <= 10));
    }

    #[test]
    fn url_target_and_cert_manager() {
        let mut p = params();
        p.target = Target::Url("https://127.0.0.1:8443/mutate-pods".into());
        p.ca_bundle = None;
        p.cert_manager_certificate = Some("odoo-ha-system/webhook".into());
        let v = serde_json::to_value(build(&p)).expect("json");
        assert_eq!(
            v["webhooks"][0]["clientConfig"]["url"],
            "https://127.0.0.1:8443/mutate-pods"
        );
        assert!(v["webhooks"][0]["clientConfig"].get("caBundle").is_none());
        assert_eq!(
            v["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            "odoo-ha-system/webhook"
        );
    }
}

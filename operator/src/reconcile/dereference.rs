//! Dereference: read what the build and status steps need from the API server (the
//! managed backend's Secret and StatefulSet, the external backend's Secrets, whether
//! CloudNativePG is installed, the opted-in Pods) into one typed value. Nothing is decided
//! here.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use kube::Client;

use crate::builders::cnpg::CNPG_CRD;
use crate::builders::connection::managed_names;
use crate::builders::secret::existing_password;
use crate::builders::ValidStore;
use crate::crd::{Backend, SIDECAR_CONTAINER, STORE_LABEL};
use crate::error::Result;

/// State of a Secret an external backend points at (its URI's, its CA's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExternalSecret {
    Missing,
    KeyMissing,
    Present,
}

impl ExternalSecret {
    /// Whether `secret` (None: not found) holds a non-empty `key`.
    pub fn of(secret: Option<&Secret>, key: &str) -> ExternalSecret {
        let Some(s) = secret else {
            return ExternalSecret::Missing;
        };
        let has_key = s
            .data
            .as_ref()
            .is_some_and(|d| d.get(key).is_some_and(|v| !v.0.is_empty()))
            || s.string_data
                .as_ref()
                .is_some_and(|d| d.get(key).is_some_and(|v| !v.is_empty()));
        if has_key {
            ExternalSecret::Present
        } else {
            ExternalSecret::KeyMissing
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Dereferenced {
    /// Password already kept in the managed backend's Secret.
    pub managed_password: Option<String>,
    /// The external backend's URI Secret (`uriSecretRef`).
    pub external_secret: Option<ExternalSecret>,
    /// The external backend's CA Secret (`caSecretRef`), when it names one.
    pub external_ca_secret: Option<ExternalSecret>,
    /// Whether `clusters.postgresql.cnpg.io` is installed (only looked up for that backend).
    pub cnpg_installed: bool,
    /// Live opted-in Pods without the sidecar (names).
    pub pods_without_sidecar: Vec<String>,
    /// Injected Pods whose sidecar or target containers keep failing, or are settling.
    pub pods: super::pods::PodsSummary,
    /// `spec.serviceName` of the managed backend's existing StatefulSet (immutable: a
    /// change between a single Redis and Redis with Sentinel recreates the StatefulSet).
    pub statefulset_service_name: Option<String>,
}

pub async fn dereference(client: &Client, store: &ValidStore) -> Result<Dereferenced> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &store.namespace);
    let mut observed = Dereferenced::default();
    match &store.spec.backend {
        Backend::Managed(_) => {
            let (name, _) = managed_names(store);
            observed.managed_password = secrets
                .get_opt(&name)
                .await?
                .as_ref()
                .and_then(existing_password);
            // A list by name needs only the `list` verb the controller's watch already has.
            let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &store.namespace);
            observed.statefulset_service_name = statefulsets
                .list(&ListParams::default().fields(&format!("metadata.name={name}")))
                .await?
                .items
                .into_iter()
                .next()
                .and_then(|s| s.spec.service_name);
        }
        Backend::External(ext) => {
            let r = &ext.uri_secret_ref;
            let uri_secret = secrets.get_opt(&r.name).await?;
            observed.external_secret = Some(ExternalSecret::of(uri_secret.as_ref(), &r.key));
            // A Secret volume that cannot be mounted keeps the injected Pods in
            // ContainerCreating: the status says so before the Pods show it.
            if let Some(ca) = &ext.ca_secret_ref {
                let ca_secret = if ca.name == r.name {
                    uri_secret
                } else {
                    secrets.get_opt(&ca.name).await?
                };
                observed.external_ca_secret = Some(ExternalSecret::of(ca_secret.as_ref(), &ca.key));
            }
        }
        Backend::CloudNativePg(_) => {
            let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
            observed.cnpg_installed = crds.get_opt(CNPG_CRD).await?.is_some();
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &store.namespace);
    let selector = format!("{STORE_LABEL}={}", store.name);
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    observed.pods_without_sidecar = list
        .items
        .iter()
        .filter(|p| lacks_sidecar(p))
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    observed.pods = super::pods::summarize(
        list.items.iter().filter(|p| !lacks_sidecar(p)),
        &store.spec.injection.containers,
        jiff::Timestamp::now(),
    );
    Ok(observed)
}

/// A live Pod (not finished, not being deleted) with neither a sidecar container nor init container.
pub fn lacks_sidecar(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    let Some(spec) = &pod.spec else { return false };
    let in_containers = spec.containers.iter().any(|c| c.name == SIDECAR_CONTAINER);
    let in_init = spec
        .init_containers
        .as_ref()
        .is_some_and(|l| l.iter().any(|c| c.name == SIDECAR_CONTAINER));
    !(in_containers || in_init)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    /// Issue 9 item 3: one reading of a Secret for the URI's key and the CA's.
    #[test]
    fn external_secret_states() {
        let secret =
            |v: serde_json::Value| -> Secret { serde_json::from_value(v).expect("secret") };
        assert_eq!(ExternalSecret::of(None, "ca.crt"), ExternalSecret::Missing);
        let s = secret(serde_json::json!({"metadata": {"name": "ca"},
            "data": {"ca.crt": "LS0tLS1CRUdJTg==", "empty": ""}}));
        assert_eq!(
            ExternalSecret::of(Some(&s), "ca.crt"),
            ExternalSecret::Present
        );
        assert_eq!(
            ExternalSecret::of(Some(&s), "empty"),
            ExternalSecret::KeyMissing
        );
        assert_eq!(
            ExternalSecret::of(Some(&s), "uri"),
            ExternalSecret::KeyMissing
        );
        let bare = secret(serde_json::json!({"metadata": {"name": "ca"}}));
        assert_eq!(
            ExternalSecret::of(Some(&bare), "ca.crt"),
            ExternalSecret::KeyMissing
        );
    }

    #[test]
    fn sidecar_detection() {
        assert!(lacks_sidecar(&pod(
            serde_json::json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "odoo"}]}})
        )));
        assert!(!lacks_sidecar(&pod(
            serde_json::json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "odoo"}, {"name": SIDECAR_CONTAINER}]}})
        )));
        assert!(!lacks_sidecar(&pod(
            serde_json::json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "odoo"}], "initContainers": [{"name": SIDECAR_CONTAINER}]}})
        )));
        assert!(!lacks_sidecar(&pod(
            serde_json::json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "odoo"}]}, "status": {"phase": "Succeeded"}})
        )));
    }
}

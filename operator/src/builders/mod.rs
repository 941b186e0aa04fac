//! Pure builders: spec in, Kubernetes objects out. No I/O here, so every one is unit tested.

pub mod cnpg;
pub mod connection;
pub mod managed;
pub mod network_policy;
pub mod pdb;
pub mod postgres;
pub mod redis;
pub mod redis_ha;
pub mod secret;
pub mod sidecar;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Capabilities, SeccompProfile, SecurityContext};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::crd::{OdooSessionStoreSpec, MANAGER};

/// A store that passed validation: everything the builders need, nothing optional.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidStore {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub generation: Option<i64>,
    pub spec: OdooSessionStoreSpec,
}

impl ValidStore {
    /// Controller owner reference: garbage collection removes what we create with the store.
    pub fn owner_ref(&self) -> OwnerReference {
        OwnerReference {
            api_version: "odoo-ha.io/v1alpha1".into(),
            kind: "OdooSessionStore".into(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    /// Metadata for an object owned by this store.
    pub fn owned_meta(&self, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.owner_ref()]),
            ..ObjectMeta::default()
        }
    }
}

/// What the builders take from outside the spec: default images (operator flags) and the
/// API server's version (features differ between 1.20 and current releases).
#[derive(Clone, Debug, PartialEq)]
pub struct Defaults {
    pub sidecar_image: String,
    pub redis_image: String,
    pub postgres_image: String,
    /// (major, minor) of the API server, when known.
    pub server_version: Option<(u32, u32)>,
    /// Namespace the operator runs in: its Pods may reach the Sentinels (status).
    pub operator_namespace: Option<String>,
}

impl Defaults {
    fn at_least(&self, minor: u32) -> bool {
        matches!(self.server_version, Some((major, m)) if major > 1 || (major == 1 && m >= minor))
    }

    /// `persistentVolumeClaimRetentionPolicy` exists from 1.27 on; an older server's
    /// server-side apply rejects fields it does not know.
    pub fn pvc_retention_policy(&self) -> bool {
        self.at_least(27)
    }

    /// PodDisruptionBudget `policy/v1` exists from 1.21 on; 1.20 serves only `policy/v1beta1`.
    /// Unknown version: assume a current cluster.
    pub fn pdb_policy_v1(&self) -> bool {
        self.server_version.is_none() || self.at_least(21)
    }
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            sidecar_image: format!(
                "ghcr.io/odoo-ha-session/sidecar:{}",
                env!("CARGO_PKG_VERSION")
            ),
            redis_image: "redis:7.4".into(),
            postgres_image: "postgres:17".into(),
            server_version: None,
            operator_namespace: None,
        }
    }
}

/// Recommended labels on everything the operator creates for a store.
pub fn labels(store: &str, name: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), name.to_string()),
        ("app.kubernetes.io/instance".to_string(), store.to_string()),
        (
            "app.kubernetes.io/component".to_string(),
            component.to_string(),
        ),
        (
            "app.kubernetes.io/part-of".to_string(),
            "odoo-ha-session".to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGER.to_string(),
        ),
    ])
}

/// Labels that select the backend Pods of a store (a stable subset of `labels`).
pub fn selector_labels(store: &str, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), name.to_string()),
        ("app.kubernetes.io/instance".to_string(), store.to_string()),
    ])
}

/// Non-root, read-only root filesystem, no capabilities, default seccomp profile.
pub fn hardened_security_context(uid: Option<i64>) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: uid,
        run_as_group: uid,
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::crd::OdooSessionStoreSpec;

    pub fn store(spec: serde_json::Value) -> ValidStore {
        ValidStore {
            name: "sessions".into(),
            namespace: "shop".into(),
            uid: "0000-1111".into(),
            generation: Some(1),
            spec: serde_json::from_value::<OdooSessionStoreSpec>(spec).expect("spec parses"),
        }
    }

    /// Managed Redis with the default replicas (3, with Sentinel).
    pub fn managed_redis() -> ValidStore {
        store(serde_json::json!({"driver": "redis", "backend": {"managed": {}}}))
    }

    /// Managed Redis, one instance without Sentinel (today's shape).
    pub fn single_redis() -> ValidStore {
        store(serde_json::json!({"driver": "redis", "backend": {"managed": {"replicas": 1}}}))
    }

    /// An external backend (URI in Secret `r`) of `driver`, with the fields of `extra`
    /// added to `spec.backend.external`.
    pub fn external(driver: &str, extra: serde_json::Value) -> ValidStore {
        let mut external = serde_json::json!({"uriSecretRef": {"name": "r"}});
        if let (Some(e), Some(more)) = (external.as_object_mut(), extra.as_object()) {
            e.extend(more.clone());
        }
        store(serde_json::json!({"driver": driver, "backend": {"external": external}}))
    }

    pub fn managed_postgres() -> ValidStore {
        store(serde_json::json!({"driver": "db", "backend": {"managed": {"storageSize": "5Gi"}}}))
    }
}

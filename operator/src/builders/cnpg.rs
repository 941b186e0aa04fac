//! CloudNativePG `Cluster` (`postgresql.cnpg.io/v1`), built as a dynamic object because its
//! types are not part of k8s-openapi.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::connection::cnpg_cluster_name;
use super::secret::{PG_DATABASE, PG_USER};
use super::{labels, ValidStore};
use crate::crd::CloudNativePgBackend;

pub const CNPG_GROUP: &str = "postgresql.cnpg.io";
pub const CNPG_CRD: &str = "clusters.postgresql.cnpg.io";

pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(CNPG_GROUP, "v1", "Cluster"),
        "clusters",
    )
}

pub fn build(store: &ValidStore, cnpg: &CloudNativePgBackend) -> DynamicObject {
    let name = cnpg_cluster_name(store);
    let mut storage = json!({"size": cnpg.storage_size.0});
    if let Some(class) = &cnpg.storage_class_name {
        storage["storageClass"] = json!(class);
    }
    let mut spec = json!({
        "instances": cnpg.instances,
        "storage": storage,
        "bootstrap": {"initdb": {"database": PG_DATABASE, "owner": PG_USER}},
    });
    if let Some(image) = &cnpg.image_name {
        spec["imageName"] = json!(image);
    }
    let mut obj = DynamicObject::new(&name, &api_resource()).within(&store.namespace);
    obj.metadata = store.owned_meta(
        &name,
        labels(&store.name, "cloudnativepg", "session-backend"),
    );
    obj.data = json!({"spec": spec});
    obj
}

/// Reads CloudNativePG's `Ready` condition from a Cluster's status.
pub fn is_ready(cluster: &DynamicObject) -> bool {
    cluster.data["status"]["conditions"]
        .as_array()
        .is_some_and(|conds| {
            conds
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures;
    use crate::crd::Backend;

    #[test]
    fn cluster_with_database_and_owner() {
        let store = fixtures::store(serde_json::json!({
            "driver": "db",
            "backend": {"cloudNativePG": {"instances": 3, "storageSize": "2Gi", "imageName": "ghcr.io/cloudnative-pg/postgresql:17"}}
        }));
        let Backend::CloudNativePg(c) = &store.spec.backend else {
            panic!("cnpg")
        };
        let obj = build(&store, c);
        let v = serde_json::to_value(&obj).expect("serialises");
        assert_eq!(v["apiVersion"], "postgresql.cnpg.io/v1");
        assert_eq!(v["kind"], "Cluster");
        assert_eq!(v["metadata"]["name"], "sessions-pg");
        assert_eq!(v["metadata"]["namespace"], "shop");
        assert_eq!(
            v["metadata"]["ownerReferences"][0]["kind"],
            "OdooSessionStore"
        );
        assert_eq!(v["spec"]["instances"], 3);
        assert_eq!(v["spec"]["storage"]["size"], "2Gi");
        assert_eq!(
            v["spec"]["bootstrap"]["initdb"]["database"],
            "odoo_sessions"
        );
        assert_eq!(
            v["spec"]["imageName"],
            "ghcr.io/cloudnative-pg/postgresql:17"
        );
    }

    #[test]
    fn readiness_from_status() {
        let mut obj = DynamicObject::new("x", &api_resource());
        assert!(!is_ready(&obj));
        obj.data = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        assert!(!is_ready(&obj));
        obj.data = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        assert!(is_ready(&obj));
    }
}

//! PodDisruptionBudget of a managed Redis with Sentinel: at most one Pod down at a time for
//! voluntary disruptions (node drains), so a quorum of Sentinels and a replica always stay.
//!
//! Built as a dynamic object: `policy/v1` from Kubernetes 1.21 on, `policy/v1beta1` on 1.20
//! (k8s-openapi has no v1beta1 type). The spec is the same in both versions.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::connection::managed_names;
use super::{labels, selector_labels, Defaults, ValidStore};

pub fn api_resource(defaults: &Defaults) -> ApiResource {
    let version = if defaults.pdb_policy_v1() {
        "v1"
    } else {
        "v1beta1"
    };
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("policy", version, "PodDisruptionBudget"),
        "poddisruptionbudgets",
    )
}

pub fn build(store: &ValidStore, defaults: &Defaults) -> DynamicObject {
    let (name, app) = managed_names(store);
    let mut obj = DynamicObject::new(&name, &api_resource(defaults)).within(&store.namespace);
    obj.metadata = store.owned_meta(&name, labels(&store.name, app, "session-backend"));
    obj.data = json!({"spec": {
        "maxUnavailable": 1,
        "selector": {"matchLabels": selector_labels(&store.name, app)},
    }});
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures;

    #[test]
    fn version_follows_the_server_and_one_pod_may_go() {
        let store = fixtures::managed_redis();
        for (server, version) in [
            (Some((1, 20)), "policy/v1beta1"),
            (Some((1, 21)), "policy/v1"),
            (Some((1, 33)), "policy/v1"),
            (None, "policy/v1"),
        ] {
            let defaults = Defaults {
                server_version: server,
                ..Defaults::default()
            };
            let v = serde_json::to_value(build(&store, &defaults)).expect("json");
            assert_eq!(v["apiVersion"], version, "{server:?}");
            assert_eq!(v["kind"], "PodDisruptionBudget");
            assert_eq!(v["metadata"]["name"], "sessions-redis");
            assert_eq!(v["metadata"]["namespace"], "shop");
            assert_eq!(
                v["metadata"]["ownerReferences"][0]["kind"],
                "OdooSessionStore"
            );
            assert_eq!(v["spec"]["maxUnavailable"], 1);
            assert_eq!(
                v["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
                "sessions"
            );
            assert_eq!(api_resource(&defaults).plural, "poddisruptionbudgets");
        }
    }
}

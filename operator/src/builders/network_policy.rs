//! NetworkPolicy in front of a managed backend: only Pods that opted in to this store
//! (label `odoo-ha.io/session-store: <store>`) in the same namespace may connect.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::connection::{managed_names, POSTGRES_PORT, REDIS_PORT};
use super::{labels, selector_labels, ValidStore};
use crate::crd::{Driver, STORE_LABEL};

pub fn build(store: &ValidStore) -> NetworkPolicy {
    let (name, app) = managed_names(store);
    let port = match store.spec.driver {
        Driver::Redis => REDIS_PORT,
        Driver::Db => POSTGRES_PORT,
    };
    NetworkPolicy {
        metadata: store.owned_meta(&name, labels(&store.name, app, "session-backend")),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&store.name, app)),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                // A peer with only podSelector means "this namespace".
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            STORE_LABEL.to_string(),
                            store.name.clone(),
                        )])),
                        match_expressions: None,
                    }),
                    namespace_selector: None,
                    ip_block: None,
                }]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(port)),
                    protocol: Some("TCP".into()),
                    end_port: None,
                }]),
            }]),
            egress: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures;

    #[test]
    fn admits_only_opted_in_pods_of_this_store_on_the_backend_port() {
        let np = build(&fixtures::managed_redis());
        let spec = np.spec.expect("spec");
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
        let target = spec
            .pod_selector
            .and_then(|s| s.match_labels)
            .expect("target");
        assert_eq!(target["app.kubernetes.io/name"], "redis");
        let rule = &spec.ingress.expect("ingress")[0];
        let peers = rule.from.as_ref().expect("from");
        assert_eq!(peers.len(), 1);
        assert!(peers[0].namespace_selector.is_none(), "same namespace only");
        let allowed = peers[0]
            .pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref())
            .expect("peer labels");
        assert_eq!(
            allowed.get(STORE_LABEL).map(String::as_str),
            Some("sessions")
        );
        assert_eq!(
            rule.ports.as_ref().expect("ports")[0].port,
            Some(IntOrString::Int(6379))
        );
    }

    #[test]
    fn postgres_port() {
        let np = build(&fixtures::managed_postgres());
        let rule = &np.spec.expect("spec").ingress.expect("ingress")[0];
        assert_eq!(
            rule.ports.as_ref().expect("ports")[0].port,
            Some(IntOrString::Int(5432))
        );
    }
}

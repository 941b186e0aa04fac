//! NetworkPolicy in front of a managed backend: only Pods that opted in to this store
//! (label `odoo-ha.io/session-store: <store>`) in the same namespace may connect.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::connection::{
    managed_names, sentinel_replicas, POSTGRES_PORT, REDIS_PORT, SENTINEL_PORT,
};
use super::{labels, selector_labels, Defaults, ValidStore};
use crate::crd::{Driver, STORE_LABEL};

fn tcp(ports: &[i32]) -> Vec<NetworkPolicyPort> {
    ports
        .iter()
        .map(|p| NetworkPolicyPort {
            port: Some(IntOrString::Int(*p)),
            protocol: Some("TCP".into()),
            end_port: None,
        })
        .collect()
}

/// Opted-in Pods reach the backend port. With Sentinel (replicas > 1) they also reach
/// 26379; the backend Pods reach each other on both ports (replication, Sentinel
/// gossip); and the operator's namespace reaches 26379 (status), selected by the label
/// `kubernetes.io/metadata.name` that Kubernetes sets on namespaces from 1.21 on.
pub fn build(store: &ValidStore, defaults: &Defaults) -> NetworkPolicy {
    let (name, app) = managed_names(store);
    let sentinel = sentinel_replicas(store).is_some();
    let ports: Vec<i32> = match (store.spec.driver, sentinel) {
        (Driver::Redis, true) => vec![REDIS_PORT, SENTINEL_PORT],
        (Driver::Redis, false) => vec![REDIS_PORT],
        (Driver::Db, _) => vec![POSTGRES_PORT],
    };
    let clients = NetworkPolicyIngressRule {
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
        ports: Some(tcp(&ports)),
    };
    let mut ingress = vec![clients];
    if sentinel {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(selector_labels(&store.name, app)),
                    match_expressions: None,
                }),
                namespace_selector: None,
                ip_block: None,
            }]),
            ports: Some(tcp(&ports)),
        });
        if let Some(ns) = &defaults.operator_namespace {
            ingress.push(NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    pod_selector: None,
                    namespace_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            "kubernetes.io/metadata.name".to_string(),
                            ns.clone(),
                        )])),
                        match_expressions: None,
                    }),
                    ip_block: None,
                }]),
                ports: Some(tcp(&[SENTINEL_PORT])),
            });
        }
    }
    NetworkPolicy {
        metadata: store.owned_meta(&name, labels(&store.name, app, "session-backend")),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&store.name, app)),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
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
        let np = build(&fixtures::single_redis(), &Defaults::default());
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
    fn sentinel_ports_peers_and_the_operator() {
        let defaults = Defaults {
            operator_namespace: Some("odoo-ha-system".into()),
            ..Defaults::default()
        };
        let spec = build(&fixtures::managed_redis(), &defaults)
            .spec
            .expect("spec");
        let rules = spec.ingress.expect("ingress");
        assert_eq!(rules.len(), 3);
        let ports = |r: &NetworkPolicyIngressRule| -> Vec<IntOrString> {
            r.ports
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| p.port)
                .collect()
        };
        let both = vec![IntOrString::Int(6379), IntOrString::Int(26379)];
        assert_eq!(ports(&rules[0]), both, "clients: Redis and Sentinel");
        assert_eq!(ports(&rules[1]), both, "peers: replication and Sentinel");
        let peer = &rules[1].from.as_ref().expect("from")[0];
        assert_eq!(
            peer.pod_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone()),
            Some(selector_labels("sessions", "redis"))
        );
        assert_eq!(ports(&rules[2]), vec![IntOrString::Int(26379)]);
        let op = &rules[2].from.as_ref().expect("from")[0];
        assert!(op.pod_selector.is_none());
        assert_eq!(
            op.namespace_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                .and_then(|l| l.get("kubernetes.io/metadata.name"))
                .map(String::as_str),
            Some("odoo-ha-system")
        );
    }

    #[test]
    fn postgres_port() {
        let np = build(&fixtures::managed_postgres(), &Defaults::default());
        let rule = &np.spec.expect("spec").ingress.expect("ingress")[0];
        assert_eq!(
            rule.ports.as_ref().expect("ports")[0].port,
            Some(IntOrString::Int(5432))
        );
    }
}

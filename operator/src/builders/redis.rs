//! Managed Redis: official `redis` image, append-only persistence, password from the Secret.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, Probe, SecretKeySelector, Service, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::connection::{managed_names, REDIS_PORT};
use super::managed::{self, Shape};
use super::secret::PASSWORD_KEY;
use super::{Defaults, ValidStore};
use crate::crd::ManagedBackend;

pub fn build(
    store: &ValidStore,
    managed_spec: &ManagedBackend,
    defaults: &Defaults,
) -> (StatefulSet, Service) {
    let (name, app) = managed_names(store);
    let shape = Shape {
        image: managed_spec
            .image
            .clone()
            .unwrap_or_else(|| defaults.redis_image.clone()),
        port: REDIS_PORT,
        // `$(VAR)` is expanded by the kubelet, so the password never appears in the Pod spec.
        args: [
            "redis-server",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--dir",
            "/data",
            "--requirepass",
            "$(REDIS_PASSWORD)",
            "--maxmemory-policy",
            "noeviction",
        ]
        .map(String::from)
        .to_vec(),
        env: vec![EnvVar {
            name: "REDIS_PASSWORD".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: name.clone(),
                    key: PASSWORD_KEY.into(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        }],
        data_path: "/data",
        scratch_paths: &["/tmp"],
        readiness: Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(REDIS_PORT),
                host: None,
            }),
            period_seconds: Some(5),
            ..Probe::default()
        },
        managed: managed_spec,
        pvc_retention_policy: defaults.pvc_retention_policy(),
        name,
        app,
    };
    (
        managed::statefulset(store, &shape),
        managed::service(store, &shape),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures;
    use crate::crd::Backend;

    fn managed(store: &ValidStore) -> &ManagedBackend {
        match &store.spec.backend {
            Backend::Managed(m) => m,
            _ => panic!("fixture is managed"),
        }
    }

    #[test]
    fn statefulset_runs_official_redis_with_aof_and_password_from_secret() {
        let store = fixtures::managed_redis();
        let defaults = Defaults {
            server_version: Some((1, 33)),
            ..Defaults::default()
        };
        let (sts, svc) = build(&store, managed(&store), &defaults);
        assert_eq!(sts.metadata.name.as_deref(), Some("sessions-redis"));
        assert_eq!(sts.metadata.namespace.as_deref(), Some("shop"));
        assert!(sts.metadata.owner_references.is_some());
        let spec = sts.spec;
        assert_eq!(spec.replicas, Some(1));
        let pod = spec.template.spec.expect("pod spec");
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("redis:7.4"));
        let args = c.args.as_ref().expect("args").join(" ");
        assert!(args.contains("--appendonly yes"), "{args}");
        assert!(args.contains("--requirepass $(REDIS_PASSWORD)"), "{args}");
        let env = &c.env.as_ref().expect("env")[0];
        assert_eq!(env.value, None);
        assert_eq!(
            env.value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .map(|s| s.name.as_str()),
            Some("sessions-redis")
        );
        let sc = c.security_context.as_ref().expect("security context");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let claim = &spec.volume_claim_templates.expect("claims")[0];
        let size = &claim
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .expect("requests")["storage"];
        assert_eq!(size.0, "1Gi");
        assert_eq!(
            spec.persistent_volume_claim_retention_policy
                .and_then(|p| p.when_deleted)
                .as_deref(),
            Some("Delete")
        );
        // Selector must match the template labels or the API server rejects the StatefulSet.
        let sel = spec.selector.match_labels.expect("selector");
        let tpl = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .expect("labels");
        assert!(sel.iter().all(|(k, v)| tpl.get(k) == Some(v)));
        let svc_spec = svc.spec.expect("svc spec");
        assert_eq!(svc_spec.ports.expect("ports")[0].port, 6379);
        assert_eq!(svc_spec.selector, Some(sel));
    }

    #[test]
    fn old_servers_get_no_retention_policy() {
        let store = fixtures::managed_redis();
        let defaults = Defaults {
            server_version: Some((1, 20)),
            ..Defaults::default()
        };
        let (sts, _) = build(&store, managed(&store), &defaults);
        assert!(sts.spec.persistent_volume_claim_retention_policy.is_none());
    }

    #[test]
    fn image_and_retention_are_overridable() {
        let store = fixtures::store(serde_json::json!({
            "driver": "redis",
            "backend": {"managed": {"image": "valkey/valkey:8", "pvcRetention": "Retain", "storageClassName": "fast"}}
        }));
        let defaults = Defaults {
            server_version: Some((1, 27)),
            ..Defaults::default()
        };
        let (sts, _) = build(&store, managed(&store), &defaults);
        let spec = sts.spec;
        assert_eq!(
            spec.template.spec.expect("pod").containers[0]
                .image
                .as_deref(),
            Some("valkey/valkey:8")
        );
        assert_eq!(
            spec.persistent_volume_claim_retention_policy
                .and_then(|p| p.when_deleted)
                .as_deref(),
            Some("Retain")
        );
        let claim = &spec.volume_claim_templates.expect("claims")[0];
        assert_eq!(
            claim
                .spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_deref()),
            Some("fast")
        );
    }
}

//! The shape shared by the managed Redis and PostgreSQL: one-replica StatefulSet with a
//! data claim, hardened Pod, and a ClusterIP Service.

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

use super::{hardened_security_context, labels, selector_labels, ValidStore};
use crate::crd::{ManagedBackend, PvcRetention};

/// uid/gid of the `redis` and `postgres` users in the official images.
pub const BACKEND_UID: i64 = 999;

/// What differs between the managed backends.
pub struct Shape<'a> {
    pub name: String,
    pub app: &'static str,
    pub image: String,
    pub port: i32,
    pub args: Vec<String>,
    pub env: Vec<EnvVar>,
    pub data_path: &'a str,
    /// Extra writable directories (emptyDir) the read-only root filesystem needs.
    pub scratch_paths: &'a [&'a str],
    pub readiness: Probe,
    pub managed: &'a ManagedBackend,
    pub pvc_retention_policy: bool,
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("50m".into())),
            ("memory".to_string(), Quantity("64Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("512Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// The Pod security context of every backend Pod (single instance and Redis with Sentinel).
pub(super) fn backend_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(BACKEND_UID),
        run_as_group: Some(BACKEND_UID),
        fs_group: Some(BACKEND_UID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

/// The claims' retention policy, on clusters that support it (>= 1.27: they remove the
/// claims themselves; older ones rely on our finalizer). Scaling down keeps the claims.
pub(super) fn claim_retention(
    supported: bool,
    when_deleted: &str,
) -> Option<StatefulSetPersistentVolumeClaimRetentionPolicy> {
    supported.then(|| StatefulSetPersistentVolumeClaimRetentionPolicy {
        when_deleted: Some(when_deleted.into()),
        when_scaled: Some("Retain".into()),
    })
}

pub fn statefulset(store: &ValidStore, shape: &Shape<'_>) -> StatefulSet {
    let all_labels = labels(&store.name, shape.app, "session-backend");
    // Network policies admit clients by this label, so the backend Pods must not carry it.
    let mut mounts = vec![VolumeMount {
        name: "data".into(),
        mount_path: shape.data_path.into(),
        ..VolumeMount::default()
    }];
    let mut volumes = Vec::new();
    for (i, path) in shape.scratch_paths.iter().enumerate() {
        let name = format!("scratch-{i}");
        mounts.push(VolumeMount {
            name: name.clone(),
            mount_path: (*path).into(),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name,
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
    }
    let retention = match shape.managed.pvc_retention {
        PvcRetention::Delete => "Delete",
        PvcRetention::Retain => "Retain",
    };
    StatefulSet {
        metadata: store.owned_meta(&shape.name, all_labels.clone()),
        spec: StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(shape.name.clone()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&store.name, shape.app)),
                match_expressions: None,
            },
            persistent_volume_claim_retention_policy: claim_retention(
                shape.pvc_retention_policy,
                retention,
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(all_labels.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(backend_pod_security()),
                    containers: vec![Container {
                        name: shape.app.into(),
                        image: Some(shape.image.clone()),
                        args: Some(shape.args.clone()),
                        env: Some(shape.env.clone()),
                        ports: Some(vec![ContainerPort {
                            name: Some(shape.app.into()),
                            container_port: shape.port,
                            protocol: Some("TCP".into()),
                            ..ContainerPort::default()
                        }]),
                        readiness_probe: Some(shape.readiness.clone()),
                        liveness_probe: Some(Probe {
                            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                                port: IntOrString::Int(shape.port),
                                host: None,
                            }),
                            initial_delay_seconds: Some(10),
                            period_seconds: Some(10),
                            failure_threshold: Some(6),
                            ..Probe::default()
                        }),
                        resources: Some(
                            shape
                                .managed
                                .resources
                                .clone()
                                .unwrap_or_else(default_resources),
                        ),
                        security_context: Some(hardened_security_context(Some(BACKEND_UID))),
                        volume_mounts: Some(mounts),
                        ..Container::default()
                    }],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    labels: Some(all_labels),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: shape.managed.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_string(),
                            shape.managed.storage_size.clone(),
                        )])),
                        limits: None,
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
            ..StatefulSetSpec::default()
        },
        status: None,
    }
}

pub fn service(store: &ValidStore, shape: &Shape<'_>) -> Service {
    Service {
        metadata: store.owned_meta(
            &shape.name,
            labels(&store.name, shape.app, "session-backend"),
        ),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(&store.name, shape.app)),
            ports: Some(vec![ServicePort {
                name: Some(shape.app.into()),
                port: shape.port,
                target_port: Some(IntOrString::String(shape.app.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

//! The `OdooSessionStore` custom resource (`odoo-ha.io/v1alpha1`).
//!
//! Every field carries a doc comment: they become the `description`s that
//! `kubectl explain odoosessionstores.spec` prints.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Label a Pod carries to opt in; its value names an `OdooSessionStore` in the Pod's namespace.
pub const STORE_LABEL: &str = "odoo-ha.io/session-store";
/// Annotation the webhook writes on a Pod it injected (idempotency marker).
pub const INJECTED_ANNOTATION: &str = "odoo-ha.io/injected";
/// Annotation on Deployment/StatefulSet pod templates: changing it rolls the workload.
pub const CONFIG_HASH_ANNOTATION: &str = "odoo-ha.io/config-hash";
/// Name of the injected sidecar container.
pub const SIDECAR_CONTAINER: &str = "odoo-session-sidecar";
/// Field manager used for every server-side apply.
pub const MANAGER: &str = "odoo-session-operator";
/// Finalizer that removes PersistentVolumeClaims when the store is deleted.
pub const FINALIZER: &str = "odoo-ha.io/cleanup";

/// An `OdooSessionStore` describes one shared pool of Odoo sessions: which backend keeps
/// them (Redis or PostgreSQL, managed by the operator, external, or a CloudNativePG cluster)
/// and how the session sidecar is injected into Pods labelled
/// `odoo-ha.io/session-store: <name>`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "odoo-ha.io",
    version = "v1alpha1",
    kind = "OdooSessionStore",
    plural = "odoosessionstores",
    shortname = "oss",
    namespaced,
    status = "OdooSessionStoreStatus",
    doc = "OdooSessionStore: a shared session pool for multi-pod Odoo. Pods labelled odoo-ha.io/session-store=<name> get the session sidecar and the dkn_auth variables injected.",
    printcolumn = r#"{"name":"Driver","type":"string","description":"Session backend driver","jsonPath":".spec.driver"}"#,
    printcolumn = r#"{"name":"Backend","type":"string","description":"Kind of backend in use","jsonPath":".status.backend"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","description":"Whether the store is ready","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","description":"Reason of the Ready condition (why it is False)","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Primary","type":"string","description":"Redis primary Pod (managed Redis with Sentinel)","jsonPath":".status.redis.primary"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Failing","type":"integer","priority":1,"description":"Injected Pods whose sidecar or target container keeps failing","jsonPath":".status.podsFailing"}"#,
    printcolumn = r#"{"name":"No-Sidecar","type":"integer","priority":1,"description":"Opted-in Pods running without the sidecar","jsonPath":".status.podsWithoutSidecar"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"description":"Message of the Ready condition","jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct OdooSessionStoreSpec {
    /// Session backend driver: `redis` or `db` (PostgreSQL). Becomes the sidecar's DKN_AUTH_DRIVER.
    pub driver: Driver,

    /// Key (Redis) or table (PostgreSQL) namespace for the sessions: 1 to 64 printable
    /// ASCII characters without spaces, braces or the wildcards * ? [ ]. Becomes
    /// DKN_AUTH_PREFIX.
    #[serde(default = "default_prefix")]
    #[schemars(transform = contract::prefix)]
    pub prefix: String,

    /// Seconds of inactivity before a logged-in session expires, 60 to 31536000 (a year).
    /// Becomes DKN_AUTH_EXPIRY.
    #[serde(default = "default_expiry")]
    #[schemars(transform = contract::expiry)]
    pub expiry_seconds: i64,

    /// Seconds of inactivity before an anonymous (not logged-in) session expires.
    /// 60 to 31536000. Becomes DKN_AUTH_ANONYMOUS_EXPIRY in the Odoo containers.
    #[serde(default = "default_anonymous_expiry")]
    #[schemars(transform = contract::anonymous_expiry)]
    pub anonymous_expiry_seconds: i64,

    /// Where the sessions are kept. Set exactly one of `managed`, `external` or `cloudNativePG`.
    pub backend: Backend,

    /// Size of the sidecar's Redis connection pool, 1 to 10000. Becomes
    /// DKN_AUTH_REDIS_MAX_CONN.
    #[serde(default = "default_pool_size")]
    #[schemars(transform = contract::redis_max_conn)]
    pub redis_pool_size: i32,

    /// Driver `db` only: `off` commits data-only writes (logins' session data, patches, TTL
    /// refreshes) without waiting for PostgreSQL's WAL flush, about 0.25 ms less per write
    /// on a local disk; a PostgreSQL crash can then undo the last ~0.6 s of them. Endings
    /// (logout, rotation, device revoke) always wait. Default (unset): `on`, every
    /// acknowledged write durable. Becomes DKN_AUTH_DB_SYNCHRONOUS_COMMIT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = contract::db_synchronous_commit)]
    pub db_synchronous_commit: Option<String>,

    /// The session sidecar injected into opted-in Pods.
    #[serde(default)]
    pub sidecar: SidecarSpec,

    /// Which containers of an opted-in Pod receive the dkn_auth variables.
    #[serde(default)]
    pub injection: InjectionSpec,
}

/// Session backend driver.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// Redis (or a Redis-compatible server).
    Redis,
    /// PostgreSQL.
    Db,
}

impl Driver {
    /// The value of DKN_AUTH_DRIVER.
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Redis => "redis",
            Driver::Db => "db",
        }
    }
}

/// Where the sessions are kept: exactly one of the fields.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Backend {
    /// Redis or PostgreSQL run by the operator (StatefulSet with PersistentVolumeClaims,
    /// Services, Secret with a generated password, NetworkPolicy). Redis defaults to 3 Pods
    /// with Sentinel; PostgreSQL is a single instance.
    Managed(ManagedBackend),
    /// A backend you run yourself, reached with a URI kept in a Secret of this namespace.
    External(ExternalBackend),
    /// A CloudNativePG `Cluster` created by the operator (needs the CloudNativePG operator
    /// installed; driver must be `db`). Its `<name>-app` Secret gives the URI.
    #[serde(rename = "cloudNativePG")]
    CloudNativePg(CloudNativePgBackend),
}

impl Backend {
    /// Short name shown in the `Backend` printer column.
    pub fn kind_name(&self, driver: Driver) -> &'static str {
        match (self, driver) {
            (Backend::Managed(_), Driver::Redis) => "managed-redis",
            (Backend::Managed(_), Driver::Db) => "managed-postgres",
            (Backend::External(_), _) => "external",
            (Backend::CloudNativePg(_), _) => "cloudnativepg",
        }
    }
}

/// What happens to the backend's PersistentVolumeClaims when the store is deleted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum PvcRetention {
    /// Delete the claims (and so the session data) with the store.
    #[default]
    Delete,
    /// Keep the claims; a store created again with the same name reuses them.
    Retain,
}

/// A backend instance managed by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ManagedBackend {
    /// Container image of the backend. Default: the official `redis` or `postgres` image
    /// chosen by the operator (flags --default-redis-image / --default-postgres-image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Size of the data volume.
    #[serde(default = "default_storage_size")]
    pub storage_size: Quantity,
    /// StorageClass of the data volume. Default: the cluster's default StorageClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Compute resources of the backend container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// `Delete` (default) removes the data volume with the store; `Retain` keeps it.
    #[serde(default)]
    pub pvc_retention: PvcRetention,
    /// Number of backend Pods, 1 to 7. Default: 3 for driver `redis` (a primary, replicas
    /// and a Sentinel in every Pod, so losing one Pod or node never stops the sessions), 1
    /// for driver `db`. `1` runs a single Redis without Sentinel (the development choice).
    /// Managed PostgreSQL supports only 1: use `backend.cloudNativePG` for PostgreSQL
    /// replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 7))]
    pub replicas: Option<i32>,
}

/// Largest `spec.backend.managed.replicas`.
pub const MAX_MANAGED_REPLICAS: i32 = 7;

impl ManagedBackend {
    /// The number of backend Pods for this driver, with the default applied.
    pub fn replicas_for(&self, driver: Driver) -> i32 {
        self.replicas.unwrap_or(match driver {
            Driver::Redis => 3,
            Driver::Db => 1,
        })
    }
}

/// An external backend given by a Secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalBackend {
    /// Secret (in the store's namespace) and key holding the full backend URI, password
    /// included: `redis://:password@host:6379/0`, `rediss://...` or `postgresql://...`.
    pub uri_secret_ref: SecretKeyRef,
    /// Secret (in the store's namespace) and key holding PEM CA certificates that sign the
    /// backend's TLS certificate, for a private CA such as Google Memorystore's server CA
    /// (ElastiCache and most hosted PostgreSQL services chain to public roots and need
    /// none). The key is mounted read-only into the sidecar as
    /// /etc/dkn-auth/ca/ca.crt, which becomes DKN_AUTH_REDIS_CA_FILE (driver `redis`) or
    /// DKN_AUTH_DB_CA_FILE (driver `db`). The Secret must exist with the key, or the
    /// injected Pods cannot start: BackendReady says which is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<CaSecretKeyRef>,
    /// Driver `redis` only: replicas that must hold a logout, rotation or device revoke
    /// (Redis WAIT) before the sidecar acknowledges it, 0 to 16, so a fail-over to a
    /// replica cannot undo it; fewer within the backend timeout answer 503. For a Redis
    /// Cluster it counts the replicas of the key's shard. Data writes never wait. Default
    /// (unset): 0, nothing waited for. Becomes DKN_AUTH_REDIS_MIN_REPLICAS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = contract::redis_min_replicas)]
    pub min_replicas: Option<i32>,
}

/// A key of a Secret in the store's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[serde(default = "default_uri_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A key of a Secret in the store's namespace holding PEM CA certificates.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaSecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret whose value is the PEM bundle. Default: `ca.crt` (the key
    /// cert-manager and `kubectl create secret generic --from-file=ca.crt` use).
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A CloudNativePG cluster created and owned by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudNativePgBackend {
    /// Number of PostgreSQL instances of the Cluster.
    #[serde(default = "default_instances")]
    #[schemars(range(min = 1, max = 9))]
    pub instances: i32,
    /// Size of each instance's volume.
    #[serde(default = "default_storage_size")]
    pub storage_size: Quantity,
    /// StorageClass of the volumes. Default: the cluster's default StorageClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// PostgreSQL image of the Cluster. Default: CloudNativePG's own default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
}

/// How to run the sidecar as a native sidecar (an init container with restartPolicy Always).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub enum NativeSidecarMode {
    /// Native sidecar when the API server is Kubernetes 1.29 or newer, regular container otherwise.
    #[default]
    Auto,
    /// Always a native sidecar (nodes must be 1.29 or newer).
    Always,
    /// Always a regular container, placed first so it starts before Odoo.
    Never,
}

/// The injected session sidecar.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Sidecar image. Default: the operator's --default-sidecar-image (env DEFAULT_SIDECAR_IMAGE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image pull policy of the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Compute resources of the sidecar. Default: requests 10m CPU / 32Mi, limit 128Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Loopback port of the session API, used only by Pods annotated
    /// `odoo-ha.io/sidecar-address: loopback` (DKN_AUTH_LISTEN=127.0.0.1:<port>, the addon's
    /// DKN_AUTH_URL); by default the addon reaches the sidecar over the Unix socket
    /// DKN_AUTH_SOCKET=/run/dkn-auth/sidecar.sock in a shared emptyDir.
    #[serde(default = "default_sidecar_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: i32,
    /// Port of the health listener (DKN_AUTH_HEALTH_LISTEN=0.0.0.0:<port>) that serves only
    /// /healthz, /readyz and /metrics, so the kubelet can probe the sidecar while the
    /// session API stays on loopback.
    #[serde(default = "default_health_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub health_port: i32,
    /// `auto` (default), `always` or `never`: run the sidecar as a native sidecar.
    #[serde(default)]
    pub native_sidecar: NativeSidecarMode,
}

impl Default for SidecarSpec {
    fn default() -> Self {
        SidecarSpec {
            image: None,
            image_pull_policy: None,
            resources: None,
            port: default_sidecar_port(),
            health_port: default_health_port(),
            native_sidecar: NativeSidecarMode::Auto,
        }
    }
}

/// Which containers receive the dkn_auth variables.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct InjectionSpec {
    /// Names of the containers (the Odoo containers) that receive the sidecar's address
    /// (DKN_AUTH_SOCKET and the socket volume, or DKN_AUTH_URL with the loopback annotation),
    /// DKN_AUTH_EXPIRY and DKN_AUTH_ANONYMOUS_EXPIRY. Empty: every container of the Pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
}

/// Observed state of an `OdooSessionStore`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct OdooSessionStoreStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `BackendReady` and `InjectionReady`, each with reason, message and observedGeneration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Kind of backend in use: managed-redis, managed-postgres, external or cloudnativepg.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// host:port the sidecars connect to (no credentials), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Secret holding the backend credentials the sidecars read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// Hash of the settings injected into Pods; opted-in Deployments and StatefulSets are
    /// rolled when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Number of running opted-in Pods found without the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods_without_sidecar: Option<i32>,
    /// Number of injected Pods whose sidecar or target container keeps failing
    /// (CrashLoopBackOff, image pull errors, repeated restarts, not Ready for 5 minutes);
    /// `InjectionReady` names them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods_failing: Option<i32>,
    /// Replication of a managed Redis with Sentinel (replicas > 1), as its Sentinels see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisReplicationStatus>,
}

/// Replication state of a managed Redis with Sentinel, asked from the Sentinels at each
/// reconcile (about every 30 seconds).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RedisReplicationStatus {
    /// Pod that is the primary (master), as named by the majority of the Sentinels that
    /// answered; absent when no Sentinel answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// Redis Pods the store asks for (spec.backend.managed.replicas).
    pub pods: i32,
    /// Replicas of the primary the Sentinels know about.
    pub replicas_seen: i32,
    /// Replicas whose link to the primary is up (`master-link-status: ok`).
    pub replicas_in_sync: i32,
    /// Sentinels that answered, name the same primary and see it up (not flagged down,
    /// disconnected or in a failover).
    pub sentinels_agreeing: i32,
    /// Sentinels asked (one per Pod).
    pub sentinels: i32,
    /// True when a primary is known, every other Pod replicates it with its link up, a
    /// quorum of Sentinels agrees on it, and every Sentinel naming it knows every replica
    /// and every other Sentinel; until then the store is not Ready (reason
    /// SentinelsUnreachable, SentinelsNotAgreeing, PrimaryDown, ReplicasNotInSync or
    /// SentinelsLearning).
    pub healthy: bool,
    /// What was seen, in words (unreachable Sentinels, disagreement, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Schema bounds and patterns of the fields that become `DKN_AUTH_*` settings, taken from
/// the settings contract (`contract/src/lib.rs`), never written here.
pub mod contract {
    use odoo_ha_contract::{Format, Setting};
    use schemars::Schema;
    use serde_json::json;

    fn apply(schema: &mut Schema, s: &Setting) {
        match s.format {
            Format::Integer { min, max } => {
                schema.insert("minimum".into(), json!(min));
                schema.insert("maximum".into(), json!(max));
            }
            Format::Text {
                min_len, max_len, ..
            } => {
                schema.insert("minLength".into(), json!(min_len));
                schema.insert("maxLength".into(), json!(max_len));
                schema.insert("pattern".into(), json!(s.pattern()));
            }
            Format::Choice(words) => {
                schema.insert("enum".into(), json!(words));
            }
            _ => {}
        }
    }

    pub fn prefix(schema: &mut Schema) {
        apply(schema, &odoo_ha_contract::PREFIX)
    }
    pub fn expiry(schema: &mut Schema) {
        apply(schema, &odoo_ha_contract::EXPIRY)
    }
    pub fn anonymous_expiry(schema: &mut Schema) {
        apply(schema, &odoo_ha_contract::ANONYMOUS_EXPIRY)
    }
    pub fn redis_max_conn(schema: &mut Schema) {
        apply(schema, &odoo_ha_contract::REDIS_MAX_CONN)
    }
    pub fn db_synchronous_commit(schema: &mut Schema) {
        apply(schema, &odoo_ha_contract::DB_SYNCHRONOUS_COMMIT)
    }
    pub fn redis_min_replicas(schema: &mut Schema) {
        apply(schema, &odoo_ha_contract::REDIS_MIN_REPLICAS)
    }
}

pub fn default_prefix() -> String {
    "session:".to_string()
}
pub fn default_expiry() -> i64 {
    604_800
}
pub fn default_anonymous_expiry() -> i64 {
    10_800
}
pub fn default_pool_size() -> i32 {
    64
}
pub fn default_storage_size() -> Quantity {
    Quantity("1Gi".to_string())
}
pub fn default_uri_key() -> String {
    "uri".to_string()
}
pub fn default_ca_key() -> String {
    "ca.crt".to_string()
}
pub fn default_instances() -> i32 {
    1
}
pub fn default_sidecar_port() -> i32 {
    7070
}
pub fn default_health_port() -> i32 {
    7071
}

/// The CRD as YAML, with a header saying where it comes from.
pub fn crd_yaml() -> Result<String, String> {
    use kube::CustomResourceExt;
    let body = serde_saphyr::to_string(&OdooSessionStore::crd()).map_err(|e| e.to_string())?;
    Ok(format!(
        "# Generated by `cargo run -p odoo-session-operator --bin crdgen` from operator/src/crd.rs.\n# Do not edit by hand.\n---\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn minimal_spec_gets_defaults() {
        let spec: OdooSessionStoreSpec = serde_json::from_value(
            serde_json::json!({"driver": "redis", "backend": {"managed": {}}}),
        )
        .expect("minimal spec parses");
        assert_eq!(spec.prefix, "session:");
        assert_eq!(spec.expiry_seconds, 604_800);
        assert_eq!(spec.anonymous_expiry_seconds, 10_800);
        assert_eq!(spec.redis_pool_size, 64);
        assert_eq!(spec.sidecar.port, 7070);
        assert_eq!(spec.sidecar.native_sidecar, NativeSidecarMode::Auto);
        match spec.backend {
            Backend::Managed(m) => {
                assert_eq!(m.storage_size.0, "1Gi");
                assert_eq!(m.pvc_retention, PvcRetention::Delete);
            }
            other => panic!("expected managed, got {other:?}"),
        }
    }

    #[test]
    fn replicas_default_by_driver_and_schema_bounds() {
        let m = ManagedBackend::default();
        assert_eq!(m.replicas_for(Driver::Redis), 3);
        assert_eq!(m.replicas_for(Driver::Db), 1);
        let one = ManagedBackend {
            replicas: Some(1),
            ..ManagedBackend::default()
        };
        assert_eq!(one.replicas_for(Driver::Redis), 1);
        let crd = serde_json::to_value(OdooSessionStore::crd()).expect("crd");
        let replicas = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"]["properties"]["backend"]["properties"]["managed"]["properties"]["replicas"];
        assert_eq!(replicas["minimum"].as_f64(), Some(1.0), "{replicas}");
        assert_eq!(
            replicas["maximum"].as_f64(),
            Some(f64::from(MAX_MANAGED_REPLICAS)),
            "{replicas}"
        );
        assert_eq!(replicas["type"], "integer");
    }

    /// The fields that become DKN_AUTH_* settings carry the contract's bounds and pattern.
    #[test]
    fn schema_bounds_come_from_the_settings_contract() {
        let crd = serde_json::to_value(OdooSessionStore::crd()).expect("crd");
        let props = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"];
        for (field, setting) in [
            ("expirySeconds", odoo_ha_contract::EXPIRY),
            ("anonymousExpirySeconds", odoo_ha_contract::ANONYMOUS_EXPIRY),
            ("redisPoolSize", odoo_ha_contract::REDIS_MAX_CONN),
        ] {
            let (min, max) = setting.int_bounds().expect("integer");
            assert_eq!(
                props[field]["minimum"].as_f64(),
                Some(min as f64),
                "{field}"
            );
            assert_eq!(
                props[field]["maximum"].as_f64(),
                Some(max as f64),
                "{field}"
            );
            assert_eq!(
                setting.crd_field,
                Some(format!("spec.{field}").as_str()),
                "{field}"
            );
        }
        let commit = &props["dbSynchronousCommit"];
        assert_eq!(commit["enum"], serde_json::json!(["on", "off"]), "{commit}");
        assert_eq!(
            odoo_ha_contract::DB_SYNCHRONOUS_COMMIT.crd_field,
            Some("spec.dbSynchronousCommit")
        );
        // Issue 9 item 3: the external backend's fields, one level down.
        let external = &props["backend"]["properties"]["external"]["properties"];
        let min = &external["minReplicas"];
        let (lo, hi) = odoo_ha_contract::REDIS_MIN_REPLICAS
            .int_bounds()
            .expect("integer");
        assert_eq!(min["minimum"].as_f64(), Some(lo as f64), "{min}");
        assert_eq!(min["maximum"].as_f64(), Some(hi as f64), "{min}");
        assert_eq!(min["type"], "integer");
        assert_eq!(
            odoo_ha_contract::REDIS_MIN_REPLICAS.crd_field,
            Some("spec.backend.external.minReplicas")
        );
        let ca = &external["caSecretRef"];
        assert_eq!(ca["properties"]["key"]["default"], "ca.crt", "{ca}");
        for field in ["name", "key"] {
            assert_eq!(ca["properties"][field]["minLength"].as_u64(), Some(1));
            assert_eq!(ca["properties"][field]["maxLength"].as_u64(), Some(253));
        }
        assert_eq!(ca["required"], serde_json::json!(["name"]));
        for setting in [
            odoo_ha_contract::REDIS_CA_FILE,
            odoo_ha_contract::DB_CA_FILE,
        ] {
            assert_eq!(
                setting.crd_field,
                Some("spec.backend.external.caSecretRef"),
                "{}",
                setting.env
            );
        }
        let prefix = &props["prefix"];
        assert_eq!(
            prefix["pattern"].as_str(),
            odoo_ha_contract::PREFIX.pattern().as_deref()
        );
        assert_eq!(prefix["maxLength"].as_u64(), Some(64));
        assert_eq!(prefix["minLength"].as_u64(), Some(1));
        assert_eq!(prefix["default"], "session:");
        assert!(prefix["description"]
            .as_str()
            .is_some_and(|d| d.contains("DKN_AUTH_PREFIX")));
    }

    #[test]
    fn two_backends_are_rejected() {
        let err = serde_json::from_value::<OdooSessionStoreSpec>(serde_json::json!({
            "driver": "redis",
            "backend": {"managed": {}, "external": {"uriSecretRef": {"name": "x"}}}
        }));
        assert!(err.is_err());
    }

    /// The URI key defaults to `uri`, the CA key to `ca.crt`; both new fields are optional.
    #[test]
    fn external_backend_defaults() {
        let spec: OdooSessionStoreSpec = serde_json::from_value(serde_json::json!({
            "driver": "redis",
            "backend": {"external": {"uriSecretRef": {"name": "r"}, "caSecretRef": {"name": "ca"}}}
        }))
        .expect("parses");
        let Backend::External(ext) = spec.backend else {
            panic!("external expected");
        };
        assert_eq!(ext.uri_secret_ref.key, "uri");
        assert_eq!(
            ext.ca_secret_ref,
            Some(CaSecretKeyRef {
                name: "ca".into(),
                key: "ca.crt".into()
            })
        );
        assert_eq!(ext.min_replicas, None);
        // An unset count stays unset: the sidecar then keeps its own default.
        let written = serde_json::to_value(&ext).expect("serialises");
        assert!(written.get("minReplicas").is_none(), "{written}");
    }

    #[test]
    fn unknown_driver_is_rejected() {
        let err = serde_json::from_value::<OdooSessionStoreSpec>(
            serde_json::json!({"driver": "memcached", "backend": {"managed": {}}}),
        );
        assert!(err.is_err());
    }

    /// CI fails when `crds/` differs from these types (regenerate with `crdgen`).
    #[test]
    fn committed_crd_is_up_to_date() {
        let path = odoo_ha_contract::repo_path(
            env!("CARGO_MANIFEST_DIR"),
            "crds/odoosessionstores.odoo-ha.io.yaml",
        );
        let committed =
            std::fs::read_to_string(&path).expect("crds/odoosessionstores.odoo-ha.io.yaml exists");
        assert!(
            committed == crd_yaml().expect("CRD serialises"),
            "{} differs from operator/src/crd.rs: run `cargo run -p odoo-session-operator --bin crdgen`",
            path.display()
        );
    }

    #[test]
    fn crd_shape() {
        let crd = OdooSessionStore::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("odoosessionstores.odoo-ha.io")
        );
        assert_eq!(crd.spec.names.short_names, Some(vec!["oss".to_string()]));
        assert_eq!(crd.spec.scope, "Namespaced");
        let v = &crd.spec.versions[0];
        assert!(v
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some());
        let cols: Vec<_> = v
            .additional_printer_columns
            .as_ref()
            .expect("printer columns")
            .iter()
            .map(|c| (c.name.as_str(), c.priority.unwrap_or(0)))
            .collect();
        // Issue 13: the reason of a False Ready by default; -o wide adds the counts and the
        // message.
        assert_eq!(
            cols,
            [
                ("Driver", 0),
                ("Backend", 0),
                ("Ready", 0),
                ("Reason", 0),
                ("Primary", 0),
                ("Age", 0),
                ("Failing", 1),
                ("No-Sidecar", 1),
                ("Message", 1)
            ]
        );
    }

    /// `kubectl explain` prints descriptions: every property of the schema must have one.
    #[test]
    fn every_field_has_a_description() {
        let crd = OdooSessionStore::crd();
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("schema"),
        )
        .expect("schema serialises");
        let mut missing = Vec::new();
        walk(&schema["properties"]["spec"], "spec", &mut missing);
        walk(&schema["properties"]["status"], "status", &mut missing);
        assert!(
            missing.is_empty(),
            "fields without description: {missing:?}"
        );
    }

    fn walk(node: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
            for (name, child) in props {
                let child_path = format!("{path}.{name}");
                if child
                    .get("description")
                    .and_then(|d| d.as_str())
                    .unwrap_or("")
                    .is_empty()
                {
                    missing.push(child_path.clone());
                }
                // k8s-openapi types (resources, conditions) are described upstream.
                if name == "resources" || name == "conditions" {
                    continue;
                }
                walk(child, &child_path, missing);
            }
        }
        if let Some(items) = node.get("items") {
            walk(items, path, missing);
        }
    }
}

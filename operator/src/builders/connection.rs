//! How the sidecar reaches the backend: names, URIs and the Secret references it reads.
//! Shared by the reconciler (status) and the webhook (sidecar env), so both agree.

use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, KeyToPath, SecretKeySelector, SecretVolumeSource, Volume, VolumeMount,
};

use super::secret::{PASSWORD_KEY, PG_DATABASE, PG_USER};
use super::ValidStore;
use crate::crd::{Backend, CaSecretKeyRef, Driver, ExternalBackend};

pub const REDIS_PORT: i32 = 6379;
pub const POSTGRES_PORT: i32 = 5432;
/// Port of the Sentinel in every Pod of a managed Redis with replicas > 1.
pub const SENTINEL_PORT: i32 = 26379;
/// Name under which the Sentinels monitor the primary (`SENTINEL get-master-addr-by-name`).
pub const SENTINEL_MASTER: &str = "odoo-sessions";

/// Pods of a managed Redis when it runs with Sentinel (replicas > 1); None otherwise (a
/// single Redis, PostgreSQL, external or CloudNativePG backends).
pub fn sentinel_replicas(store: &ValidStore) -> Option<i32> {
    match (&store.spec.backend, store.spec.driver) {
        (Backend::Managed(m), Driver::Redis) => {
            Some(m.replicas_for(Driver::Redis)).filter(|n| *n > 1)
        }
        _ => None,
    }
}

/// Headless Service that gives every Pod of a managed Redis with Sentinel its DNS name.
pub fn headless_name(store: &ValidStore) -> String {
    format!("{}-redis-headless", store.name)
}

/// Stable DNS names of the Redis Pods, by ordinal: `<store>-redis-<i>.<headless>.<ns>.svc`.
pub fn redis_pod_hosts(store: &ValidStore, replicas: i32) -> Vec<String> {
    let (sts, _) = managed_names(store);
    let headless = headless_name(store);
    (0..replicas.max(0))
        .map(|i| format!("{sts}-{i}.{headless}.{}.svc", store.namespace))
        .collect()
}

/// Replicas that must hold a logout before it is acknowledged: with `min` = N/2 the primary
/// plus `min` replicas are a majority of the N Pods.
pub fn min_replicas(replicas: i32) -> i32 {
    replicas / 2
}

/// Name of the managed backend's StatefulSet, Service and Secret, and its `app` label.
pub fn managed_names(store: &ValidStore) -> (String, &'static str) {
    match store.spec.driver {
        Driver::Redis => (format!("{}-redis", store.name), "redis"),
        Driver::Db => (format!("{}-postgres", store.name), "postgres"),
    }
}

/// Name of the CloudNativePG Cluster of a store.
pub fn cnpg_cluster_name(store: &ValidStore) -> String {
    format!("{}-pg", store.name)
}

/// Pod volume of an external backend's CA Secret (`spec.backend.external.caSecretRef`),
/// mounted in the sidecar only: the Odoo containers never talk to the backend.
pub const CA_VOLUME: &str = "dkn-auth-ca";
/// Where [`CA_VOLUME`] is mounted in the sidecar. Outside the socket's directory, which the
/// Odoo containers share; a mount point, so a read-only root filesystem is fine.
pub const CA_DIR: &str = "/etc/dkn-auth/ca";
/// The file the Secret's key becomes, whatever the key is called: DKN_AUTH_REDIS_CA_FILE or
/// DKN_AUTH_DB_CA_FILE.
pub const CA_FILE: &str = "ca.crt";
/// Owner, group and others may read, nobody writes: the sidecar's uid is not the file's.
const CA_FILE_MODE: i32 = 0o444;

/// What the sidecar needs to reach the backend.
#[derive(Clone, Debug, PartialEq)]
pub struct Connection {
    /// Env vars for the sidecar: the URI and, where the URI has no password, the password.
    pub env: Vec<EnvVar>,
    /// host:port without credentials, for the status.
    pub endpoint: Option<String>,
    /// Secret holding the credentials.
    pub secret_name: String,
    /// The Pod volume holding the backend's CA certificates and the sidecar's mount of it,
    /// when the store names a CA Secret.
    pub ca: Option<(Volume, VolumeMount)>,
}

fn literal(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    }
}

fn from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_string(),
                key: key.to_string(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn uri_var(driver: Driver) -> &'static str {
    match driver {
        Driver::Redis => "DKN_AUTH_REDIS_URI",
        Driver::Db => "DKN_AUTH_DB_URI",
    }
}

fn ca_file_var(driver: Driver) -> &'static str {
    match driver {
        Driver::Redis => odoo_ha_contract::REDIS_CA_FILE.env,
        Driver::Db => odoo_ha_contract::DB_CA_FILE.env,
    }
}

/// The CA Secret's one key as a file in the sidecar (only that key: other keys of the
/// Secret, a URI with its password for instance, stay out of the container).
fn ca_volume(r: &CaSecretKeyRef) -> (Volume, VolumeMount) {
    let volume = Volume {
        name: CA_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(r.name.clone()),
            items: Some(vec![KeyToPath {
                key: r.key.clone(),
                path: CA_FILE.into(),
                ..KeyToPath::default()
            }]),
            default_mode: Some(CA_FILE_MODE),
            optional: Some(false),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: CA_VOLUME.into(),
        mount_path: CA_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    (volume, mount)
}

/// An external backend: the URI from its Secret, and the optional CA file and WAIT count.
fn external(ext: &ExternalBackend, driver: Driver) -> Connection {
    let mut env = vec![from_secret(
        uri_var(driver),
        &ext.uri_secret_ref.name,
        &ext.uri_secret_ref.key,
    )];
    let ca = ext.ca_secret_ref.as_ref().map(ca_volume);
    if ca.is_some() {
        env.push(literal(ca_file_var(driver), format!("{CA_DIR}/{CA_FILE}")));
    }
    // Validation refuses minReplicas with driver db; the sidecar would ignore it anyway.
    if let (Driver::Redis, Some(n)) = (driver, ext.min_replicas) {
        env.push(literal(
            odoo_ha_contract::REDIS_MIN_REPLICAS.env,
            n.to_string(),
        ));
    }
    Connection {
        env,
        endpoint: None,
        secret_name: ext.uri_secret_ref.name.clone(),
        ca,
    }
}

/// Secrets are only ever referenced (`secretKeyRef`), never copied into the Pod spec.
pub fn connection(store: &ValidStore) -> Connection {
    let driver = store.spec.driver;
    match &store.spec.backend {
        Backend::Managed(_) if sentinel_replicas(store).is_some() => {
            let replicas = sentinel_replicas(store).unwrap_or(1);
            let (name, _) = managed_names(store);
            let sentinels: Vec<String> = redis_pod_hosts(store, replicas)
                .into_iter()
                .map(|h| format!("{h}:{SENTINEL_PORT}"))
                .collect();
            Connection {
                env: vec![
                    literal(
                        "DKN_AUTH_REDIS_URI",
                        format!(
                            "redis+sentinel://{}/{SENTINEL_MASTER}/0",
                            sentinels.join(",")
                        ),
                    ),
                    from_secret("DKN_AUTH_REDIS_PASSWORD", &name, PASSWORD_KEY),
                    literal(
                        "DKN_AUTH_REDIS_MIN_REPLICAS",
                        min_replicas(replicas).to_string(),
                    ),
                ],
                endpoint: Some(format!(
                    "{}.{}.svc:{SENTINEL_PORT}",
                    headless_name(store),
                    store.namespace
                )),
                secret_name: name,
                ca: None,
            }
        }
        Backend::Managed(_) => {
            let (name, _) = managed_names(store);
            let host = format!("{name}.{}.svc", store.namespace);
            let (uri, password_var, port) = match driver {
                Driver::Redis => (
                    format!("redis://{host}:{REDIS_PORT}/0"),
                    "DKN_AUTH_REDIS_PASSWORD",
                    REDIS_PORT,
                ),
                Driver::Db => (
                    format!("postgresql://{PG_USER}@{host}:{POSTGRES_PORT}/{PG_DATABASE}"),
                    "DKN_AUTH_DB_PASSWORD",
                    POSTGRES_PORT,
                ),
            };
            Connection {
                env: vec![
                    literal(uri_var(driver), uri),
                    from_secret(password_var, &name, PASSWORD_KEY),
                ],
                endpoint: Some(format!("{host}:{port}")),
                secret_name: name,
                ca: None,
            }
        }
        Backend::External(ext) => external(ext, driver),
        Backend::CloudNativePg(_) => {
            let cluster = cnpg_cluster_name(store);
            let secret = format!("{cluster}-app");
            Connection {
                env: vec![from_secret("DKN_AUTH_DB_URI", &secret, "uri")],
                endpoint: Some(format!(
                    "{cluster}-rw.{}.svc:{POSTGRES_PORT}",
                    store.namespace
                )),
                secret_name: secret,
                ca: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures;

    fn secret_ref(env: &EnvVar) -> Option<(&str, &str)> {
        let r = env.value_from.as_ref()?.secret_key_ref.as_ref()?;
        Some((r.name.as_str(), r.key.as_str()))
    }

    #[test]
    fn managed_redis_uri_has_no_password_and_password_comes_from_secret() {
        let c = connection(&fixtures::single_redis());
        assert_eq!(c.env[0].name, "DKN_AUTH_REDIS_URI");
        assert_eq!(
            c.env[0].value.as_deref(),
            Some("redis://sessions-redis.shop.svc:6379/0")
        );
        assert_eq!(c.env[1].name, "DKN_AUTH_REDIS_PASSWORD");
        assert_eq!(c.env[1].value, None);
        assert_eq!(secret_ref(&c.env[1]), Some(("sessions-redis", "password")));
        assert_eq!(c.endpoint.as_deref(), Some("sessions-redis.shop.svc:6379"));
        assert_eq!(c.env.len(), 2, "no MIN_REPLICAS for a single Redis");
    }

    #[test]
    fn managed_redis_with_sentinel_lists_every_pod_and_waits_for_a_majority() {
        for (n, min) in [(2, "1"), (3, "1"), (5, "2"), (7, "3")] {
            let store = fixtures::store(serde_json::json!({
                "driver": "redis", "backend": {"managed": {"replicas": n}}
            }));
            let c = connection(&store);
            let env: std::collections::BTreeMap<_, _> =
                c.env.iter().map(|e| (e.name.as_str(), e)).collect();
            let uri = env["DKN_AUTH_REDIS_URI"].value.as_deref().expect("uri");
            let hosts: Vec<String> = (0..n)
                .map(|i| format!("sessions-redis-{i}.sessions-redis-headless.shop.svc:26379"))
                .collect();
            assert_eq!(
                uri,
                format!("redis+sentinel://{}/odoo-sessions/0", hosts.join(","))
            );
            assert_eq!(
                secret_ref(env["DKN_AUTH_REDIS_PASSWORD"]),
                Some(("sessions-redis", "password"))
            );
            assert_eq!(env["DKN_AUTH_REDIS_PASSWORD"].value, None);
            assert_eq!(
                env["DKN_AUTH_REDIS_MIN_REPLICAS"].value.as_deref(),
                Some(min)
            );
        }
        // The default for redis is 3 Pods with Sentinel.
        assert_eq!(sentinel_replicas(&fixtures::managed_redis()), Some(3));
        assert!(connection(&fixtures::managed_redis()).env[0]
            .value
            .as_deref()
            .is_some_and(|u| u.starts_with("redis+sentinel://")));
        assert_eq!(sentinel_replicas(&fixtures::managed_postgres()), None);
    }

    #[test]
    fn managed_postgres_uri() {
        let c = connection(&fixtures::managed_postgres());
        assert_eq!(
            c.env[0].value.as_deref(),
            Some("postgresql://odoo_sessions@sessions-postgres.shop.svc:5432/odoo_sessions")
        );
        assert_eq!(c.env[1].name, "DKN_AUTH_DB_PASSWORD");
        assert_eq!(
            secret_ref(&c.env[1]),
            Some(("sessions-postgres", "password"))
        );
    }

    #[test]
    fn external_uri_is_read_from_the_named_secret() {
        let store = fixtures::store(serde_json::json!({
            "driver": "db",
            "backend": {"external": {"uriSecretRef": {"name": "my-pg", "key": "dsn"}}}
        }));
        let c = connection(&store);
        assert_eq!(c.env.len(), 1);
        assert_eq!(c.env[0].name, "DKN_AUTH_DB_URI");
        assert_eq!(c.env[0].value, None);
        assert_eq!(secret_ref(&c.env[0]), Some(("my-pg", "dsn")));
        assert_eq!(c.secret_name, "my-pg");
    }

    /// Issue 9 item 3: the CA Secret's one key becomes a read-only file of the sidecar and
    /// the driver's CA variable names it; minReplicas becomes the WAIT count.
    #[test]
    fn external_ca_secret_and_min_replicas() {
        let ext =
            |driver: &str, extra: serde_json::Value| connection(&fixtures::external(driver, extra));
        let env = |c: &Connection| -> Vec<(String, Option<String>)> {
            c.env
                .iter()
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect()
        };
        let c = ext(
            "redis",
            serde_json::json!({"caSecretRef": {"name": "memorystore-ca"}, "minReplicas": 1}),
        );
        assert_eq!(
            env(&c)[1..],
            [
                (
                    "DKN_AUTH_REDIS_CA_FILE".to_string(),
                    Some("/etc/dkn-auth/ca/ca.crt".to_string())
                ),
                (
                    "DKN_AUTH_REDIS_MIN_REPLICAS".to_string(),
                    Some("1".to_string())
                ),
            ]
        );
        let (volume, mount) = c.ca.expect("CA volume");
        assert_eq!(volume.name, CA_VOLUME);
        let secret = volume.secret.expect("secret volume");
        assert_eq!(secret.secret_name.as_deref(), Some("memorystore-ca"));
        assert_eq!(secret.default_mode, Some(0o444));
        assert_eq!(secret.optional, Some(false));
        let items = secret.items.expect("only the one key");
        assert_eq!(items.len(), 1);
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("ca.crt", CA_FILE)
        );
        assert_eq!(
            (
                mount.name.as_str(),
                mount.mount_path.as_str(),
                mount.read_only
            ),
            (CA_VOLUME, CA_DIR, Some(true))
        );
        // The key is the user's; the file name stays the one the variable gives.
        let c = ext(
            "db",
            serde_json::json!({"caSecretRef": {"name": "rds", "key": "bundle.pem"}}),
        );
        assert_eq!(
            env(&c)[1..],
            [(
                "DKN_AUTH_DB_CA_FILE".to_string(),
                Some("/etc/dkn-auth/ca/ca.crt".to_string())
            )]
        );
        let items =
            c.ca.and_then(|(v, _)| v.secret)
                .and_then(|s| s.items)
                .expect("items");
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("bundle.pem", "ca.crt")
        );
        // Neither set: the URI alone, as before.
        let c = ext("redis", serde_json::json!({}));
        assert_eq!(c.env.len(), 1);
        assert_eq!(c.ca, None);
        assert!(!env(&ext("redis", serde_json::json!({"minReplicas": 0})))
            .iter()
            .any(|(n, _)| n.ends_with("_CA_FILE")));
    }

    #[test]
    fn cnpg_uses_the_app_secret() {
        let store =
            fixtures::store(serde_json::json!({"driver": "db", "backend": {"cloudNativePG": {}}}));
        let c = connection(&store);
        assert_eq!(secret_ref(&c.env[0]), Some(("sessions-pg-app", "uri")));
        assert_eq!(c.endpoint.as_deref(), Some("sessions-pg-rw.shop.svc:5432"));
    }
}

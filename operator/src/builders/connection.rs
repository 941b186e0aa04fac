//! How the sidecar reaches the backend: names, URIs and the Secret references it reads.
//! Shared by the reconciler (status) and the webhook (sidecar env), so both agree.

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, SecretKeySelector};

use super::secret::{PASSWORD_KEY, PG_DATABASE, PG_USER};
use super::ValidStore;
use crate::crd::{Backend, Driver};

pub const REDIS_PORT: i32 = 6379;
pub const POSTGRES_PORT: i32 = 5432;

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

/// What the sidecar needs to reach the backend.
#[derive(Clone, Debug, PartialEq)]
pub struct Connection {
    /// Env vars for the sidecar: the URI and, where the URI has no password, the password.
    pub env: Vec<EnvVar>,
    /// host:port without credentials, for the status.
    pub endpoint: Option<String>,
    /// Secret holding the credentials.
    pub secret_name: String,
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

/// Secrets are only ever referenced (`secretKeyRef`), never copied into the Pod spec.
pub fn connection(store: &ValidStore) -> Connection {
    let driver = store.spec.driver;
    match &store.spec.backend {
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
            }
        }
        Backend::External(ext) => Connection {
            env: vec![from_secret(
                uri_var(driver),
                &ext.uri_secret_ref.name,
                &ext.uri_secret_ref.key,
            )],
            endpoint: None,
            secret_name: ext.uri_secret_ref.name.clone(),
        },
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
        let c = connection(&fixtures::managed_redis());
        assert_eq!(c.env[0].name, "DKN_AUTH_REDIS_URI");
        assert_eq!(
            c.env[0].value.as_deref(),
            Some("redis://sessions-redis.shop.svc:6379/0")
        );
        assert_eq!(c.env[1].name, "DKN_AUTH_REDIS_PASSWORD");
        assert_eq!(c.env[1].value, None);
        assert_eq!(secret_ref(&c.env[1]), Some(("sessions-redis", "password")));
        assert_eq!(c.endpoint.as_deref(), Some("sessions-redis.shop.svc:6379"));
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

    #[test]
    fn cnpg_uses_the_app_secret() {
        let store =
            fixtures::store(serde_json::json!({"driver": "db", "backend": {"cloudNativePG": {}}}));
        let c = connection(&store);
        assert_eq!(secret_ref(&c.env[0]), Some(("sessions-pg-app", "uri")));
        assert_eq!(c.endpoint.as_deref(), Some("sessions-pg-rw.shop.svc:5432"));
    }
}

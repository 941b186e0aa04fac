//! Managed PostgreSQL: official `postgres` image, same shape as the managed Redis.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, ExecAction, Probe, SecretKeySelector, Service,
};

use super::connection::{managed_names, POSTGRES_PORT};
use super::managed::{self, Shape};
use super::secret::{PASSWORD_KEY, PG_DATABASE, PG_USER};
use super::{Defaults, ValidStore};
use crate::crd::ManagedBackend;

fn literal(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

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
            .unwrap_or_else(|| defaults.postgres_image.clone()),
        port: POSTGRES_PORT,
        args: Vec::new(),
        env: vec![
            literal("POSTGRES_USER", PG_USER),
            literal("POSTGRES_DB", PG_DATABASE),
            // A sub-directory: the volume's root may hold lost+found, which initdb refuses.
            literal("PGDATA", "/var/lib/postgresql/data/pgdata"),
            EnvVar {
                name: "POSTGRES_PASSWORD".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: name.clone(),
                        key: PASSWORD_KEY.into(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
            },
        ],
        data_path: "/var/lib/postgresql/data",
        scratch_paths: &["/tmp", "/var/run/postgresql"],
        readiness: Probe {
            exec: Some(ExecAction {
                command: Some(
                    [
                        "pg_isready",
                        "-h",
                        "127.0.0.1",
                        "-U",
                        PG_USER,
                        "-d",
                        PG_DATABASE,
                    ]
                    .map(String::from)
                    .to_vec(),
                ),
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

    #[test]
    fn statefulset_runs_official_postgres_with_password_from_secret() {
        let store = fixtures::managed_postgres();
        let Backend::Managed(m) = &store.spec.backend else {
            panic!("managed")
        };
        let (sts, svc) = build(&store, m, &Defaults::default());
        assert_eq!(sts.metadata.name.as_deref(), Some("sessions-postgres"));
        let spec = sts.spec;
        let pod = spec.template.spec.expect("pod");
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("postgres:17"));
        let env = c.env.as_ref().expect("env");
        let pw = env
            .iter()
            .find(|e| e.name == "POSTGRES_PASSWORD")
            .expect("password var");
        assert_eq!(pw.value, None, "password must come from the Secret");
        assert!(env.iter().any(|e| e.name == "PGDATA"));
        let mounts: Vec<_> = c
            .volume_mounts
            .as_ref()
            .expect("mounts")
            .iter()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert!(
            mounts.contains(&"/var/run/postgresql"),
            "socket dir must be writable: {mounts:?}"
        );
        let claim = &spec.volume_claim_templates.expect("claims")[0];
        let size = &claim
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .expect("requests")["storage"];
        assert_eq!(size.0, "5Gi");
        assert_eq!(svc.spec.expect("svc").ports.expect("ports")[0].port, 5432);
    }
}

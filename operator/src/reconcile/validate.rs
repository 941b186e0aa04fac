//! Pure validation of a store. An invalid spec is reported in status and waits for a change:
//! retrying cannot fix it.

use crate::builders::ValidStore;
use crate::crd::{
    Backend, Driver, ExternalBackend, OdooSessionStore, MAX_MANAGED_REPLICAS, SIDECAR_CONTAINER,
};

/// Longest store name for which every derived name fits: `<name>-postgres` as a StatefulSet
/// name must leave room for the 11-character `controller-revision-hash` suffix within 63.
pub const MAX_NAME_LEN: usize = 40;

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// What is wrong with an external backend's references and settings.
fn external_problems(e: &ExternalBackend, driver: Driver) -> Vec<String> {
    let mut problems = Vec::new();
    if e.uri_secret_ref.name.is_empty() || e.uri_secret_ref.key.is_empty() {
        problems.push("spec.backend.external.uriSecretRef needs name and key".to_string());
    }
    if e.ca_secret_ref
        .as_ref()
        .is_some_and(|r| r.name.is_empty() || r.key.is_empty())
    {
        problems.push("spec.backend.external.caSecretRef needs name and key".to_string());
    }
    if let Some(n) = e.min_replicas {
        if driver != Driver::Redis {
            problems.push(format!(
                "spec.backend.external.minReplicas applies to driver redis only (spec.driver is {}); with PostgreSQL, the server's synchronous replication decides whether a commit survives a fail-over",
                driver.as_str()
            ));
        } else if let Err(err) = odoo_ha_contract::REDIS_MIN_REPLICAS.check_int(i64::from(n)) {
            problems.push(format!("spec.backend.external.minReplicas: {err}"));
        }
    }
    problems
}

/// Returns the validated store, or every problem found (joined for the status message).
pub fn validate(store: &OdooSessionStore) -> Result<ValidStore, Vec<String>> {
    let mut problems = Vec::new();
    let meta = &store.metadata;
    let name = meta.name.clone().unwrap_or_default();
    let namespace = meta.namespace.clone().unwrap_or_default();
    let uid = meta.uid.clone().unwrap_or_default();
    if name.is_empty() || namespace.is_empty() || uid.is_empty() {
        problems.push("metadata.name, metadata.namespace and metadata.uid must be set".to_string());
    }
    let spec = &store.spec;
    if !matches!(spec.backend, Backend::External(_)) && name.len() > MAX_NAME_LEN {
        problems.push(format!(
            "metadata.name is {} characters; a store with a managed or CloudNativePG backend may have at most {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if matches!(spec.backend, Backend::CloudNativePg(_)) && spec.driver != Driver::Db {
        problems.push("spec.backend.cloudNativePG needs spec.driver: db".to_string());
    }
    // The settings contract's bounds and format, the same the CRD schema carries.
    if let Err(e) = odoo_ha_contract::PREFIX.check_text(&spec.prefix) {
        problems.push(format!("spec.prefix: {e}"));
    }
    for (field, setting, value) in [
        (
            "spec.expirySeconds",
            &odoo_ha_contract::EXPIRY,
            spec.expiry_seconds,
        ),
        (
            "spec.anonymousExpirySeconds",
            &odoo_ha_contract::ANONYMOUS_EXPIRY,
            spec.anonymous_expiry_seconds,
        ),
        (
            "spec.redisPoolSize",
            &odoo_ha_contract::REDIS_MAX_CONN,
            i64::from(spec.redis_pool_size),
        ),
    ] {
        if let Err(e) = setting.check_int(value) {
            problems.push(format!("{field}: {e}"));
        }
    }
    if let Some(commit) = &spec.db_synchronous_commit {
        if spec.driver != Driver::Db {
            problems.push(format!(
                "spec.dbSynchronousCommit applies to driver db only (spec.driver is {})",
                spec.driver.as_str()
            ));
        } else if let Err(e) = odoo_ha_contract::DB_SYNCHRONOUS_COMMIT.check_choice(commit) {
            problems.push(format!("spec.dbSynchronousCommit: {e}"));
        }
    }
    let side = &spec.sidecar;
    for (field, port) in [
        ("spec.sidecar.port", side.port),
        ("spec.sidecar.healthPort", side.health_port),
    ] {
        if !(1024..=65535).contains(&port) {
            problems.push(format!("{field} must be 1024 to 65535, got {port}"));
        }
    }
    if side.port == side.health_port {
        problems.push("spec.sidecar.port and spec.sidecar.healthPort must differ".to_string());
    }
    if side
        .image
        .as_deref()
        .is_some_and(|i| i.trim().is_empty() || i.contains(char::is_whitespace))
    {
        problems.push(
            "spec.sidecar.image must be a non-empty image reference without spaces".to_string(),
        );
    }
    if let Some(policy) = &side.image_pull_policy {
        if !matches!(policy.as_str(), "Always" | "IfNotPresent" | "Never") {
            problems.push(format!(
                "spec.sidecar.imagePullPolicy must be Always, IfNotPresent or Never, got {policy}"
            ));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in &spec.injection.containers {
        if !is_dns_label(c) {
            problems.push(format!(
                "spec.injection.containers: {c:?} is not a valid container name"
            ));
        } else if c == SIDECAR_CONTAINER {
            problems.push(format!(
                "spec.injection.containers must not name the sidecar ({SIDECAR_CONTAINER})"
            ));
        } else if !seen.insert(c) {
            problems.push(format!("spec.injection.containers names {c:?} twice"));
        }
    }
    if let Backend::Managed(m) = &spec.backend {
        if let Some(n) = m.replicas {
            if !(1..=MAX_MANAGED_REPLICAS).contains(&n) {
                problems.push(format!(
                    "spec.backend.managed.replicas must be 1 to {MAX_MANAGED_REPLICAS}, got {n}"
                ));
            } else if n > 1 && spec.driver == Driver::Db {
                problems.push(format!(
                    "spec.backend.managed.replicas is {n}, but a managed PostgreSQL runs only 1 instance: use spec.backend.cloudNativePG (instances: {n}) for replicated PostgreSQL"
                ));
            }
        }
    }
    match &spec.backend {
        Backend::Managed(m) if m.image.as_deref().is_some_and(|i| i.trim().is_empty()) => {
            problems.push("spec.backend.managed.image must not be empty".to_string());
        }
        Backend::External(e) => problems.extend(external_problems(e, spec.driver)),
        _ => {}
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(ValidStore {
        name,
        namespace,
        uid,
        generation: meta.generation,
        spec: spec.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn store(name: &str, spec: serde_json::Value) -> OdooSessionStore {
        let mut s = OdooSessionStore::new(name, serde_json::from_value(spec).expect("spec parses"));
        s.metadata = ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            uid: Some("u-1".into()),
            generation: Some(3),
            ..ObjectMeta::default()
        };
        s
    }

    #[test]
    fn a_good_store_passes() {
        let v = validate(&store(
            "sessions",
            serde_json::json!({"driver": "redis", "backend": {"managed": {}}}),
        ))
        .expect("valid");
        assert_eq!(v.name, "sessions");
        assert_eq!(v.generation, Some(3));
    }

    #[test]
    fn cnpg_needs_db_driver() {
        let err = validate(&store(
            "s",
            serde_json::json!({"driver": "redis", "backend": {"cloudNativePG": {}}}),
        ))
        .expect_err("invalid");
        assert!(err[0].contains("driver: db"), "{err:?}");
    }

    #[test]
    fn every_problem_is_reported() {
        let err = validate(&store(
            "s",
            serde_json::json!({
                "driver": "redis", "backend": {"managed": {}}, "prefix": "a b*", "expirySeconds": 5,
                "redisPoolSize": 0, "sidecar": {"port": 7070, "healthPort": 7070, "imagePullPolicy": "Sometimes"},
                "injection": {"containers": ["Odoo", "odoo-session-sidecar", "web", "web"]}
            }),
        ))
        .expect_err("invalid");
        let all = err.join("\n");
        for needle in [
            "spec.prefix",
            "expirySeconds",
            "redisPoolSize",
            "must differ",
            "imagePullPolicy",
            "\"Odoo\"",
            "must not name the sidecar",
            "twice",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in {all}");
        }
    }

    /// Issue 13: values the sidecar or the addon refuse are refused here too, by the
    /// settings contract.
    #[test]
    fn contract_bounds_of_issue_13() {
        for (spec, needle) in [
            (serde_json::json!({"prefix": "a{b"}), "spec.prefix: DKN_AUTH_PREFIX"),
            (
                serde_json::json!({"expirySeconds": 40_000_000}),
                "spec.expirySeconds: DKN_AUTH_EXPIRY must be from 60 to 31536000",
            ),
            (
                serde_json::json!({"anonymousExpirySeconds": 40_000_000}),
                "spec.anonymousExpirySeconds: DKN_AUTH_ANONYMOUS_EXPIRY must be from 60 to 31536000",
            ),
        ] {
            let mut full = serde_json::json!({"driver": "redis", "backend": {"managed": {}}});
            full.as_object_mut()
                .expect("object")
                .extend(spec.as_object().expect("object").clone());
            let err = validate(&store("s", full)).expect_err("invalid");
            assert!(err.iter().any(|e| e.contains(needle)), "{err:?}");
        }
        let ok = serde_json::json!({"driver": "redis", "backend": {"managed": {}},
            "prefix": "odoo|prod~1:", "expirySeconds": 31_536_000, "anonymousExpirySeconds": 60});
        assert!(validate(&store("s", ok)).is_ok());
    }

    #[test]
    fn managed_replicas_bounds_and_postgres_single_instance() {
        let spec = |driver: &str, n: i64| serde_json::json!({"driver": driver, "backend": {"managed": {"replicas": n}}});
        assert!(validate(&store("s", spec("redis", 1))).is_ok());
        assert!(validate(&store("s", spec("redis", 7))).is_ok());
        assert!(validate(&store("s", spec("db", 1))).is_ok());
        for n in [0, -1, 8] {
            let err = validate(&store("s", spec("redis", n))).expect_err("out of range");
            assert!(
                err[0].contains("spec.backend.managed.replicas must be 1 to 7"),
                "{err:?}"
            );
        }
        let err = validate(&store("s", spec("db", 3))).expect_err("postgres replicas");
        assert!(err[0].contains("backend.cloudNativePG"), "{err:?}");
        assert!(validate(&store(
            "s",
            serde_json::json!({"driver": "db", "backend": {"managed": {}}})
        ))
        .is_ok());
    }

    /// Issue 9 item 4: the PostgreSQL commit mode, for driver db only, one of the contract's words.
    #[test]
    fn db_synchronous_commit_is_for_driver_db() {
        let spec = |driver: &str, v: &str| serde_json::json!({"driver": driver, "backend": {"managed": {}}, "dbSynchronousCommit": v});
        assert!(validate(&store("s", spec("db", "off"))).is_ok());
        assert!(validate(&store("s", spec("db", "on"))).is_ok());
        let err = validate(&store("s", spec("redis", "off"))).expect_err("redis");
        assert!(
            err[0].contains("spec.dbSynchronousCommit applies to driver db only"),
            "{err:?}"
        );
        let err = validate(&store("s", spec("db", "local"))).expect_err("bad word");
        assert!(
            err[0].contains("DKN_AUTH_DB_SYNCHRONOUS_COMMIT must be one of on, off"),
            "{err:?}"
        );
    }

    /// Issue 9 item 3: minReplicas for driver redis only, within the contract's bounds;
    /// a CA Secret for either driver.
    #[test]
    fn external_min_replicas_and_ca_secret() {
        let spec = |driver: &str, external: serde_json::Value| {
            let mut e = serde_json::json!({"uriSecretRef": {"name": "r"}});
            e.as_object_mut()
                .expect("object")
                .extend(external.as_object().expect("object").clone());
            store(
                "s",
                serde_json::json!({"driver": driver, "backend": {"external": e}}),
            )
        };
        for n in [0, 1, 16] {
            assert!(validate(&spec("redis", serde_json::json!({"minReplicas": n}))).is_ok());
        }
        let err = validate(&spec("db", serde_json::json!({"minReplicas": 1}))).expect_err("db");
        assert!(
            err[0].starts_with(
                "spec.backend.external.minReplicas applies to driver redis only (spec.driver is db)"
            ),
            "{err:?}"
        );
        for n in [-1, 17] {
            let err = validate(&spec("redis", serde_json::json!({"minReplicas": n})))
                .expect_err("out of bounds");
            assert_eq!(
                err,
                [format!("spec.backend.external.minReplicas: DKN_AUTH_REDIS_MIN_REPLICAS must be from 0 to 16, got {n}")]
            );
        }
        for driver in ["redis", "db"] {
            assert!(validate(&spec(
                driver,
                serde_json::json!({"caSecretRef": {"name": "ca"}})
            ))
            .is_ok());
        }
        let err = validate(&spec(
            "redis",
            serde_json::json!({"caSecretRef": {"name": "ca", "key": ""}}),
        ))
        .expect_err("empty key");
        assert_eq!(
            err,
            ["spec.backend.external.caSecretRef needs name and key"]
        );
    }

    #[test]
    fn long_names_only_matter_when_we_create_objects() {
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(validate(&store(
            &long,
            serde_json::json!({"driver": "redis", "backend": {"managed": {}}})
        ))
        .is_err());
        assert!(validate(&store(
            &long,
            serde_json::json!({"driver": "redis", "backend": {"external": {"uriSecretRef": {"name": "x"}}}})
        ))
        .is_ok());
    }
}

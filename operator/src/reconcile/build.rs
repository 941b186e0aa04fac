//! Build: every object to apply and every object to remove, from the validated store and
//! what was dereferenced. Pure (no I/O, no randomness: the password comes in), so the
//! whole plan of a reconcile is unit tested here; [`super::apply::execute`] carries it out.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ApiResource, DynamicObject};
use kube::Resource;

use super::dereference::Dereferenced;
use crate::builders::connection::{
    cnpg_cluster_name, connection, headless_name, managed_names, sentinel_replicas, Connection,
};
use crate::builders::{
    cnpg, network_policy, pdb, postgres, redis, redis_ha, secret, sidecar, Defaults, ValidStore,
};
use crate::crd::{Backend, Driver, OdooSessionStoreStatus};

/// One object to server-side apply.
// A few per reconcile, built once and applied: their sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Secret(Secret),
    Service(Service),
    NetworkPolicy(NetworkPolicy),
    StatefulSet(StatefulSet),
    /// A kind k8s-openapi has no type for, or whose version follows the server (the
    /// CloudNativePG Cluster, the PodDisruptionBudget).
    Dynamic(ApiResource, DynamicObject),
}

impl Object {
    /// `kind/name`, for logs and tests.
    pub fn describe(&self) -> String {
        let (kind, name) = match self {
            Object::Secret(o) => ("secret", o.metadata.name.as_deref()),
            Object::Service(o) => ("service", o.metadata.name.as_deref()),
            Object::NetworkPolicy(o) => ("networkpolicy", o.metadata.name.as_deref()),
            Object::StatefulSet(o) => ("statefulset", o.metadata.name.as_deref()),
            Object::Dynamic(ar, o) => {
                return format!(
                    "{}/{}",
                    ar.kind.to_lowercase(),
                    o.metadata.name.as_deref().unwrap_or_default()
                )
            }
        };
        format!("{kind}/{}", name.unwrap_or_default())
    }
}

/// An object to delete if it exists and this store controls it.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub resource: ApiResource,
    pub name: String,
}

impl Target {
    fn of<K: Resource<DynamicType = ()>>(name: impl Into<String>) -> Target {
        Target {
            resource: ApiResource::erase::<K>(&()),
            name: name.into(),
        }
    }

    /// `kind/name`, for logs and tests.
    pub fn describe(&self) -> String {
        format!("{}/{}", self.resource.kind.to_lowercase(), self.name)
    }
}

/// Everything one reconcile changes, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// A StatefulSet to delete before anything is applied: its `serviceName` is immutable
    /// and changes between a single Redis and Redis with Sentinel (the claims, and so the
    /// data of Pod 0, stay).
    pub recreate: Option<String>,
    /// Applied in this order (Services before the StatefulSet that names them).
    pub apply: Vec<Object>,
    /// What the store's previous shape created and the current one does not.
    pub prune: Vec<Target>,
    /// Opted-in workloads get this config hash in their Pod template when the previous
    /// status carried another one (their controllers roll the Pods).
    pub roll: Option<String>,
    /// Hash of the injected settings (`status.configHash`).
    pub config_hash: String,
    /// How the sidecars reach the backend (`status.endpoint`, `status.credentialsSecret`).
    pub connection: Connection,
}

/// The plan of a reconcile. `password` is the managed backend's (kept or new; None for
/// other backends); `previous` is the status the last reconcile wrote.
pub fn build(
    valid: &ValidStore,
    defaults: &Defaults,
    found: &Dereferenced,
    password: Option<&str>,
    previous: Option<&OdooSessionStoreStatus>,
) -> Plan {
    let mut plan = Plan {
        recreate: None,
        apply: Vec::new(),
        prune: Vec::new(),
        roll: None,
        config_hash: sidecar::build(valid, defaults, false).config_hash,
        connection: connection(valid),
    };
    match &valid.spec.backend {
        Backend::Managed(m) => {
            let (name, _) = managed_names(valid);
            let ha = sentinel_replicas(valid);
            let service_name = match ha {
                Some(_) => headless_name(valid),
                None => name.clone(),
            };
            if found
                .statefulset_service_name
                .as_ref()
                .is_some_and(|s| *s != service_name)
            {
                plan.recreate = Some(name.clone());
            }
            if let Some(password) = password {
                plan.apply
                    .push(Object::Secret(secret::build(valid, password)));
            }
            match (valid.spec.driver, ha) {
                (Driver::Redis, Some(replicas)) => {
                    let (sts, svc, headless) = redis_ha::build(valid, m, defaults, replicas);
                    plan.apply.extend([
                        Object::Service(headless),
                        Object::Service(svc),
                        Object::NetworkPolicy(network_policy::build(valid, defaults)),
                        Object::Dynamic(pdb::api_resource(defaults), pdb::build(valid, defaults)),
                        Object::StatefulSet(sts),
                    ]);
                }
                (driver, _) => {
                    let (sts, svc) = match driver {
                        Driver::Redis => redis::build(valid, m, defaults),
                        Driver::Db => postgres::build(valid, m, defaults),
                    };
                    plan.apply.extend([
                        Object::Service(svc),
                        Object::NetworkPolicy(network_policy::build(valid, defaults)),
                        Object::StatefulSet(sts),
                    ]);
                    // Back from Redis with Sentinel to a single Redis.
                    if driver == Driver::Redis && previous.is_some_and(|s| s.redis.is_some()) {
                        plan.prune.extend(sentinel_objects(valid, defaults));
                    }
                }
            }
        }
        Backend::External(_) => {}
        Backend::CloudNativePg(c) => {
            // Without the CRD there is nothing to apply; the status says so.
            if found.cnpg_installed {
                plan.apply
                    .push(Object::Dynamic(cnpg::api_resource(), cnpg::build(valid, c)));
            }
        }
    }
    let kind = valid.spec.backend.kind_name(valid.spec.driver);
    if let Some(before) = previous
        .and_then(|s| s.backend.as_deref())
        .filter(|b| *b != kind)
    {
        plan.prune
            .extend(previous_backend_objects(valid, defaults, before));
    }
    if previous
        .and_then(|s| s.config_hash.as_ref())
        .is_some_and(|h| *h != plan.config_hash)
    {
        plan.roll = Some(plan.config_hash.clone());
    }
    plan
}

/// The headless Service and the PodDisruptionBudget of a Redis with Sentinel (named after
/// the Redis StatefulSet whatever the store's driver is now).
fn sentinel_objects(valid: &ValidStore, defaults: &Defaults) -> Vec<Target> {
    vec![
        Target::of::<Service>(headless_name(valid)),
        Target {
            resource: pdb::api_resource(defaults),
            name: format!("{}-redis", valid.name),
        },
    ]
}

/// What a backend of kind `before` (`status.backend`) created.
fn previous_backend_objects(valid: &ValidStore, defaults: &Defaults, before: &str) -> Vec<Target> {
    let managed = |name: String| {
        vec![
            Target::of::<StatefulSet>(name.clone()),
            Target::of::<Service>(name.clone()),
            Target::of::<NetworkPolicy>(name.clone()),
            Target::of::<Secret>(name),
        ]
    };
    match before {
        "managed-redis" => {
            let mut all = sentinel_objects(valid, defaults);
            all.extend(managed(format!("{}-redis", valid.name)));
            all
        }
        "managed-postgres" => managed(format!("{}-postgres", valid.name)),
        "cloudnativepg" => vec![Target {
            resource: cnpg::api_resource(),
            name: cnpg_cluster_name(valid),
        }],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures;

    fn v1_20() -> Defaults {
        Defaults {
            server_version: Some((1, 20)),
            ..Defaults::default()
        }
    }

    fn applied(plan: &Plan) -> Vec<String> {
        plan.apply.iter().map(Object::describe).collect()
    }

    fn pruned(plan: &Plan) -> Vec<String> {
        plan.prune.iter().map(Target::describe).collect()
    }

    fn status(backend: &str, redis: bool, hash: Option<&str>) -> OdooSessionStoreStatus {
        OdooSessionStoreStatus {
            backend: Some(backend.into()),
            config_hash: hash.map(String::from),
            redis: redis.then(Default::default),
            ..OdooSessionStoreStatus::default()
        }
    }

    #[test]
    fn sentinel_store_applies_secret_services_policy_budget_then_statefulset() {
        let valid = fixtures::managed_redis();
        let plan = build(&valid, &v1_20(), &Dereferenced::default(), Some("pw"), None);
        assert_eq!(
            applied(&plan),
            [
                "secret/sessions-redis",
                "service/sessions-redis-headless",
                "service/sessions-redis",
                "networkpolicy/sessions-redis",
                "poddisruptionbudget/sessions-redis",
                "statefulset/sessions-redis",
            ]
        );
        let Some(Object::Dynamic(ar, _)) = plan.apply.get(4) else {
            panic!("budget")
        };
        assert_eq!(ar.api_version, "policy/v1beta1");
        let Some(Object::Secret(s)) = plan.apply.first() else {
            panic!("secret")
        };
        assert_eq!(
            s.data
                .as_ref()
                .and_then(|d| d.get("password"))
                .map(|b| b.0.as_slice()),
            Some(b"pw".as_slice())
        );
        assert_eq!(
            (plan.recreate.as_deref(), plan.roll.as_deref()),
            (None, None)
        );
        assert!(plan.prune.is_empty());
        assert_eq!(
            plan.config_hash,
            sidecar::build(&valid, &v1_20(), false).config_hash
        );
        assert_eq!(plan.connection.secret_name, "sessions-redis");
    }

    #[test]
    fn single_redis_and_postgres_apply_secret_service_policy_statefulset() {
        for (valid, name) in [
            (fixtures::single_redis(), "sessions-redis"),
            (fixtures::managed_postgres(), "sessions-postgres"),
        ] {
            let plan = build(&valid, &v1_20(), &Dereferenced::default(), Some("pw"), None);
            assert_eq!(
                applied(&plan),
                [
                    format!("secret/{name}"),
                    format!("service/{name}"),
                    format!("networkpolicy/{name}"),
                    format!("statefulset/{name}"),
                ]
            );
        }
    }

    #[test]
    fn a_changed_service_name_recreates_the_statefulset() {
        let found = |service: &str| Dereferenced {
            statefulset_service_name: Some(service.into()),
            ..Dereferenced::default()
        };
        // 1 -> 3: the single Redis's StatefulSet names its own Service.
        let plan = build(
            &fixtures::managed_redis(),
            &v1_20(),
            &found("sessions-redis"),
            Some("pw"),
            Some(&status("managed-redis", false, None)),
        );
        assert_eq!(plan.recreate.as_deref(), Some("sessions-redis"));
        // 3 -> 1: recreated, and the Sentinel objects go.
        let plan = build(
            &fixtures::single_redis(),
            &v1_20(),
            &found("sessions-redis-headless"),
            Some("pw"),
            Some(&status("managed-redis", true, None)),
        );
        assert_eq!(plan.recreate.as_deref(), Some("sessions-redis"));
        assert_eq!(
            pruned(&plan),
            [
                "service/sessions-redis-headless",
                "poddisruptionbudget/sessions-redis"
            ]
        );
        // Unchanged: nothing recreated.
        let plan = build(
            &fixtures::managed_redis(),
            &v1_20(),
            &found("sessions-redis-headless"),
            Some("pw"),
            Some(&status("managed-redis", true, None)),
        );
        assert_eq!((plan.recreate, plan.prune.len()), (None, 0));
    }

    #[test]
    fn a_changed_backend_removes_what_the_previous_one_created() {
        let external = fixtures::store(
            serde_json::json!({"driver": "redis", "backend": {"external": {"uriSecretRef": {"name": "r"}}}}),
        );
        let plan = build(
            &external,
            &v1_20(),
            &Dereferenced::default(),
            None,
            Some(&status("managed-redis", true, None)),
        );
        assert!(plan.apply.is_empty());
        assert_eq!(
            pruned(&plan),
            [
                "service/sessions-redis-headless",
                "poddisruptionbudget/sessions-redis",
                "statefulset/sessions-redis",
                "service/sessions-redis",
                "networkpolicy/sessions-redis",
                "secret/sessions-redis",
            ]
        );
        // Redis with Sentinel -> managed PostgreSQL: the budget is the Redis one.
        let plan = build(
            &fixtures::managed_postgres(),
            &v1_20(),
            &Dereferenced::default(),
            Some("pw"),
            Some(&status("managed-redis", true, None)),
        );
        assert!(pruned(&plan).contains(&"poddisruptionbudget/sessions-redis".to_string()));
        assert!(!pruned(&plan).iter().any(|p| p.contains("postgres")));
        let plan = build(
            &external,
            &v1_20(),
            &Dereferenced::default(),
            None,
            Some(&status("cloudnativepg", false, None)),
        );
        assert_eq!(pruned(&plan), ["cluster/sessions-pg"]);
        let plan = build(
            &external,
            &v1_20(),
            &Dereferenced::default(),
            None,
            Some(&status("external", false, None)),
        );
        assert!(plan.prune.is_empty());
    }

    #[test]
    fn cloudnativepg_cluster_only_when_its_crd_is_installed() {
        let valid =
            fixtures::store(serde_json::json!({"driver": "db", "backend": {"cloudNativePG": {}}}));
        let plan = build(&valid, &v1_20(), &Dereferenced::default(), None, None);
        assert!(plan.apply.is_empty());
        let installed = Dereferenced {
            cnpg_installed: true,
            ..Dereferenced::default()
        };
        let plan = build(&valid, &v1_20(), &installed, None, None);
        assert_eq!(applied(&plan), ["cluster/sessions-pg"]);
    }

    #[test]
    fn a_new_config_hash_rolls_the_workloads() {
        let valid = fixtures::single_redis();
        let hash = sidecar::build(&valid, &v1_20(), false).config_hash;
        let roll = |previous: Option<&str>| {
            build(
                &valid,
                &v1_20(),
                &Dereferenced::default(),
                Some("pw"),
                Some(&status("managed-redis", false, previous)),
            )
            .roll
        };
        assert_eq!(roll(Some("old")), Some(hash.clone()));
        assert_eq!(roll(Some(&hash)), None);
        // The first status: nothing to roll (Pods got the settings when injected).
        assert_eq!(roll(None), None);
    }
}

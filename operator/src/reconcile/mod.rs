//! Reconcile: dereference -> validate -> build -> apply -> status.

pub mod apply;
pub mod dereference;
pub mod pods;
pub mod sentinel;
pub mod status;
pub mod validate;

#[cfg(test)]
mod mock_tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::builders::connection::{
    connection, headless_name, managed_names, sentinel_replicas, SENTINEL_MASTER, SENTINEL_PORT,
};
use crate::builders::{
    cnpg, network_policy, pdb, postgres, redis, redis_ha, secret, selector_labels, sidecar,
    Defaults, ValidStore,
};
use crate::crd::{
    Backend, Driver, OdooSessionStore, OdooSessionStoreStatus, PvcRetention,
    RedisReplicationStatus, FINALIZER, MANAGER, STORE_LABEL,
};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use dereference::{ExternalSecret, Observed};
use status::{Decided, BACKEND_READY, INJECTION_READY};

/// Shared state of the reconciler.
pub struct Context {
    pub client: Client,
    pub defaults: Defaults,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Set once the webhook serves and its configuration is applied.
    pub webhook_ready: Arc<AtomicBool>,
}

/// Requeue intervals: soon while something is pending, rarely once all is ready.
const REQUEUE_PENDING: Duration = Duration::from_secs(15);
const REQUEUE_READY: Duration = Duration::from_secs(300);
/// While an injected container is starting or not Ready yet.
const REQUEUE_SETTLING: Duration = Duration::from_secs(60);
/// A managed Redis with Sentinel: its replication status is asked this often.
const REQUEUE_SENTINEL: Duration = Duration::from_secs(30);

pub async fn reconcile(store: Arc<OdooSessionStore>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let ns = store
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<OdooSessionStore> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, store, |event| async {
        match event {
            Finalizer::Apply(s) => apply_store(&s, &ctx).await,
            Finalizer::Cleanup(s) => cleanup(&s, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

pub fn error_policy(store: Arc<OdooSessionStore>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(store = %store.name_any(), namespace = ?store.namespace(), error = %error, label = error.metric_label(), "reconcile failed");
    ctx.metrics.reconcile_failed(error.metric_label());
    Action::requeue(REQUEUE_PENDING)
}

/// What the backend step decided: the BackendReady condition and, for a Redis with
/// Sentinel, its replication status.
struct BackendOutcome {
    condition: Decided,
    redis: Option<RedisReplicationStatus>,
}

impl From<Decided> for BackendOutcome {
    fn from(condition: Decided) -> Self {
        BackendOutcome {
            condition,
            redis: None,
        }
    }
}

/// The build + apply step for the backend; returns the BackendReady condition.
async fn apply_backend(
    store: &OdooSessionStore,
    valid: &ValidStore,
    observed: &Observed,
    ctx: &Context,
) -> Result<BackendOutcome> {
    let client = &ctx.client;
    match &valid.spec.backend {
        Backend::Managed(m) => {
            let password = observed
                .managed_password
                .clone()
                .unwrap_or_else(secret::generate_password);
            apply::apply(client, &secret::build(valid, &password)).await?;
            let (name, _) = managed_names(valid);
            let ha = sentinel_replicas(valid);
            // serviceName is immutable: going between a single Redis and Redis with
            // Sentinel recreates the StatefulSet (the claims, and so the data of Pod 0, stay).
            let service_name = match ha {
                Some(_) => headless_name(valid),
                None => name.clone(),
            };
            if observed
                .statefulset_service_name
                .as_ref()
                .is_some_and(|s| *s != service_name)
                && apply::prune::<StatefulSet>(client, &valid.namespace, &name, &valid.uid).await?
            {
                info!(store = %valid.name, namespace = %valid.namespace, statefulset = %name, "replicas changed between 1 and more: recreating the StatefulSet");
                publish(
                    ctx,
                    store,
                    EventType::Normal,
                    "RecreatingStatefulSet",
                    format!("StatefulSet {name} is recreated for the new number of replicas (its claims are kept)"),
                )
                .await;
            }
            let sts = match (valid.spec.driver, ha) {
                (Driver::Redis, Some(replicas)) => {
                    let (sts, svc, headless) = redis_ha::build(valid, m, &ctx.defaults, replicas);
                    apply::apply(client, &headless).await?;
                    apply::apply(client, &svc).await?;
                    apply::apply(client, &network_policy::build(valid, &ctx.defaults)).await?;
                    apply::apply_dynamic(
                        client,
                        &pdb::api_resource(&ctx.defaults),
                        &pdb::build(valid, &ctx.defaults),
                    )
                    .await?;
                    apply::apply(client, &sts).await?
                }
                (driver, _) => {
                    let (sts, svc) = match driver {
                        Driver::Redis => redis::build(valid, m, &ctx.defaults),
                        Driver::Db => postgres::build(valid, m, &ctx.defaults),
                    };
                    apply::apply(client, &svc).await?;
                    apply::apply(client, &network_policy::build(valid, &ctx.defaults)).await?;
                    let sts = apply::apply(client, &sts).await?;
                    if store.status.as_ref().is_some_and(|s| s.redis.is_some()) {
                        prune_sentinel_objects(valid, ctx).await?;
                    }
                    sts
                }
            };
            let ready = sts
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            let sts_name = sts.name_any();
            let redis_status = match ha {
                Some(replicas) => {
                    let pods: Api<Pod> = Api::namespaced(client.clone(), &valid.namespace);
                    let selector = selector_labels(&valid.name, "redis")
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",");
                    let running = pods
                        .list(&ListParams::default().labels(&selector))
                        .await?
                        .items;
                    let targets: Vec<(String, Option<String>)> = (0..replicas)
                        .map(|i| {
                            let pod = format!("{name}-{i}");
                            let ip = running
                                .iter()
                                .find(|p| p.metadata.name.as_deref() == Some(pod.as_str()))
                                .filter(|p| p.metadata.deletion_timestamp.is_none())
                                .and_then(|p| p.status.as_ref())
                                .and_then(|s| s.pod_ip.clone());
                            (pod, ip)
                        })
                        .collect();
                    let answers = sentinel::ask_all(
                        &targets,
                        u16::try_from(SENTINEL_PORT).unwrap_or(26379),
                        &password,
                        SENTINEL_MASTER,
                    )
                    .await;
                    Some(sentinel::summarize(replicas, &answers))
                }
                None => None,
            };
            let replication = redis_status
                .as_ref()
                .map(|r| match &r.primary {
                    Some(p) => format!(
                        "; primary {p}, {}/{} replicas in sync, {}/{} Sentinels agree{}",
                        r.replicas_in_sync,
                        r.pods - 1,
                        r.sentinels_agreeing,
                        r.sentinels,
                        if r.message.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", r.message)
                        }
                    ),
                    None => format!("; {}", r.message),
                })
                .unwrap_or_default();
            let condition = if ready >= 1 {
                Decided::new(
                    BACKEND_READY,
                    true,
                    "BackendRunning",
                    format!("StatefulSet {sts_name} has {ready} ready replica(s){replication}"),
                )
            } else {
                Decided::new(
                    BACKEND_READY,
                    false,
                    "BackendStarting",
                    format!(
                        "waiting for StatefulSet {sts_name} to have a ready replica{replication}"
                    ),
                )
            };
            Ok(BackendOutcome {
                condition,
                redis: redis_status,
            })
        }
        Backend::External(ext) => {
            let r = &ext.uri_secret_ref;
            Ok(BackendOutcome::from(match observed.external_secret {
                Some(ExternalSecret::Present) => Decided::new(
                    BACKEND_READY,
                    true,
                    "SecretFound",
                    format!("backend URI read from Secret {} key {}; reachability is reported by each sidecar's /readyz", r.name, r.key),
                ),
                Some(ExternalSecret::KeyMissing) => Decided::new(
                    BACKEND_READY,
                    false,
                    "SecretKeyMissing",
                    format!("Secret {} in namespace {} has no key {:?}", r.name, valid.namespace, r.key),
                ),
                _ => Decided::new(
                    BACKEND_READY,
                    false,
                    "SecretNotFound",
                    format!("Secret {} not found in namespace {}", r.name, valid.namespace),
                ),
            }))
        }
        Backend::CloudNativePg(c) => {
            if !observed.cnpg_installed {
                return Ok(BackendOutcome::from(Decided::new(
                    BACKEND_READY,
                    false,
                    "CloudNativePGNotInstalled",
                    format!("CRD {} not found: install the CloudNativePG operator or choose another backend", cnpg::CNPG_CRD),
                )));
            }
            let cluster =
                apply::apply_dynamic(client, &cnpg::api_resource(), &cnpg::build(valid, c)).await?;
            let name = cluster.name_any();
            Ok(BackendOutcome::from(if cnpg::is_ready(&cluster) {
                Decided::new(
                    BACKEND_READY,
                    true,
                    "ClusterReady",
                    format!("CloudNativePG Cluster {name} is Ready"),
                )
            } else {
                Decided::new(
                    BACKEND_READY,
                    false,
                    "ClusterNotReady",
                    format!("waiting for CloudNativePG Cluster {name} to be Ready"),
                )
            }))
        }
    }
}

/// Removes the headless Service and the PodDisruptionBudget of a Redis with Sentinel (after
/// replicas went back to 1, or the backend changed).
async fn prune_sentinel_objects(valid: &ValidStore, ctx: &Context) -> Result<()> {
    let client = &ctx.client;
    let ns = &valid.namespace;
    let uid = &valid.uid;
    let (name, _) = managed_names(valid);
    let headless = headless_name(valid);
    let mut removed = Vec::new();
    if apply::prune::<Service>(client, ns, &headless, uid).await? {
        removed.push(format!("service/{headless}"));
    }
    if apply::prune_dynamic(client, &pdb::api_resource(&ctx.defaults), ns, &name, uid).await? {
        removed.push(format!("poddisruptionbudget/{name}"));
    }
    if !removed.is_empty() {
        info!(store = %valid.name, namespace = %ns, ?removed, "no Sentinel any more: removed its objects");
    }
    Ok(())
}

/// Most failing Pods named in the `InjectionReady` message.
const FAILING_NAMED: usize = 3;

pub(crate) fn injection_condition(observed: &Observed, webhook_ready: bool) -> Decided {
    if !observed.pods_without_sidecar.is_empty() {
        let mut names = observed.pods_without_sidecar.clone();
        names.truncate(5);
        return Decided::new(
            INJECTION_READY,
            false,
            "PodsWithoutSidecar",
            format!(
                "{} opted-in Pod(s) run without the session sidecar (webhook unavailable when they were created?): {}; delete them to get it injected",
                observed.pods_without_sidecar.len(),
                names.join(", ")
            ),
        );
    }
    let failing = &observed.pods.failing;
    if !failing.is_empty() {
        let mut named: Vec<String> = failing
            .iter()
            .take(FAILING_NAMED)
            .map(pods::PodFailure::describe)
            .collect();
        if failing.len() > FAILING_NAMED {
            named.push(format!("and {} more", failing.len() - FAILING_NAMED));
        }
        return Decided::new(
            INJECTION_READY,
            false,
            "PodsFailing",
            format!(
                "{} injected Pod(s) keep failing: {}",
                failing.len(),
                named.join("; ")
            ),
        );
    }
    if webhook_ready {
        Decided::new(
            INJECTION_READY,
            true,
            "WebhookReady",
            "the injection webhook is serving",
        )
    } else {
        Decided::new(
            INJECTION_READY,
            false,
            "WebhookNotReady",
            "the injection webhook is not serving yet",
        )
    }
}

async fn apply_store(store: &OdooSessionStore, ctx: &Context) -> Result<Action> {
    let name = store.name_any();
    let ns = store
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let valid = match validate::validate(store) {
        Ok(v) => v,
        Err(problems) => {
            let message = problems.join("; ");
            let decided = [
                Decided::new(status::READY, false, "InvalidSpec", message.clone()),
                Decided::new(BACKEND_READY, false, "InvalidSpec", message.clone()),
                Decided::new(INJECTION_READY, false, "InvalidSpec", message),
            ];
            write_status(store, ctx, &decided, OdooSessionStoreStatus::default()).await?;
            // Only a new spec can fix this.
            return Ok(Action::await_change());
        }
    };
    let observed = dereference::dereference(&ctx.client, &valid).await?;
    let outcome = apply_backend(store, &valid, &observed, ctx).await?;
    let backend = outcome.condition;
    let sentinel_store = outcome.redis.is_some();
    let injection = injection_condition(&observed, ctx.webhook_ready.load(Ordering::Relaxed));
    let ready = status::ready(&backend, &injection);

    let kind = valid.spec.backend.kind_name(valid.spec.driver);
    if let Some(previous) = store
        .status
        .as_ref()
        .and_then(|s| s.backend.as_deref())
        .filter(|p| *p != kind)
    {
        prune_previous_backend(&valid, previous, ctx).await?;
    }

    let conn = connection(&valid);
    let inj = sidecar::build(&valid, &ctx.defaults, false);
    let previous_hash = store.status.as_ref().and_then(|s| s.config_hash.clone());
    if previous_hash
        .as_ref()
        .is_some_and(|h| *h != inj.config_hash)
    {
        let rolled = apply::roll_workloads(&ctx.client, &ns, &name, &inj.config_hash).await?;
        if !rolled.is_empty() {
            info!(store = %name, namespace = %ns, ?rolled, "settings changed: rolling opted-in workloads");
            publish(
                ctx,
                store,
                EventType::Normal,
                "RollingWorkloads",
                format!("settings changed, rolling {}", rolled.join(", ")),
            )
            .await;
        }
    }
    let all_ready = ready.status;
    let extra = OdooSessionStoreStatus {
        backend: Some(kind.to_string()),
        endpoint: conn.endpoint,
        credentials_secret: Some(conn.secret_name),
        config_hash: Some(inj.config_hash),
        pods_without_sidecar: Some(
            i32::try_from(observed.pods_without_sidecar.len()).unwrap_or(i32::MAX),
        ),
        pods_failing: Some(i32::try_from(observed.pods.failing.len()).unwrap_or(i32::MAX)),
        redis: outcome.redis,
        ..OdooSessionStoreStatus::default()
    };
    write_status(store, ctx, &[ready, backend, injection], extra).await?;
    let settling = observed.pods.settling > 0;
    Ok(Action::requeue(match (all_ready, sentinel_store) {
        (false, _) => REQUEUE_PENDING,
        // A container not Ready yet turns into a failure after a while without any Pod
        // event: look again before the limit.
        (true, _) if settling => REQUEUE_SETTLING,
        (true, true) => REQUEUE_SENTINEL,
        (true, false) => REQUEUE_READY,
    }))
}

/// Removes what the previous backend kind created (objects controlled by this store only).
async fn prune_previous_backend(valid: &ValidStore, previous: &str, ctx: &Context) -> Result<()> {
    let client = &ctx.client;
    let ns = &valid.namespace;
    let uid = &valid.uid;
    let mut removed = Vec::new();
    let managed_name = match previous {
        "managed-redis" => Some(format!("{}-redis", valid.name)),
        "managed-postgres" => Some(format!("{}-postgres", valid.name)),
        _ => None,
    };
    if previous == "managed-redis" {
        prune_sentinel_objects(valid, ctx).await?;
    }
    if let Some(name) = managed_name {
        if apply::prune::<StatefulSet>(client, ns, &name, uid).await? {
            removed.push(format!("statefulset/{name}"));
        }
        if apply::prune::<Service>(client, ns, &name, uid).await? {
            removed.push(format!("service/{name}"));
        }
        if apply::prune::<NetworkPolicy>(client, ns, &name, uid).await? {
            removed.push(format!("networkpolicy/{name}"));
        }
        if apply::prune::<Secret>(client, ns, &name, uid).await? {
            removed.push(format!("secret/{name}"));
        }
    }
    if previous == "cloudnativepg" {
        let name = crate::builders::connection::cnpg_cluster_name(valid);
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &cnpg::api_resource());
        let found = api
            .list(&ListParams::default().fields(&format!("metadata.name={name}")))
            .await;
        let owned = match found.map(|l| l.items.into_iter().next()) {
            Ok(obj) => obj.is_some_and(|o| {
                o.metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|r| r.iter().any(|r| &r.uid == uid))
            }),
            // The CRD may be gone with CloudNativePG: nothing to remove then.
            Err(kube::Error::Api(s)) if s.code == 404 => false,
            Err(e) => return Err(e.into()),
        };
        if owned {
            api.delete(&name, &DeleteParams::background()).await?;
            removed.push(format!("cluster/{name}"));
        }
    }
    if !removed.is_empty() {
        info!(store = %valid.name, namespace = %ns, ?removed, "backend changed: removed the previous backend's objects");
    }
    Ok(())
}

async fn write_status(
    store: &OdooSessionStore,
    ctx: &Context,
    decided: &[Decided],
    mut status: OdooSessionStoreStatus,
) -> Result<()> {
    let ns = store
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let previous = store
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let (conditions, transitions) = status::merge(
        previous,
        decided,
        store.metadata.generation,
        Time(jiff::Timestamp::now()),
    );
    status.conditions = conditions;
    status.observed_generation = store.metadata.generation;
    let api: Api<OdooSessionStore> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({
        "apiVersion": OdooSessionStore::api_version(&()),
        "kind": OdooSessionStore::kind(&()),
        "status": status,
    });
    api.patch_status(
        &store.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    let mut published: Vec<(String, String)> = Vec::new();
    for t in transitions {
        // An invalid spec flips all three conditions for one cause: say it once.
        if published
            .iter()
            .any(|(r, m)| *r == t.reason && *m == t.message)
        {
            continue;
        }
        published.push((t.reason.clone(), t.message.clone()));
        let (kind, reason) = if t.status {
            (EventType::Normal, format!("{}True", t.type_))
        } else {
            (EventType::Warning, t.reason.clone())
        };
        publish(
            ctx,
            store,
            kind,
            &reason,
            format!(
                "{} is {}: {}",
                t.type_,
                if t.status { "True" } else { "False" },
                t.message
            ),
        )
        .await;
    }
    Ok(())
}

async fn publish(
    ctx: &Context,
    store: &OdooSessionStore,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    // An event that cannot be written must not fail the reconcile.
    if let Err(e) = ctx.recorder.publish(&event, &store.object_ref(&())).await {
        warn!(error = %e, "could not publish event");
    }
}

/// On deletion: owner references remove everything but the StatefulSet's claims, which are
/// deleted here unless the spec says Retain.
async fn cleanup(store: &OdooSessionStore, ctx: &Context) -> Result<Action> {
    let Some(ns) = store.namespace() else {
        return Ok(Action::await_change());
    };
    if let Backend::Managed(m) = &store.spec.backend {
        if m.pvc_retention == PvcRetention::Delete {
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
            let app = match store.spec.driver {
                Driver::Redis => "redis",
                Driver::Db => "postgres",
            };
            let selector = format!("app.kubernetes.io/instance={},app.kubernetes.io/name={app},app.kubernetes.io/managed-by={MANAGER}", store.name_any());
            for pvc in pvcs
                .list(&ListParams::default().labels(&selector))
                .await?
                .items
            {
                info!(store = %store.name_any(), claim = %pvc.name_any(), "deleting claim of deleted store");
                match pvcs.delete(&pvc.name_any(), &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(Action::await_change())
}

/// Runs the controller until shutdown.
/// In every namespace (`None`) or in one (`crate::watch`).
pub async fn run(ctx: Arc<Context>, namespace: Option<&str>) {
    let client = ctx.client.clone();
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    Controller::new(
        crate::watch::api::<OdooSessionStore>(&client, namespace),
        watcher::Config::default().any_semantic(),
    )
    .owns(
        crate::watch::api::<StatefulSet>(&client, namespace),
        owned.clone(),
    )
    .owns(
        crate::watch::api::<Service>(&client, namespace),
        owned.clone(),
    )
    .owns(
        crate::watch::api::<Secret>(&client, namespace),
        owned.clone(),
    )
    .owns(
        crate::watch::api::<NetworkPolicy>(&client, namespace),
        owned,
    )
    .watches(
        crate::watch::api::<Pod>(&client, namespace),
        watcher::Config::default().labels(STORE_LABEL),
        |pod: Pod| {
            let store = pod.labels().get(STORE_LABEL)?.clone();
            Some(ObjectRef::<OdooSessionStore>::new(&store).within(&pod.namespace()?))
        },
    )
    .shutdown_on_signal()
    .run(reconcile, error_policy, ctx)
    .for_each(|_| futures::future::ready(()))
    .await;
}

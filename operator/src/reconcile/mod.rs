//! Reconcile of one store, as a pipeline of steps with their own tests:
//!
//! 1. [`validate`] (pure): the spec against the settings contract and the operator's own
//!    rules; an invalid spec is a status naming every wrong field, and waits for a new
//!    spec. It comes first because an invalid spec must cost no API call, and the names
//!    dereference reads are derived from a valid one.
//! 2. [`dereference`]: what the spec refers to and what exists (Secrets, the StatefulSet,
//!    the CloudNativePG CRD, opted-in Pods), read into one typed value.
//! 3. [`build`] (pure): every object to apply and to delete, and the roll of workloads.
//! 4. [`apply`]: the one place objects are written (server-side apply, prune, roll).
//! 5. [`sentinel::observe`]: the replication of a Redis with Sentinel, asked after the
//!    apply.
//! 6. [`status`] (pure): conditions and status fields from all of the above, and when to
//!    look again; written with one server-side apply of the status subresource.

pub mod apply;
pub mod build;
pub mod dereference;
pub mod pods;
pub mod sentinel;
pub mod status;
pub mod validate;

#[cfg(test)]
mod mock_tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

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

use crate::builders::connection::sentinel_replicas;
use crate::builders::{secret, Defaults};
use crate::crd::{
    Backend, Driver, OdooSessionStore, OdooSessionStoreStatus, PvcRetention, FINALIZER, MANAGER,
    STORE_LABEL,
};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use status::{Decided, REQUEUE_PENDING};

/// Shared state of the reconciler.
pub struct Context {
    pub client: Client,
    pub defaults: Defaults,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Set once the webhook serves and its configuration is applied.
    pub webhook_ready: Arc<AtomicBool>,
}

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

async fn apply_store(store: &OdooSessionStore, ctx: &Context) -> Result<Action> {
    let valid = match validate::validate(store) {
        Ok(v) => v,
        Err(problems) => {
            let decided = status::invalid(&problems);
            write_status(store, ctx, &decided, OdooSessionStoreStatus::default()).await?;
            // Only a new spec can fix this.
            return Ok(Action::await_change());
        }
    };
    let found = dereference::dereference(&ctx.client, &valid).await?;
    // The managed backend's password: kept once generated, never rotated by a reconcile.
    let password = matches!(valid.spec.backend, Backend::Managed(_)).then(|| {
        found
            .managed_password
            .clone()
            .unwrap_or_else(secret::generate_password)
    });
    let plan = build::build(
        &valid,
        &ctx.defaults,
        &found,
        password.as_deref(),
        store.status.as_ref(),
    );
    let applied = apply::execute(&ctx.client, &valid, &plan).await?;
    let (name, ns) = (&valid.name, &valid.namespace);
    if let Some(sts) = &applied.recreated {
        info!(store = %name, namespace = %ns, statefulset = %sts, "replicas changed between 1 and more: recreated the StatefulSet");
        publish(
            ctx,
            store,
            EventType::Normal,
            "RecreatingStatefulSet",
            format!("StatefulSet {sts} is recreated for the new number of replicas (its claims are kept)"),
        )
        .await;
    }
    if !applied.pruned.is_empty() {
        info!(store = %name, namespace = %ns, removed = ?applied.pruned, "removed what the store's previous backend or shape created");
    }
    if !applied.rolled.is_empty() {
        info!(store = %name, namespace = %ns, rolled = ?applied.rolled, "settings changed: rolling opted-in workloads");
        publish(
            ctx,
            store,
            EventType::Normal,
            "RollingWorkloads",
            format!("settings changed, rolling {}", applied.rolled.join(", ")),
        )
        .await;
    }
    let replication = match (sentinel_replicas(&valid), &password) {
        (Some(replicas), Some(password)) => {
            Some(sentinel::observe(&ctx.client, &valid, replicas, password).await?)
        }
        _ => None,
    };
    let computed = status::compute(
        &valid,
        &found,
        &plan,
        &applied,
        replication.as_ref(),
        ctx.webhook_ready.load(Ordering::Relaxed),
    );
    write_status(store, ctx, &computed.conditions, computed.status).await?;
    Ok(Action::requeue(computed.requeue))
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

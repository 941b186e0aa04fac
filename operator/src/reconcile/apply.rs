//! Apply: carries out a [`Plan`]: server-side apply of every built object (field manager
//! `odoo-session-operator`), deletion of what the previous shape left, the roll of opted-in
//! workloads.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use super::build::{Object, Plan, Target};
use crate::builders::{cnpg, ValidStore};
use crate::crd::{CONFIG_HASH_ANNOTATION, MANAGER, STORE_LABEL};
use crate::error::{Error, Result};

pub fn ssa() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

pub async fn apply<K>(client: &Client, obj: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope> + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let ns = obj
        .meta()
        .namespace
        .as_deref()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = obj
        .meta()
        .name
        .as_deref()
        .ok_or(Error::MissingField("metadata.name"))?;
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    Ok(api.patch(name, &ssa(), &Patch::Apply(obj)).await?)
}

pub async fn apply_dynamic(
    client: &Client,
    ar: &ApiResource,
    obj: &DynamicObject,
) -> Result<DynamicObject> {
    let ns = obj
        .metadata
        .namespace
        .as_deref()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = obj
        .metadata
        .name
        .as_deref()
        .ok_or(Error::MissingField("metadata.name"))?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, ar);
    Ok(api.patch(name, &ssa(), &Patch::Apply(obj)).await?)
}

/// What carrying out a plan changed and found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    /// The StatefulSet deleted to be created again (`Plan::recreate`), if it was ours.
    pub recreated: Option<String>,
    /// The applied StatefulSet of a managed backend: its name and ready replicas.
    pub statefulset: Option<(String, i32)>,
    /// The applied CloudNativePG Cluster: its name and whether it is Ready.
    pub cluster: Option<(String, bool)>,
    /// What was deleted from the store's previous shape (`kind/name`).
    pub pruned: Vec<String>,
    /// Workloads whose Pod template got the new config hash (`kind/name`).
    pub rolled: Vec<String>,
}

/// The one place a reconcile writes objects: recreate, apply (in order), prune, roll.
pub async fn execute(client: &Client, store: &ValidStore, plan: &Plan) -> Result<Applied> {
    let ns = &store.namespace;
    let uid = &store.uid;
    let mut done = Applied::default();
    if let Some(name) = &plan.recreate {
        let target = Target {
            resource: ApiResource::erase::<StatefulSet>(&()),
            name: name.clone(),
        };
        if prune(client, ns, &target, uid).await? {
            done.recreated = Some(name.clone());
        }
    }
    for object in &plan.apply {
        match object {
            Object::Secret(o) => {
                apply(client, o).await?;
            }
            Object::Service(o) => {
                apply(client, o).await?;
            }
            Object::NetworkPolicy(o) => {
                apply(client, o).await?;
            }
            Object::StatefulSet(o) => {
                let sts = apply(client, o).await?;
                let ready = sts
                    .status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0);
                done.statefulset = Some((sts.name_any(), ready));
            }
            Object::Dynamic(ar, o) => {
                let applied = apply_dynamic(client, ar, o).await?;
                if ar.group == cnpg::CNPG_GROUP {
                    done.cluster = Some((applied.name_any(), cnpg::is_ready(&applied)));
                }
            }
        }
    }
    for target in &plan.prune {
        if prune(client, ns, target, uid).await? {
            done.pruned.push(target.describe());
        }
    }
    if let Some(hash) = &plan.roll {
        done.rolled = roll_workloads(client, ns, &store.name, hash).await?;
    }
    Ok(done)
}

fn template_opts_in(
    labels: Option<&std::collections::BTreeMap<String, String>>,
    store: &str,
) -> bool {
    labels
        .and_then(|l| l.get(STORE_LABEL))
        .is_some_and(|v| v == store)
}

/// Writes the new config hash into the pod template of every opted-in Deployment and
/// StatefulSet whose template carries another one: their controllers roll the Pods.
/// Returns the names of the workloads that were rolled.
pub async fn roll_workloads(
    client: &Client,
    namespace: &str,
    store: &str,
    hash: &str,
) -> Result<Vec<String>> {
    let mut rolled = roll::<Deployment>(client, namespace, store, hash, "deployment", |d| {
        d.spec.template.metadata.as_ref()
    })
    .await?;
    rolled.extend(
        roll::<StatefulSet>(client, namespace, store, hash, "statefulset", |s| {
            s.spec.template.metadata.as_ref()
        })
        .await?,
    );
    Ok(rolled)
}

/// [`roll_workloads`] for one kind; `template` reads its Pod template's metadata.
async fn roll<K>(
    client: &Client,
    namespace: &str,
    store: &str,
    hash: &str,
    kind: &str,
    template: impl Fn(&K) -> Option<&ObjectMeta>,
) -> Result<Vec<String>>
where
    K: Resource<Scope = NamespaceResourceScope> + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {CONFIG_HASH_ANNOTATION: hash}}}}});
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let mut rolled = Vec::new();
    for w in api.list(&ListParams::default()).await?.items {
        let tpl = template(&w);
        if template_opts_in(tpl.and_then(|m| m.labels.as_ref()), store)
            && tpl
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(CONFIG_HASH_ANNOTATION))
                .map(String::as_str)
                != Some(hash)
        {
            api.patch(
                &w.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
            rolled.push(format!("{kind}/{}", w.name_any()));
        }
    }
    Ok(rolled)
}

/// Deletes the target if it exists and this store (uid) controls it: what a previous
/// backend or shape created. A kind the server does not serve (CloudNativePG removed) has
/// nothing to delete.
pub async fn prune(
    client: &Client,
    namespace: &str,
    target: &Target,
    owner_uid: &str,
) -> Result<bool> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &target.resource);
    // A list by name needs only the `list` verb the controller's watches already have.
    let found = match api
        .list(&ListParams::default().fields(&format!("metadata.name={}", target.name)))
        .await
    {
        Ok(l) => l,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let Some(obj) = found.items.into_iter().next() else {
        return Ok(false);
    };
    let ours = obj.metadata.owner_references.as_ref().is_some_and(|refs| {
        refs.iter()
            .any(|r| r.uid == owner_uid && r.controller == Some(true))
    });
    if !ours {
        return Ok(false);
    }
    match api
        .delete(&target.name, &kube::api::DeleteParams::background())
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

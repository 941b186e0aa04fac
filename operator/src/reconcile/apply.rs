//! Apply: server-side apply of every built object, field manager `odoo-session-operator`.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

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
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {CONFIG_HASH_ANNOTATION: hash}}}}});
    let params = PatchParams::default();
    let mut rolled = Vec::new();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    for d in deployments.list(&ListParams::default()).await?.items {
        let tpl = d.spec.template.metadata.as_ref();
        if template_opts_in(tpl.and_then(|m| m.labels.as_ref()), store)
            && tpl
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(CONFIG_HASH_ANNOTATION))
                .map(String::as_str)
                != Some(hash)
        {
            deployments
                .patch(&d.name_any(), &params, &Patch::Merge(&patch))
                .await?;
            rolled.push(format!("deployment/{}", d.name_any()));
        }
    }
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    for s in statefulsets.list(&ListParams::default()).await?.items {
        let tpl = s.spec.template.metadata.as_ref();
        if template_opts_in(tpl.and_then(|m| m.labels.as_ref()), store)
            && tpl
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(CONFIG_HASH_ANNOTATION))
                .map(String::as_str)
                != Some(hash)
        {
            statefulsets
                .patch(&s.name_any(), &params, &Patch::Merge(&patch))
                .await?;
            rolled.push(format!("statefulset/{}", s.name_any()));
        }
    }
    Ok(rolled)
}

/// Deletes `name` if it exists and this store (uid) controls it: what a previous backend
/// created, after the store moved to another backend or driver.
pub async fn prune<K>(client: &Client, namespace: &str, name: &str, owner_uid: &str) -> Result<bool>
where
    K: Resource<Scope = NamespaceResourceScope> + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    // A list by name needs only the `list` verb the controller's watches already have.
    let found = api
        .list(&ListParams::default().fields(&format!("metadata.name={name}")))
        .await?;
    let Some(obj) = found.items.into_iter().next() else {
        return Ok(false);
    };
    let ours = obj.meta().owner_references.as_ref().is_some_and(|refs| {
        refs.iter()
            .any(|r| r.uid == owner_uid && r.controller == Some(true))
    });
    if !ours {
        return Ok(false);
    }
    match api
        .delete(name, &kube::api::DeleteParams::background())
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// [`prune`] for a dynamic kind (the PodDisruptionBudget, whose version follows the server).
pub async fn prune_dynamic(
    client: &Client,
    ar: &ApiResource,
    namespace: &str,
    name: &str,
    owner_uid: &str,
) -> Result<bool> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, ar);
    let found = match api
        .list(&ListParams::default().fields(&format!("metadata.name={name}")))
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
        .delete(name, &kube::api::DeleteParams::background())
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

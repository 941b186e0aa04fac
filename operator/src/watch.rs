//! What the operator watches: every namespace (cluster-wide install) or a list of them
//! (namespaced install, `--watch-namespaces`), where it then needs Roles only. Every watch,
//! list and cache is built through [`api`], so a namespaced operator never makes a
//! cluster-wide namespaced call (which its Roles would refuse).

use kube::{Api, Client, Resource};

use crate::error::{Error, Result};

/// The namespaces the controller and the webhook's store cache watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (one watch per kind, cluster-wide RBAC).
    Cluster,
    /// These namespaces only (one watch per kind and namespace, a Role in each).
    Namespaces(Vec<String>),
}

impl Scope {
    /// Parses `--watch-namespaces`: comma-separated names, blanks ignored; none at all
    /// means cluster-wide. A name that is not a valid namespace name is refused (a typo
    /// would otherwise watch nothing, silently).
    pub fn parse(names: &[String]) -> Result<Scope> {
        let mut list: Vec<String> = Vec::new();
        for name in names.iter().flat_map(|n| n.split(',')).map(str::trim) {
            if name.is_empty() {
                continue;
            }
            if !is_dns_label(name) {
                return Err(Error::Config(format!(
                    "--watch-namespaces: {name:?} is not a namespace name (lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit)"
                )));
            }
            if !list.iter().any(|n| n == name) {
                list.push(name.to_string());
            }
        }
        Ok(if list.is_empty() {
            Scope::Cluster
        } else {
            Scope::Namespaces(list)
        })
    }

    /// Whether stores in `namespace` are this operator's.
    pub fn contains(&self, namespace: &str) -> bool {
        match self {
            Scope::Cluster => true,
            Scope::Namespaces(list) => list.iter().any(|n| n == namespace),
        }
    }

    /// The listed namespaces (empty when cluster-wide).
    pub fn namespaces(&self) -> &[String] {
        match self {
            Scope::Cluster => &[],
            Scope::Namespaces(list) => list,
        }
    }

    /// One entry per watch to start: `None` for a cluster-wide one.
    pub fn targets(&self) -> Vec<Option<&str>> {
        match self {
            Scope::Cluster => vec![None],
            Scope::Namespaces(list) => list.iter().map(|n| Some(n.as_str())).collect(),
        }
    }
}

/// `Api::all` for a cluster-wide watch, `Api::namespaced` for one namespace.
pub fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Scope> {
        Scope::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn empty_means_cluster_wide() {
        assert_eq!(parse(&[]).unwrap(), Scope::Cluster);
        assert_eq!(parse(&[""]).unwrap(), Scope::Cluster);
        assert_eq!(parse(&[" , "]).unwrap(), Scope::Cluster);
        assert_eq!(Scope::Cluster.targets(), vec![None]);
    }

    #[test]
    fn list_is_split_trimmed_and_deduplicated() {
        let s = parse(&["shop, erp", "shop"]).unwrap();
        assert_eq!(s, Scope::Namespaces(vec!["shop".into(), "erp".into()]));
        assert_eq!(s.targets(), vec![Some("shop"), Some("erp")]);
        assert!(s.contains("erp") && !s.contains("kube-system"));
        assert_eq!(s.namespaces(), ["shop", "erp"]);
        assert!(Scope::Cluster.contains("kube-system") && Scope::Cluster.namespaces().is_empty());
    }

    #[test]
    fn invalid_name_is_refused_by_name() {
        for bad in ["Shop", "-a", "a-", "a_b", "a.b", &"x".repeat(64)] {
            let err = parse(&["ok", bad]).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(err.contains("--watch-namespaces"), "{err}");
        }
        assert!(parse(&[&"x".repeat(63)]).is_ok());
    }
}

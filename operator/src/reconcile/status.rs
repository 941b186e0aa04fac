//! Status: the conditions and the rest of `status`, computed purely from what was
//! dereferenced, applied and observed; `lastTransitionTime` moves only when a condition's
//! status changes. Also when to look again.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::apply::Applied;
use super::build::Plan;
use super::dereference::{Dereferenced, ExternalSecret};
use super::pods::PodFailure;
use super::sentinel::Replication;
use crate::builders::cnpg::CNPG_CRD;
use crate::builders::connection::managed_names;
use crate::builders::ValidStore;
use crate::crd::{Backend, ExternalBackend, OdooSessionStoreStatus};

pub const READY: &str = "Ready";
pub const BACKEND_READY: &str = "BackendReady";
pub const INJECTION_READY: &str = "InjectionReady";

/// A condition as decided by the reconciler, before timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Decided {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Decided {
            type_,
            status,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// A condition whose status changed (for Kubernetes Events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// `Ready` summarises the two others.
pub fn ready(backend: &Decided, injection: &Decided) -> Decided {
    match (backend.status, injection.status) {
        (true, true) => Decided::new(
            READY,
            true,
            "Ready",
            "backend reachable and injection working",
        ),
        (false, _) => Decided::new(READY, false, &backend.reason, backend.message.clone()),
        (true, false) => Decided::new(READY, false, &injection.reason, injection.message.clone()),
    }
}

/// Requeue intervals: soon while something is pending, rarely once all is ready.
pub const REQUEUE_PENDING: Duration = Duration::from_secs(15);
pub const REQUEUE_READY: Duration = Duration::from_secs(300);
/// While an injected container is starting or not Ready yet.
pub const REQUEUE_SETTLING: Duration = Duration::from_secs(60);
/// A managed Redis with Sentinel: its replication status is asked this often.
pub const REQUEUE_SENTINEL: Duration = Duration::from_secs(30);

/// What a reconcile writes into `status` (conditions before timestamps) and when it looks
/// again.
#[derive(Clone, Debug, PartialEq)]
pub struct Computed {
    /// `Ready`, `BackendReady`, `InjectionReady`.
    pub conditions: [Decided; 3],
    /// Every other field of `status` (conditions and observedGeneration are added on write).
    pub status: OdooSessionStoreStatus,
    pub requeue: Duration,
}

/// The status of a valid store after its plan was applied.
pub fn compute(
    valid: &ValidStore,
    found: &Dereferenced,
    plan: &Plan,
    applied: &Applied,
    replication: Option<&Replication>,
    webhook_ready: bool,
) -> Computed {
    let backend = backend_condition(valid, found, applied, replication);
    let injection = injection_condition(found, webhook_ready);
    let ready = ready(&backend, &injection);
    let requeue = match (ready.status, replication.is_some()) {
        (false, _) => REQUEUE_PENDING,
        // A container not Ready yet turns into a failure after a while without any Pod
        // event: look again before the limit.
        (true, _) if found.pods.settling > 0 => REQUEUE_SETTLING,
        (true, true) => REQUEUE_SENTINEL,
        (true, false) => REQUEUE_READY,
    };
    let count = |n: usize| Some(i32::try_from(n).unwrap_or(i32::MAX));
    Computed {
        conditions: [ready, backend, injection],
        status: OdooSessionStoreStatus {
            backend: Some(valid.spec.backend.kind_name(valid.spec.driver).to_string()),
            endpoint: plan.connection.endpoint.clone(),
            credentials_secret: Some(plan.connection.secret_name.clone()),
            config_hash: Some(plan.config_hash.clone()),
            pods_without_sidecar: count(found.pods_without_sidecar.len()),
            pods_failing: count(found.pods.failing.len()),
            redis: replication.map(|r| r.status.clone()),
            ..OdooSessionStoreStatus::default()
        },
        requeue,
    }
}

/// The three conditions of a spec that failed validation: one cause, said everywhere.
pub fn invalid(problems: &[String]) -> [Decided; 3] {
    let message = problems.join("; ");
    [
        Decided::new(READY, false, "InvalidSpec", message.clone()),
        Decided::new(BACKEND_READY, false, "InvalidSpec", message.clone()),
        Decided::new(INJECTION_READY, false, "InvalidSpec", message),
    ]
}

/// `; primary p, 1/2 replicas in sync, 3/3 Sentinels agree (what was wrong)`, appended to
/// the backend message of a Redis with Sentinel.
fn replication_words(r: &Replication) -> String {
    let r = &r.status;
    match &r.primary {
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
    }
}

/// `BackendReady`: a managed backend is ready with a ready replica (and, with Sentinel, a
/// healthy replication: a primary the Sentinels agree on and see up, every replica in
/// sync); an external one when its Secret holds the key; CloudNativePG when its Cluster is.
pub fn backend_condition(
    valid: &ValidStore,
    found: &Dereferenced,
    applied: &Applied,
    replication: Option<&Replication>,
) -> Decided {
    match &valid.spec.backend {
        Backend::Managed(_) => {
            let (sts, ready) = applied
                .statefulset
                .clone()
                .unwrap_or_else(|| (managed_names(valid).0, 0));
            let words = replication.map(replication_words).unwrap_or_default();
            if ready < 1 {
                return Decided::new(
                    BACKEND_READY,
                    false,
                    "BackendStarting",
                    format!("waiting for StatefulSet {sts} to have a ready replica{words}"),
                );
            }
            let running = format!("StatefulSet {sts} has {ready} ready replica(s){words}");
            match replication.and_then(|r| r.problem) {
                Some(problem) => Decided::new(BACKEND_READY, false, problem.reason(), running),
                None => Decided::new(BACKEND_READY, true, "BackendRunning", running),
            }
        }
        Backend::External(ext) => external_condition(valid, ext, found),
        Backend::CloudNativePg(_) => match &applied.cluster {
            _ if !found.cnpg_installed => Decided::new(
                BACKEND_READY,
                false,
                "CloudNativePGNotInstalled",
                format!("CRD {CNPG_CRD} not found: install the CloudNativePG operator or choose another backend"),
            ),
            Some((name, true)) => Decided::new(
                BACKEND_READY,
                true,
                "ClusterReady",
                format!("CloudNativePG Cluster {name} is Ready"),
            ),
            Some((name, false)) => Decided::new(
                BACKEND_READY,
                false,
                "ClusterNotReady",
                format!("waiting for CloudNativePG Cluster {name} to be Ready"),
            ),
            None => Decided::new(
                BACKEND_READY,
                false,
                "ClusterNotReady",
                "waiting for the CloudNativePG Cluster to be Ready",
            ),
        },
    }
}

/// `BackendReady` False naming a Secret of an external backend that is missing or lacks
/// its key; None when it holds the key. `what` says which reference it is, when not the
/// URI's.
fn secret_problem(
    state: Option<&ExternalSecret>,
    name: &str,
    key: &str,
    namespace: &str,
    what: &str,
) -> Option<Decided> {
    match state {
        Some(ExternalSecret::Present) => None,
        Some(ExternalSecret::KeyMissing) => Some(Decided::new(
            BACKEND_READY,
            false,
            "SecretKeyMissing",
            format!("Secret {name} in namespace {namespace} has no key {key:?}{what}"),
        )),
        Some(ExternalSecret::Missing) | None => Some(Decided::new(
            BACKEND_READY,
            false,
            "SecretNotFound",
            format!("Secret {name} not found in namespace {namespace}{what}"),
        )),
    }
}

/// `BackendReady` of an external backend: its URI Secret first, then its CA Secret, each
/// must hold its key (a missing CA Secret keeps the injected Pods in ContainerCreating).
fn external_condition(valid: &ValidStore, ext: &ExternalBackend, found: &Dereferenced) -> Decided {
    let r = &ext.uri_secret_ref;
    let ns = &valid.namespace;
    if let Some(problem) = secret_problem(found.external_secret.as_ref(), &r.name, &r.key, ns, "") {
        return problem;
    }
    let mut read = format!("backend URI read from Secret {} key {}", r.name, r.key);
    if let Some(ca) = &ext.ca_secret_ref {
        let what =
            " (spec.backend.external.caSecretRef: the injected Pods cannot start without it)";
        if let Some(problem) = secret_problem(
            found.external_ca_secret.as_ref(),
            &ca.name,
            &ca.key,
            ns,
            what,
        ) {
            return problem;
        }
        read.push_str(&format!(
            ", CA certificates from Secret {} key {}",
            ca.name, ca.key
        ));
    }
    Decided::new(
        BACKEND_READY,
        true,
        "SecretFound",
        format!("{read}; reachability is reported by each sidecar's /readyz"),
    )
}

/// Most failing Pods named in the `InjectionReady` message.
const FAILING_NAMED: usize = 3;

/// `InjectionReady`: no opted-in Pod without the sidecar, no injected Pod failing, and the
/// webhook serving.
pub fn injection_condition(found: &Dereferenced, webhook_ready: bool) -> Decided {
    if !found.pods_without_sidecar.is_empty() {
        let mut names = found.pods_without_sidecar.clone();
        names.truncate(5);
        return Decided::new(
            INJECTION_READY,
            false,
            "PodsWithoutSidecar",
            format!(
                "{} opted-in Pod(s) run without the session sidecar (webhook unavailable when they were created?): {}; delete them to get it injected",
                found.pods_without_sidecar.len(),
                names.join(", ")
            ),
        );
    }
    let failing = &found.pods.failing;
    if !failing.is_empty() {
        let mut named: Vec<String> = failing
            .iter()
            .take(FAILING_NAMED)
            .map(PodFailure::describe)
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

fn status_str(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

/// Merges decided conditions into the previous ones.
pub fn merge(
    previous: &[Condition],
    decided: &[Decided],
    generation: Option<i64>,
    now: Time,
) -> (Vec<Condition>, Vec<Transition>) {
    let mut out = Vec::with_capacity(decided.len());
    let mut transitions = Vec::new();
    for d in decided {
        let old = previous.iter().find(|c| c.type_ == d.type_);
        let status = status_str(d.status);
        let changed = old.is_none_or(|c| c.status != status);
        if changed {
            transitions.push(Transition {
                type_: d.type_,
                status: d.status,
                reason: d.reason.clone(),
                message: d.message.clone(),
            });
        }
        out.push(Condition {
            type_: d.type_.to_string(),
            status: status.to_string(),
            reason: d.reason.clone(),
            message: d.message.clone(),
            observed_generation: generation,
            last_transition_time: match old {
                Some(c) if !changed => c.last_transition_time.clone(),
                _ => now.clone(),
            },
        });
    }
    (out, transitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).expect("valid time"))
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let d1 = [Decided::new(BACKEND_READY, false, "Pending", "starting")];
        let (c1, tr1) = merge(&[], &d1, Some(1), t(100));
        assert_eq!(tr1.len(), 1);
        assert_eq!(c1[0].last_transition_time, t(100));

        // Same status, new reason and message: time kept, no transition.
        let d2 = [Decided::new(
            BACKEND_READY,
            false,
            "StillPending",
            "waiting",
        )];
        let (c2, tr2) = merge(&c1, &d2, Some(2), t(200));
        assert!(tr2.is_empty());
        assert_eq!(c2[0].last_transition_time, t(100));
        assert_eq!(c2[0].reason, "StillPending");
        assert_eq!(c2[0].observed_generation, Some(2));

        let d3 = [Decided::new(BACKEND_READY, true, "Ready", "ok")];
        let (c3, tr3) = merge(&c2, &d3, Some(2), t(300));
        assert_eq!(tr3.len(), 1);
        assert!(tr3[0].status);
        assert_eq!(c3[0].last_transition_time, t(300));
        assert_eq!(c3[0].status, "True");
    }

    #[test]
    fn ready_takes_the_first_failure() {
        let ok_b = Decided::new(BACKEND_READY, true, "Ready", "");
        let bad_b = Decided::new(BACKEND_READY, false, "SecretNotFound", "no secret");
        let ok_i = Decided::new(INJECTION_READY, true, "Ready", "");
        let bad_i = Decided::new(INJECTION_READY, false, "PodsWithoutSidecar", "2 pods");
        assert!(ready(&ok_b, &ok_i).status);
        assert_eq!(ready(&bad_b, &bad_i).reason, "SecretNotFound");
        assert_eq!(ready(&ok_b, &bad_i).reason, "PodsWithoutSidecar");
    }

    use super::super::build;
    use super::super::pods::PodsSummary;
    use super::super::sentinel::{summarize, Answer};
    use crate::builders::{fixtures, Defaults};

    const H0: &str = "sessions-redis-0.sessions-redis-headless.shop.svc";
    const H1: &str = "sessions-redis-1.sessions-redis-headless.shop.svc";
    const H2: &str = "sessions-redis-2.sessions-redis-headless.shop.svc";

    fn answer(host: &str, up: bool, in_sync: &[bool]) -> Answer {
        Answer::Primary {
            host: host.into(),
            up,
            replicas: [H1, H2]
                .iter()
                .zip(in_sync)
                .map(|(h, s)| (h.to_string(), *s))
                .collect(),
            other_sentinels: 2,
        }
    }

    /// Computes the status of a valid store as the reconcile does (plan from the builders).
    fn computed(
        valid: &ValidStore,
        found: &Dereferenced,
        applied: &Applied,
        replication: Option<&Replication>,
    ) -> Computed {
        let plan = build::build(valid, &Defaults::default(), found, Some("pw"), None);
        compute(valid, found, &plan, applied, replication, true)
    }

    fn sts_ready(n: i32) -> Applied {
        Applied {
            statefulset: Some(("sessions-redis".into(), n)),
            ..Applied::default()
        }
    }

    /// Task of issue 13: a Redis with Sentinel is Ready only once its replication is
    /// healthy, and the reason (the printer column REASON) says what is missing.
    #[test]
    fn sentinel_store_is_ready_only_with_a_healthy_replication() {
        let valid = fixtures::managed_redis();
        let found = Dereferenced::default();
        let cases = [
            (
                vec![
                    Answer::Unreachable("Pod sessions-redis-0 is not running".into()),
                    Answer::Unreachable("b".into()),
                    Answer::Unreachable("c".into()),
                ],
                "SentinelsUnreachable",
                "no Sentinel answered: Pod sessions-redis-0 is not running",
            ),
            (
                vec![
                    answer(H0, true, &[true, true]),
                    answer(H1, true, &[true, true]),
                    Answer::Unreachable("c".into()),
                ],
                "SentinelsNotAgreeing",
                "Sentinels disagree on the primary",
            ),
            (
                vec![
                    answer(H0, false, &[true, true]),
                    answer(H0, false, &[true, true]),
                    answer(H0, true, &[true, true]),
                ],
                "PrimaryDown",
                "2 of 3 Sentinels naming sessions-redis-0 see it down",
            ),
            (
                vec![
                    answer(H0, true, &[true, false]),
                    answer(H0, true, &[true, false]),
                    answer(H0, true, &[true, false]),
                ],
                "ReplicasNotInSync",
                "primary sessions-redis-0, 1/2 replicas in sync, 3/3 Sentinels agree (1 of 2 replicas in sync with the primary)",
            ),
        ];
        for (answers, reason, words) in cases {
            let r = summarize(3, &answers);
            let c = computed(&valid, &found, &sts_ready(3), Some(&r));
            let [ready, backend, _] = &c.conditions;
            assert_eq!((backend.status, backend.reason.as_str()), (false, reason));
            assert!(
                backend
                    .message
                    .starts_with("StatefulSet sessions-redis has 3 ready replica(s); "),
                "{}",
                backend.message
            );
            assert!(
                backend.message.contains(words),
                "{reason}: {}",
                backend.message
            );
            assert_eq!((ready.status, ready.reason.as_str()), (false, reason));
            assert_eq!(ready.message, backend.message);
            assert_eq!(c.status.redis.as_ref().map(|r| r.healthy), Some(false));
            assert_eq!(c.requeue, REQUEUE_PENDING);
        }
        let healthy = summarize(
            3,
            &[
                answer(H0, true, &[true, true]),
                answer(H0, true, &[true, true]),
                answer(H0, true, &[true, true]),
            ],
        );
        let c = computed(&valid, &found, &sts_ready(3), Some(&healthy));
        let [ready, backend, _] = &c.conditions;
        assert_eq!(
            (backend.status, backend.reason.as_str()),
            (true, "BackendRunning")
        );
        assert_eq!(
            backend.message,
            "StatefulSet sessions-redis has 3 ready replica(s); primary sessions-redis-0, 2/2 replicas in sync, 3/3 Sentinels agree"
        );
        assert_eq!((ready.status, ready.reason.as_str()), (true, "Ready"));
        assert_eq!(c.status.redis.as_ref().map(|r| r.healthy), Some(true));
        assert_eq!(c.requeue, REQUEUE_SENTINEL);
        // No ready Pod yet: starting, whatever the Sentinels say.
        let c = computed(&valid, &found, &sts_ready(0), Some(&healthy));
        assert_eq!(c.conditions[1].reason, "BackendStarting");
        assert!(c.conditions[1].message.starts_with(
            "waiting for StatefulSet sessions-redis to have a ready replica; primary"
        ));
    }

    #[test]
    fn single_redis_is_ready_with_one_ready_replica() {
        let valid = fixtures::single_redis();
        let c = computed(&valid, &Dereferenced::default(), &sts_ready(1), None);
        assert!(c.conditions[0].status);
        assert_eq!(
            c.conditions[1].message,
            "StatefulSet sessions-redis has 1 ready replica(s)"
        );
        assert_eq!(c.status.redis, None);
        assert_eq!(c.status.backend.as_deref(), Some("managed-redis"));
        assert_eq!(
            c.status.credentials_secret.as_deref(),
            Some("sessions-redis")
        );
        assert_eq!(
            c.status.endpoint.as_deref(),
            Some("sessions-redis.shop.svc:6379")
        );
        assert!(c.status.config_hash.is_some());
        assert_eq!(
            (c.status.pods_failing, c.status.pods_without_sidecar),
            (Some(0), Some(0))
        );
        assert_eq!(c.requeue, REQUEUE_READY);
        let settling = Dereferenced {
            pods: PodsSummary {
                settling: 1,
                ..PodsSummary::default()
            },
            ..Dereferenced::default()
        };
        assert_eq!(
            computed(&valid, &settling, &sts_ready(1), None).requeue,
            REQUEUE_SETTLING
        );
        let c = computed(&valid, &Dereferenced::default(), &sts_ready(0), None);
        assert_eq!(
            (c.conditions[0].status, c.conditions[0].reason.as_str()),
            (false, "BackendStarting")
        );
    }

    #[test]
    fn external_and_cloudnativepg_backends() {
        let external = fixtures::store(
            serde_json::json!({"driver": "redis", "backend": {"external": {"uriSecretRef": {"name": "r", "key": "uri"}}}}),
        );
        for (secret, reason) in [
            (None, "SecretNotFound"),
            (Some(ExternalSecret::Missing), "SecretNotFound"),
            (Some(ExternalSecret::KeyMissing), "SecretKeyMissing"),
            (Some(ExternalSecret::Present), "SecretFound"),
        ] {
            let found = Dereferenced {
                external_secret: secret,
                ..Dereferenced::default()
            };
            let c = computed(&external, &found, &Applied::default(), None);
            assert_eq!(c.conditions[1].reason, reason);
        }
        // The same reasons for the CA Secret, after the URI Secret's.
        let with_ca = fixtures::store(
            serde_json::json!({"driver": "redis", "backend": {"external": {
            "uriSecretRef": {"name": "r"}, "caSecretRef": {"name": "memorystore-ca"}}}}),
        );
        let present = Some(ExternalSecret::Present);
        for (uri, ca, reason, words) in [
            (
                None,
                None,
                "SecretNotFound",
                "Secret r not found in namespace shop",
            ),
            (
                Some(ExternalSecret::KeyMissing),
                Some(ExternalSecret::Missing),
                "SecretKeyMissing",
                "Secret r in namespace shop has no key \"uri\"",
            ),
            (
                present.clone(),
                None,
                "SecretNotFound",
                "Secret memorystore-ca not found in namespace shop (spec.backend.external.caSecretRef: the injected Pods cannot start without it)",
            ),
            (
                present.clone(),
                Some(ExternalSecret::Missing),
                "SecretNotFound",
                "Secret memorystore-ca not found in namespace shop (spec.backend.external.caSecretRef",
            ),
            (
                present.clone(),
                Some(ExternalSecret::KeyMissing),
                "SecretKeyMissing",
                "Secret memorystore-ca in namespace shop has no key \"ca.crt\" (spec.backend.external.caSecretRef",
            ),
            (
                present.clone(),
                present.clone(),
                "SecretFound",
                "backend URI read from Secret r key uri, CA certificates from Secret memorystore-ca key ca.crt; ",
            ),
        ] {
            let found = Dereferenced {
                external_secret: uri,
                external_ca_secret: ca,
                ..Dereferenced::default()
            };
            let c = computed(&with_ca, &found, &Applied::default(), None);
            let [ready, backend, _] = &c.conditions;
            assert_eq!(backend.reason, reason);
            assert_eq!(backend.status, reason == "SecretFound");
            assert!(backend.message.starts_with(words), "{}", backend.message);
            assert_eq!(ready.reason, if backend.status { "Ready" } else { reason });
        }
        // Without caSecretRef the CA state is not looked at.
        let found = Dereferenced {
            external_secret: present,
            ..Dereferenced::default()
        };
        let c = computed(&external, &found, &Applied::default(), None);
        assert_eq!(
            c.conditions[1].message,
            "backend URI read from Secret r key uri; reachability is reported by each sidecar's /readyz"
        );
        let cnpg =
            fixtures::store(serde_json::json!({"driver": "db", "backend": {"cloudNativePG": {}}}));
        let installed = Dereferenced {
            cnpg_installed: true,
            ..Dereferenced::default()
        };
        for (found, cluster, reason) in [
            (Dereferenced::default(), None, "CloudNativePGNotInstalled"),
            (
                installed.clone(),
                Some(("sessions-pg".to_string(), false)),
                "ClusterNotReady",
            ),
            (
                installed.clone(),
                Some(("sessions-pg".to_string(), true)),
                "ClusterReady",
            ),
        ] {
            let applied = Applied {
                cluster,
                ..Applied::default()
            };
            assert_eq!(
                computed(&cnpg, &found, &applied, None).conditions[1].reason,
                reason
            );
        }
    }

    #[test]
    fn injection_problems_come_after_the_backend_in_ready() {
        let valid = fixtures::single_redis();
        let without = Dereferenced {
            pods_without_sidecar: (0..7).map(|i| format!("web-{i}")).collect(),
            ..Dereferenced::default()
        };
        let c = computed(&valid, &without, &sts_ready(1), None);
        assert_eq!(c.conditions[2].reason, "PodsWithoutSidecar");
        assert!(c.conditions[2].message.contains("7 opted-in Pod(s)"));
        assert!(
            c.conditions[2].message.contains("web-4;"),
            "five named: {}",
            c.conditions[2].message
        );
        assert!(!c.conditions[2].message.contains("web-5"));
        assert_eq!(c.conditions[0].reason, "PodsWithoutSidecar");
        assert_eq!(c.status.pods_without_sidecar, Some(7));
        let plan = build::build(
            &valid,
            &Defaults::default(),
            &Dereferenced::default(),
            Some("pw"),
            None,
        );
        let c = compute(
            &valid,
            &Dereferenced::default(),
            &plan,
            &sts_ready(1),
            None,
            false,
        );
        assert_eq!(c.conditions[0].reason, "WebhookNotReady");
    }

    #[test]
    fn an_invalid_spec_says_its_problems_in_all_three_conditions() {
        let d = invalid(&["a".into(), "b".into()]);
        assert!(d
            .iter()
            .all(|d| !d.status && d.reason == "InvalidSpec" && d.message == "a; b"));
        assert_eq!(d.map(|d| d.type_), [READY, BACKEND_READY, INJECTION_READY]);
    }
}

//! Conditions: computed purely from what was observed; `lastTransitionTime` moves only when a
//! condition's status changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

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
}

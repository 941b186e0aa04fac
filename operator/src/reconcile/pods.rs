//! Health of the injected Pods, for `InjectionReady`: a Pod whose sidecar or target
//! container keeps failing (a setting the sidecar or the addon refuses, an image that
//! cannot be pulled, a sidecar that never gets Ready) makes the store say so, naming the
//! Pod, the container and the reason. Pure functions of the Pod and the current time.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::crd::SIDECAR_CONTAINER;

/// Restarts within [`RECENT`] from which a container counts as failing even while it is
/// momentarily running.
pub const RESTART_LIMIT: i32 = 3;
/// How recent the last termination must be for the restarts to count.
pub const RECENT: SignedDuration = SignedDuration::from_mins(10);
/// How long a running container may stay not Ready before it counts as failing.
pub const NOT_READY_LIMIT: SignedDuration = SignedDuration::from_mins(5);

/// Waiting reasons that mean the container cannot run (as the kubelet reports them).
const FAILING_WAITING: &[&str] = &[
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "RunContainerError",
];

/// One failing container of an injected Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFailure {
    pub pod: String,
    pub container: String,
    /// A kubelet waiting reason, `RepeatedRestarts` or `NotReady`.
    pub reason: String,
    pub restarts: i32,
    /// The kubelet's message and the last termination, in words.
    pub detail: String,
}

impl PodFailure {
    pub fn describe(&self) -> String {
        let mut s = format!(
            "Pod {} container {}: {} ({} restart{})",
            self.pod,
            self.container,
            self.reason,
            self.restarts,
            if self.restarts == 1 { "" } else { "s" }
        );
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodHealth {
    /// Every watched container runs and is Ready (or the Pod is not an injected live Pod).
    Fine,
    /// A watched container is starting or not Ready yet, within the limits: look again soon.
    Settling,
    Failing(PodFailure),
}

/// The containers the store cares about: the sidecar and the targets of the injection
/// (`spec.injection.containers`; empty: every container but the sidecar, as the webhook).
fn watched(name: &str, targets: &[String]) -> bool {
    name == SIDECAR_CONTAINER
        || if targets.is_empty() {
            true
        } else {
            targets.iter().any(|t| t == name)
        }
}

fn since(
    t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    now: Timestamp,
) -> Option<SignedDuration> {
    t.map(|t| now.duration_since(t.0))
}

fn last_exit(cs: &ContainerStatus) -> String {
    let Some(t) = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()) else {
        return String::new();
    };
    let mut s = format!("last exit code {}", t.exit_code);
    if let Some(r) = t.reason.as_deref().filter(|r| !r.is_empty()) {
        s.push_str(&format!(" ({r})"));
    }
    if let Some(m) = t
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        s.push_str(": ");
        s.push_str(&truncate(m, 200));
    }
    s
}

fn truncate(s: &str, max: usize) -> String {
    let one_line = s.replace('\n', " ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let cut: String = one_line.chars().take(max).collect();
    format!("{cut}...")
}

fn container_health(pod: &str, cs: &ContainerStatus, now: Timestamp) -> PodHealth {
    let failure = |reason: &str, detail: String| {
        PodHealth::Failing(PodFailure {
            pod: pod.to_string(),
            container: cs.name.clone(),
            reason: reason.to_string(),
            restarts: cs.restart_count,
            detail,
        })
    };
    let state = cs.state.as_ref();
    if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
        let reason = w.reason.as_deref().unwrap_or("");
        if FAILING_WAITING.contains(&reason) {
            let mut detail = last_exit(cs);
            if let Some(m) = w.message.as_deref().filter(|m| !m.is_empty()) {
                if !detail.is_empty() {
                    detail.push_str("; ");
                }
                detail.push_str(&truncate(m, 200));
            }
            return failure(reason, detail);
        }
    }
    let last_end = cs
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.finished_at.as_ref());
    if cs.restart_count >= RESTART_LIMIT && since(last_end, now).is_some_and(|d| d <= RECENT) {
        return failure("RepeatedRestarts", last_exit(cs));
    }
    if cs.ready {
        return PodHealth::Fine;
    }
    match state.and_then(|s| s.running.as_ref()) {
        Some(r) => match since(r.started_at.as_ref(), now) {
            Some(d) if d > NOT_READY_LIMIT => failure(
                "NotReady",
                format!(
                    "running for {} min without becoming Ready",
                    d.as_secs() / 60
                ),
            ),
            _ => PodHealth::Settling,
        },
        // Waiting for another reason (ContainerCreating, PodInitializing) or terminated:
        // the next status change tells more.
        None => PodHealth::Settling,
    }
}

/// The health of one opted-in Pod. Pods being deleted, finished or without the sidecar
/// (reported separately) are `Fine` here.
pub fn pod_health(pod: &Pod, targets: &[String], now: Timestamp) -> PodHealth {
    if pod.metadata.deletion_timestamp.is_some() {
        return PodHealth::Fine;
    }
    let Some(status) = &pod.status else {
        return PodHealth::Fine;
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return PodHealth::Fine;
    }
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let mut result = PodHealth::Fine;
    let statuses = status
        .init_container_statuses
        .iter()
        .flatten()
        // Only the sidecar among the init containers (a native sidecar); ordinary init
        // containers are the Pod owner's.
        .filter(|cs| cs.name == SIDECAR_CONTAINER)
        .chain(
            status
                .container_statuses
                .iter()
                .flatten()
                .filter(|cs| watched(&cs.name, targets)),
        );
    for cs in statuses {
        match container_health(name, cs, now) {
            f @ PodHealth::Failing(_) => return f,
            PodHealth::Settling => result = PodHealth::Settling,
            PodHealth::Fine => {}
        }
    }
    result
}

/// What the Pods of a store amount to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodsSummary {
    pub failing: Vec<PodFailure>,
    /// Pods with a container still starting or not Ready, within the limits.
    pub settling: usize,
}

pub fn summarize<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    targets: &[String],
    now: Timestamp,
) -> PodsSummary {
    let mut out = PodsSummary::default();
    for p in pods {
        match pod_health(p, targets, now) {
            PodHealth::Fine => {}
            PodHealth::Settling => out.settling += 1,
            PodHealth::Failing(f) => out.failing.push(f),
        }
    }
    out.failing.sort_by(|a, b| a.pod.cmp(&b.pod));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        "2026-12-01T12:00:00Z".parse().expect("time")
    }

    fn pod(statuses: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1"},
            "spec": {"containers": [{"name": "odoo"}, {"name": SIDECAR_CONTAINER}]},
            "status": {"phase": "Running", "containerStatuses": statuses}
        }))
        .expect("pod")
    }

    fn running(name: &str, ready: bool, started: &str) -> serde_json::Value {
        json!({"name": name, "ready": ready, "restartCount": 0, "image": "i", "imageID": "",
               "state": {"running": {"startedAt": started}}})
    }

    #[test]
    fn all_running_and_ready_is_fine() {
        let p = pod(json!([
            running("odoo", true, "2026-12-01T11:00:00Z"),
            running(SIDECAR_CONTAINER, true, "2026-12-01T11:00:00Z")
        ]));
        assert_eq!(pod_health(&p, &[], now()), PodHealth::Fine);
    }

    #[test]
    fn crash_loop_of_the_sidecar_names_pod_container_and_reason() {
        let p = pod(json!([
            running("odoo", true, "2026-12-01T11:00:00Z"),
            {"name": SIDECAR_CONTAINER, "ready": false, "restartCount": 20, "image": "i", "imageID": "",
             "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting failed container"}},
             "lastState": {"terminated": {"exitCode": 2, "reason": "Error",
                 "message": "DKN_AUTH_PREFIX=\"a{b\" is invalid", "finishedAt": "2026-12-01T11:58:00Z"}}}
        ]));
        let PodHealth::Failing(f) = pod_health(&p, &[], now()) else {
            panic!("failing expected")
        };
        assert_eq!(
            (
                f.pod.as_str(),
                f.container.as_str(),
                f.reason.as_str(),
                f.restarts
            ),
            ("web-1", SIDECAR_CONTAINER, "CrashLoopBackOff", 20)
        );
        let text = f.describe();
        assert!(
            text.contains("last exit code 2 (Error): DKN_AUTH_PREFIX"),
            "{text}"
        );
        assert!(text.contains("back-off 5m0s"), "{text}");
    }

    #[test]
    fn target_container_failing_counts_other_containers_do_not() {
        let crash = json!({"name": "odoo", "ready": false, "restartCount": 4, "image": "i", "imageID": "",
            "state": {"waiting": {"reason": "CrashLoopBackOff"}}});
        let p = pod(json!([
            crash,
            running(SIDECAR_CONTAINER, true, "2026-12-01T11:00:00Z")
        ]));
        assert!(
            matches!(pod_health(&p, &[], now()), PodHealth::Failing(f) if f.container == "odoo")
        );
        // Targets named: a crash of another container is the owner's business.
        assert_eq!(pod_health(&p, &["web".to_string()], now()), PodHealth::Fine);
        assert!(matches!(
            pod_health(&p, &["odoo".to_string()], now()),
            PodHealth::Failing(_)
        ));
    }

    #[test]
    fn restarts_growing_while_running_and_not_ready_for_long() {
        let restarting = json!({"name": "odoo", "ready": true, "restartCount": 5, "image": "i", "imageID": "",
            "state": {"running": {"startedAt": "2026-12-01T11:59:30Z"}},
            "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2026-12-01T11:59:29Z"}}});
        let p = pod(json!([
            restarting,
            running(SIDECAR_CONTAINER, true, "2026-12-01T11:00:00Z")
        ]));
        assert!(
            matches!(pod_health(&p, &[], now()), PodHealth::Failing(f) if f.reason == "RepeatedRestarts")
        );
        // The same restarts an hour ago are history.
        let old = json!({"name": "odoo", "ready": true, "restartCount": 5, "image": "i", "imageID": "",
            "state": {"running": {"startedAt": "2026-12-01T11:00:00Z"}},
            "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2026-12-01T10:59:59Z"}}});
        let p = pod(json!([
            old,
            running(SIDECAR_CONTAINER, true, "2026-12-01T11:00:00Z")
        ]));
        assert_eq!(pod_health(&p, &[], now()), PodHealth::Fine);
        // Not Ready: settling for a while, failing after NOT_READY_LIMIT.
        let p = pod(json!([
            running("odoo", true, "2026-12-01T11:00:00Z"),
            running(SIDECAR_CONTAINER, false, "2026-12-01T11:58:00Z")
        ]));
        assert_eq!(pod_health(&p, &[], now()), PodHealth::Settling);
        let p = pod(json!([
            running("odoo", true, "2026-12-01T11:00:00Z"),
            running(SIDECAR_CONTAINER, false, "2026-12-01T11:50:00Z")
        ]));
        assert!(
            matches!(pod_health(&p, &[], now()), PodHealth::Failing(f) if f.reason == "NotReady" && f.detail.contains("10 min"))
        );
    }

    #[test]
    fn native_sidecar_in_init_statuses_and_ignored_pods() {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-2"},
            "spec": {"containers": [{"name": "odoo"}], "initContainers": [{"name": "migrate"}, {"name": SIDECAR_CONTAINER}]},
            "status": {"phase": "Pending",
                "initContainerStatuses": [
                    {"name": "migrate", "ready": false, "restartCount": 9, "image": "i", "imageID": "",
                     "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
                    {"name": SIDECAR_CONTAINER, "ready": false, "restartCount": 3, "image": "i", "imageID": "",
                     "state": {"waiting": {"reason": "ImagePullBackOff", "message": "pull access denied"}}}],
                "containerStatuses": [{"name": "odoo", "ready": false, "restartCount": 0, "image": "i", "imageID": "",
                     "state": {"waiting": {"reason": "PodInitializing"}}}]}
        }))
        .expect("pod");
        let PodHealth::Failing(f) = pod_health(&p, &[], now()) else {
            panic!("failing expected")
        };
        assert_eq!(
            (f.container.as_str(), f.reason.as_str()),
            (SIDECAR_CONTAINER, "ImagePullBackOff")
        );
        p.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
        assert_eq!(pod_health(&p, &[], now()), PodHealth::Fine);
    }

    #[test]
    fn summary_counts_and_sorts() {
        let crash = |n: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": n},
                "status": {"phase": "Running", "containerStatuses": [
                    {"name": SIDECAR_CONTAINER, "ready": false, "restartCount": 7, "image": "i", "imageID": "",
                     "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
            }))
            .expect("pod")
        };
        let starting = pod(json!([running(
            SIDECAR_CONTAINER,
            false,
            "2026-12-01T11:59:50Z"
        )]));
        let pods = [crash("b"), starting, crash("a")];
        let s = summarize(&pods, &[], now());
        assert_eq!(s.settling, 1);
        assert_eq!(
            s.failing.iter().map(|f| f.pod.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }
}

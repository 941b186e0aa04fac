//! Replication status of a managed Redis with Sentinel: the operator asks every Pod's
//! Sentinel (password from the store's Secret, short time limits) and summarises what they
//! say. An unreachable Sentinel is part of the status message, never a reconcile failure.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::Client;
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

use crate::builders::connection::{managed_names, SENTINEL_MASTER, SENTINEL_PORT};
use crate::builders::{selector_labels, ValidStore};
use crate::crd::RedisReplicationStatus;
use crate::error::Result;

/// Time limit of the connection and of each answer.
pub const SENTINEL_TIMEOUT: Duration = Duration::from_millis(1500);

/// What one Sentinel said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The primary's host, whether this Sentinel sees it up (not flagged `s_down`,
    /// `o_down`, `disconnected` or in a failover), and the replicas it knows as (host,
    /// master link up), and how many other Sentinels it knows.
    Primary {
        host: String,
        up: bool,
        replicas: Vec<(String, bool)>,
        other_sentinels: usize,
    },
    /// Could not connect, authenticate or read: the error in words.
    Unreachable(String),
}

/// Why a replication is not healthy, the first that applies in this order; each is the
/// reason of the store's `BackendReady` (and so `Ready`) condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// No Sentinel named a primary.
    SentinelsUnreachable,
    /// Sentinels name different primaries, or fewer than a quorum name the same one.
    SentinelsNotAgreeing,
    /// The Sentinels name one primary, but too few of them see it up.
    PrimaryDown,
    /// Fewer than all the other Pods replicate the primary with their link up.
    ReplicasNotInSync,
    /// The replication is in sync, but a Sentinel naming the primary does not know every
    /// replica in sync or every other Sentinel yet: a failover it led could find no
    /// replica to promote (it learns them from the primary within about 10 s).
    SentinelsLearning,
}

impl Problem {
    pub fn reason(self) -> &'static str {
        match self {
            Problem::SentinelsUnreachable => "SentinelsUnreachable",
            Problem::SentinelsNotAgreeing => "SentinelsNotAgreeing",
            Problem::PrimaryDown => "PrimaryDown",
            Problem::ReplicasNotInSync => "ReplicasNotInSync",
            Problem::SentinelsLearning => "SentinelsLearning",
        }
    }
}

/// The summary of the Sentinels' answers: the status written to `status.redis`, and what
/// keeps it from being healthy (None exactly when `status.healthy`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replication {
    pub status: RedisReplicationStatus,
    pub problem: Option<Problem>,
}

/// Flags of a monitored primary that mean this Sentinel does not see it serving.
fn primary_up(flags: &str) -> bool {
    !flags.split(',').any(|f| {
        matches!(
            f,
            "s_down" | "o_down" | "disconnected" | "failover_in_progress"
        )
    })
}

async fn ask_inner(
    host: &str,
    port: u16,
    password: &str,
    master: &str,
) -> redis::RedisResult<Answer> {
    let info = ConnectionAddr::Tcp(host.to_string(), port)
        .into_connection_info()?
        .set_redis_settings(
            RedisConnectionInfo::default()
                .set_password(password)
                .set_skip_set_lib_name(),
        );
    let client = redis::Client::open(info)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(SENTINEL_TIMEOUT))
        .set_response_timeout(Some(SENTINEL_TIMEOUT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    // One answer gives the address and the flags (get-master-addr-by-name has no flags).
    let monitored: redis::RedisResult<HashMap<String, String>> = redis::cmd("SENTINEL")
        .arg("master")
        .arg(master)
        .query_async(&mut conn)
        .await;
    let primary = match monitored {
        Ok(m) => m,
        Err(e) if e.to_string().contains("No such master") => {
            return Ok(Answer::Unreachable(format!(
                "Sentinel {host} does not monitor {master}"
            )))
        }
        Err(e) => return Err(e),
    };
    let Some(address) = primary.get("ip").cloned() else {
        return Ok(Answer::Unreachable(format!(
            "Sentinel {host} gave no address for {master}"
        )));
    };
    let up = primary_up(primary.get("flags").map_or("", String::as_str));
    let other_sentinels = primary
        .get("num-other-sentinels")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let replicas: Vec<HashMap<String, String>> = redis::cmd("SENTINEL")
        .arg("replicas")
        .arg(master)
        .query_async(&mut conn)
        .await?;
    let replicas = replicas
        .into_iter()
        .filter_map(|r| {
            let ip = r.get("ip")?.clone();
            let flags = r.get("flags").cloned().unwrap_or_default();
            let down = flags
                .split(',')
                .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"));
            let link = r.get("master-link-status").map(String::as_str) == Some("ok");
            Some((ip, link && !down))
        })
        .collect();
    Ok(Answer::Primary {
        host: address,
        up,
        replicas,
        other_sentinels,
    })
}

/// Asks the Sentinel on `host:port` which Pod is the primary and how its replicas are.
pub async fn ask(host: &str, port: u16, password: &str, master: &str) -> Answer {
    // The connection and each answer are bounded; this bounds the whole exchange too.
    match tokio::time::timeout(
        SENTINEL_TIMEOUT * 3,
        ask_inner(host, port, password, master),
    )
    .await
    {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => Answer::Unreachable(format!("Sentinel {host}: {e}")),
        Err(_) => Answer::Unreachable(format!("Sentinel {host}: no answer in time")),
    }
}

/// Asks every Sentinel at once: one target per Pod, its name and its IP address when it has
/// one (Pod IPs, not DNS names: the operator needs no cluster DNS for this).
pub async fn ask_all(
    targets: &[(String, Option<String>)],
    port: u16,
    password: &str,
    master: &str,
) -> Vec<Answer> {
    futures::future::join_all(targets.iter().map(|(pod, ip)| async move {
        match ip {
            Some(ip) => match ask(ip, port, password, master).await {
                Answer::Unreachable(e) => Answer::Unreachable(format!("{pod}: {e}")),
                a => a,
            },
            None => Answer::Unreachable(format!("Pod {pod} is not running")),
        }
    }))
    .await
}

/// Pod name of a host `<pod>.<headless>.<ns>.svc` (or the host itself).
fn pod_of(host: &str) -> String {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return host.to_string();
    }
    host.split('.').next().unwrap_or(host).to_string()
}

/// Pure summary of the answers (one per Pod, in ordinal order).
pub fn summarize(pods: i32, answers: &[Answer]) -> Replication {
    let mut votes: BTreeMap<&str, i32> = BTreeMap::new();
    let mut problems = Vec::new();
    for a in answers {
        match a {
            Answer::Primary { host, .. } => *votes.entry(host.as_str()).or_default() += 1,
            Answer::Unreachable(e) => problems.push(e.clone()),
        }
    }
    let sentinels = i32::try_from(answers.len()).unwrap_or(i32::MAX);
    let best = votes
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(h, n)| (h.to_string(), *n));
    let Some((primary_host, naming)) = best else {
        return Replication {
            status: RedisReplicationStatus {
                primary: None,
                pods,
                sentinels,
                healthy: false,
                message: format!("no Sentinel answered: {}", problems.join("; ")),
                ..RedisReplicationStatus::default()
            },
            problem: Some(Problem::SentinelsUnreachable),
        };
    };
    if votes.len() > 1 {
        problems.push(format!(
            "Sentinels disagree on the primary: {}",
            votes
                .iter()
                .map(|(h, n)| format!("{} ({n})", pod_of(h)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // Agreeing: naming the majority's primary and seeing it up. A Sentinel that flags it
    // down still names it until a failover ends (a new set's Sentinels do so for a few
    // seconds at epoch 0).
    let agreeing = answers
        .iter()
        .filter(|a| matches!(a, Answer::Primary { host, up: true, .. } if *host == primary_host))
        .count();
    let agreeing = i32::try_from(agreeing).unwrap_or(i32::MAX);
    if agreeing < naming {
        problems.push(format!(
            "{} of {naming} Sentinels naming {} see it down",
            naming - agreeing,
            pod_of(&primary_host)
        ));
    }
    // The fullest view among the Sentinels that name the majority's primary: a Sentinel
    // that just restarted learns the replicas only at its next look at the primary.
    let (seen, in_sync) = answers
        .iter()
        .filter_map(|a| match a {
            Answer::Primary { host, replicas, .. } if *host == primary_host => Some((
                replicas.len(),
                replicas.iter().filter(|(_, up)| *up).count(),
            )),
            _ => None,
        })
        .max_by_key(|(seen, up)| (*up, *seen))
        .unwrap_or_default();
    let seen = i32::try_from(seen).unwrap_or(i32::MAX);
    let in_sync = i32::try_from(in_sync).unwrap_or(i32::MAX);
    if in_sync < pods - 1 {
        problems.push(format!(
            "{in_sync} of {} replicas in sync with the primary",
            pods - 1
        ));
    }
    // Every Sentinel naming the primary must know every replica in sync and every other
    // Sentinel: any of them may lead the next failover, and a leader that knows no good
    // replica aborts it (`-failover-abort-no-good-slave`) at every attempt.
    let wanted = usize::try_from(pods - 1).unwrap_or(0);
    let learning: Vec<String> = answers
        .iter()
        .enumerate()
        .filter_map(|(ordinal, a)| match a {
            Answer::Primary {
                host,
                replicas,
                other_sentinels,
                ..
            } if *host == primary_host => {
                let known = replicas.iter().filter(|(_, up)| *up).count();
                (known < wanted || *other_sentinels < wanted).then(|| {
                    format!(
                        "the Sentinel of Pod {ordinal} knows {known} of {wanted} replicas in sync and {other_sentinels} of {wanted} other Sentinels"
                    )
                })
            }
            _ => None,
        })
        .collect();
    if !learning.is_empty() && in_sync >= pods - 1 {
        problems.push(format!(
            "{} (learnt from the primary within about 10 s)",
            learning.join(", ")
        ));
    }
    let quorum = crate::builders::redis_ha::quorum(pods);
    let problem = if votes.len() > 1 || naming < quorum {
        Some(Problem::SentinelsNotAgreeing)
    } else if agreeing < quorum {
        Some(Problem::PrimaryDown)
    } else if in_sync < pods - 1 {
        Some(Problem::ReplicasNotInSync)
    } else if !learning.is_empty() {
        Some(Problem::SentinelsLearning)
    } else {
        None
    };
    Replication {
        status: RedisReplicationStatus {
            primary: Some(pod_of(&primary_host)),
            pods,
            replicas_seen: seen,
            replicas_in_sync: in_sync,
            sentinels_agreeing: agreeing,
            sentinels,
            healthy: problem.is_none(),
            message: problems.join("; "),
        },
        problem,
    }
}

/// Observe step of a Redis with Sentinel, after the apply: asks the Sentinel of each of
/// the `replicas` Pods (by Pod IP) and summarises. Only listing the Pods can fail.
pub async fn observe(
    client: &Client,
    store: &ValidStore,
    replicas: i32,
    password: &str,
) -> Result<Replication> {
    let (name, app) = managed_names(store);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &store.namespace);
    let selector = selector_labels(&store.name, app)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let running = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    let targets = targets(&name, replicas, &running);
    let answers = ask_all(
        &targets,
        u16::try_from(SENTINEL_PORT).unwrap_or(26379),
        password,
        SENTINEL_MASTER,
    )
    .await;
    Ok(summarize(replicas, &answers))
}

/// One target per ordinal: `<statefulset>-<i>` and its IP when it runs and is not being
/// deleted.
fn targets(statefulset: &str, replicas: i32, running: &[Pod]) -> Vec<(String, Option<String>)> {
    (0..replicas)
        .map(|i| {
            let pod = format!("{statefulset}-{i}");
            let ip = running
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(pod.as_str()))
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .and_then(|p| p.status.as_ref())
                .and_then(|s| s.pod_ip.clone());
            (pod, ip)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const H0: &str = "s-redis-0.s-redis-headless.shop.svc";
    const H1: &str = "s-redis-1.s-redis-headless.shop.svc";
    const H2: &str = "s-redis-2.s-redis-headless.shop.svc";

    fn primary(host: &str, replicas: &[(&str, bool)]) -> Answer {
        Answer::Primary {
            host: host.into(),
            up: true,
            replicas: replicas.iter().map(|(h, u)| (h.to_string(), *u)).collect(),
            other_sentinels: 2,
        }
    }

    fn knowing(other_sentinels: usize, a: Answer) -> Answer {
        match a {
            Answer::Primary {
                host, up, replicas, ..
            } => Answer::Primary {
                host,
                up,
                replicas,
                other_sentinels,
            },
            a => a,
        }
    }

    fn flagged_down(host: &str, replicas: &[(&str, bool)]) -> Answer {
        match primary(host, replicas) {
            Answer::Primary {
                host,
                replicas,
                other_sentinels,
                ..
            } => Answer::Primary {
                host,
                up: false,
                replicas,
                other_sentinels,
            },
            a => a,
        }
    }

    #[test]
    fn all_agree_and_in_sync_is_healthy() {
        let a = primary(H1, &[(H0, true), (H2, true)]);
        let r = summarize(3, &[a.clone(), a.clone(), a]);
        let s = &r.status;
        assert_eq!(s.primary.as_deref(), Some("s-redis-1"));
        assert_eq!(
            (
                s.replicas_seen,
                s.replicas_in_sync,
                s.sentinels_agreeing,
                s.sentinels
            ),
            (2, 2, 3, 3)
        );
        assert!(s.healthy);
        assert_eq!(r.problem, None);
        assert!(s.message.is_empty());
    }

    #[test]
    fn an_unreachable_sentinel_and_a_lagging_replica_are_reported() {
        let a = primary(H0, &[(H1, true), (H2, false)]);
        let r = summarize(
            3,
            &[
                a.clone(),
                a,
                Answer::Unreachable("Sentinel x: refused".into()),
            ],
        );
        let s = &r.status;
        assert_eq!(s.primary.as_deref(), Some("s-redis-0"));
        assert_eq!(s.sentinels_agreeing, 2);
        assert_eq!(s.replicas_in_sync, 1);
        assert!(!s.healthy);
        assert_eq!(r.problem, Some(Problem::ReplicasNotInSync));
        assert!(s.message.contains("refused"), "{}", s.message);
        assert!(s.message.contains("1 of 2 replicas"), "{}", s.message);
    }

    #[test]
    fn one_unreachable_sentinel_of_three_leaves_a_quorum() {
        let a = primary(H0, &[(H1, true), (H2, true)]);
        let r = summarize(3, &[a.clone(), a, Answer::Unreachable("x".into())]);
        assert!(r.status.healthy, "{r:?}");
        assert_eq!(r.problem, None);
        assert_eq!(r.status.message, "x");
    }

    /// The replication itself is the fullest view; but every Sentinel must know every
    /// replica in sync and every other Sentinel before the set is healthy (seen on real
    /// processes: a Sentinel that knew no replica led every failover attempt and aborted
    /// each with no good replica).
    #[test]
    fn the_fullest_view_counts_and_every_sentinel_must_know_everything() {
        let r = summarize(
            3,
            &[
                primary(H1, &[(H2, true)]),
                primary(H1, &[(H0, true), (H2, true)]),
                primary(H1, &[(H0, false), (H2, true)]),
            ],
        );
        assert_eq!((r.status.replicas_seen, r.status.replicas_in_sync), (2, 2));
        assert!(!r.status.healthy);
        assert_eq!(r.problem, Some(Problem::SentinelsLearning));
        assert!(
            r.status.message.contains(
                "the Sentinel of Pod 0 knows 1 of 2 replicas in sync and 2 of 2 other Sentinels, the Sentinel of Pod 2 knows 1 of 2"
            ),
            "{}",
            r.status.message
        );
        let all = primary(H1, &[(H0, true), (H2, true)]);
        let r = summarize(3, &[all.clone(), knowing(1, all.clone()), all.clone()]);
        assert_eq!(r.problem, Some(Problem::SentinelsLearning));
        assert!(
            r.status
                .message
                .contains("Pod 1 knows 2 of 2 replicas in sync and 1 of 2 other Sentinels"),
            "{}",
            r.status.message
        );
        let r = summarize(3, &[all.clone(), all.clone(), all]);
        assert!(r.status.healthy);
    }

    #[test]
    fn disagreement_and_silence() {
        let r = summarize(
            3,
            &[
                primary(H0, &[(H1, true), (H2, true)]),
                primary(H1, &[(H0, true), (H2, true)]),
                primary(H1, &[(H0, true), (H2, true)]),
            ],
        );
        assert_eq!(r.status.primary.as_deref(), Some("s-redis-1"));
        assert!(!r.status.healthy);
        assert_eq!(r.problem, Some(Problem::SentinelsNotAgreeing));
        assert!(
            r.status.message.contains("disagree"),
            "{}",
            r.status.message
        );
        let r = summarize(
            3,
            &[
                Answer::Unreachable("a".into()),
                Answer::Unreachable("b".into()),
            ],
        );
        assert_eq!(r.status.primary, None);
        assert!(!r.status.healthy);
        assert_eq!(r.problem, Some(Problem::SentinelsUnreachable));
        assert!(
            r.status.message.starts_with("no Sentinel answered"),
            "{}",
            r.status.message
        );
        // One Sentinel of three answering is no quorum.
        let r = summarize(
            3,
            &[
                primary(H0, &[(H1, true), (H2, true)]),
                Answer::Unreachable("a".into()),
                Answer::Unreachable("b".into()),
            ],
        );
        assert_eq!(r.problem, Some(Problem::SentinelsNotAgreeing));
    }

    /// A new Sentinel set can name its primary while still flagging it down (seen in the
    /// e2e: for 4 s at epoch 0); a primary flagged down by a majority is not healthy.
    #[test]
    fn a_primary_the_sentinels_see_down_is_not_healthy() {
        let r = summarize(
            3,
            &[
                flagged_down(H0, &[(H1, true), (H2, true)]),
                flagged_down(H0, &[(H1, true), (H2, true)]),
                primary(H0, &[(H1, true), (H2, true)]),
            ],
        );
        assert!(!r.status.healthy);
        assert_eq!(r.problem, Some(Problem::PrimaryDown));
        assert_eq!(r.status.sentinels_agreeing, 1);
        assert!(
            r.status
                .message
                .contains("2 of 3 Sentinels naming s-redis-0 see it down"),
            "{}",
            r.status.message
        );
        // One Sentinel's subjective view, with a quorum seeing it up: still healthy.
        let r = summarize(
            3,
            &[
                flagged_down(H0, &[(H1, true), (H2, true)]),
                primary(H0, &[(H1, true), (H2, true)]),
                primary(H0, &[(H1, true), (H2, true)]),
            ],
        );
        assert!(r.status.healthy, "{r:?}");
    }

    #[test]
    fn flags_that_mean_down() {
        assert!(primary_up("master"));
        for f in [
            "master,s_down",
            "master,s_down,o_down",
            "master,disconnected",
            "master,failover_in_progress",
        ] {
            assert!(!primary_up(f), "{f}");
        }
    }

    #[test]
    fn targets_are_the_ordinals_with_the_ips_of_live_pods() {
        let pod = |name: &str, ip: Option<&str>, deleting: bool| -> Pod {
            let mut v = serde_json::json!({"metadata": {"name": name}, "status": {}});
            if let Some(ip) = ip {
                v["status"]["podIP"] = ip.into();
            }
            if deleting {
                v["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
            }
            serde_json::from_value(v).expect("pod")
        };
        let running = [
            pod("s-redis-0", Some("10.0.0.1"), false),
            pod("s-redis-1", Some("10.0.0.2"), true),
            pod("s-redis-2", None, false),
        ];
        assert_eq!(
            targets("s-redis", 3, &running),
            vec![
                ("s-redis-0".to_string(), Some("10.0.0.1".to_string())),
                ("s-redis-1".to_string(), None),
                ("s-redis-2".to_string(), None),
            ]
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_an_answer_not_a_panic() {
        // Port 1 on loopback: connection refused at once.
        let a = ask("127.0.0.1", 1, "pw", "odoo-sessions").await;
        assert!(matches!(a, Answer::Unreachable(_)), "{a:?}");
    }
}

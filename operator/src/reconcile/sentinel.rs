//! Replication status of a managed Redis with Sentinel: the operator asks every Pod's
//! Sentinel (password from the store's Secret, short time limits) and summarises what they
//! say. An unreachable Sentinel is part of the status message, never a reconcile failure.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

use crate::crd::RedisReplicationStatus;

/// Time limit of the connection and of each answer.
pub const SENTINEL_TIMEOUT: Duration = Duration::from_millis(1500);

/// What one Sentinel said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The primary's host, and the replicas it knows as (host, master link up).
    Primary {
        host: String,
        replicas: Vec<(String, bool)>,
    },
    /// Could not connect, authenticate or read: the error in words.
    Unreachable(String),
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
    let addr: Option<(String, String)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(master)
        .query_async(&mut conn)
        .await?;
    let Some((primary, _port)) = addr else {
        return Ok(Answer::Unreachable(format!(
            "Sentinel {host} does not monitor {master}"
        )));
    };
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
        host: primary,
        replicas,
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
pub fn summarize(pods: i32, answers: &[Answer]) -> RedisReplicationStatus {
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
    let Some((primary_host, agreeing)) = best else {
        return RedisReplicationStatus {
            primary: None,
            pods,
            sentinels,
            healthy: false,
            message: format!("no Sentinel answered: {}", problems.join("; ")),
            ..RedisReplicationStatus::default()
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
    // The fullest view among the Sentinels that name the majority's primary: a Sentinel
    // that just restarted learns the replicas only at its next look at the primary.
    let (seen, in_sync) = answers
        .iter()
        .filter_map(|a| match a {
            Answer::Primary { host, replicas } if *host == primary_host => Some((
                replicas.len(),
                replicas.iter().filter(|(_, up)| *up).count(),
            )),
            _ => None,
        })
        .max_by_key(|(seen, up)| (*up, *seen))
        .unwrap_or_default();
    let seen = i32::try_from(seen).unwrap_or(i32::MAX);
    let in_sync = i32::try_from(in_sync).unwrap_or(i32::MAX);
    let quorum = pods / 2 + 1;
    let healthy = in_sync >= pods - 1 && agreeing >= quorum && votes.len() == 1;
    if in_sync < pods - 1 {
        problems.push(format!(
            "{in_sync} of {} replicas in sync with the primary",
            pods - 1
        ));
    }
    RedisReplicationStatus {
        primary: Some(pod_of(&primary_host)),
        pods,
        replicas_seen: seen,
        replicas_in_sync: in_sync,
        sentinels_agreeing: agreeing,
        sentinels,
        healthy,
        message: problems.join("; "),
    }
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
            replicas: replicas.iter().map(|(h, u)| (h.to_string(), *u)).collect(),
        }
    }

    #[test]
    fn all_agree_and_in_sync_is_healthy() {
        let a = primary(H1, &[(H0, true), (H2, true)]);
        let s = summarize(3, &[a.clone(), a.clone(), a]);
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
        assert!(s.message.is_empty());
    }

    #[test]
    fn an_unreachable_sentinel_and_a_lagging_replica_are_reported() {
        let a = primary(H0, &[(H1, true), (H2, false)]);
        let s = summarize(
            3,
            &[
                a.clone(),
                a,
                Answer::Unreachable("Sentinel x: refused".into()),
            ],
        );
        assert_eq!(s.primary.as_deref(), Some("s-redis-0"));
        assert_eq!(s.sentinels_agreeing, 2);
        assert_eq!(s.replicas_in_sync, 1);
        assert!(!s.healthy);
        assert!(s.message.contains("refused"), "{}", s.message);
        assert!(s.message.contains("1 of 2 replicas"), "{}", s.message);
    }

    #[test]
    fn the_fullest_view_of_the_agreeing_sentinels_counts() {
        let s = summarize(
            3,
            &[
                primary(H1, &[(H2, true)]),
                primary(H1, &[(H0, true), (H2, true)]),
                primary(H1, &[(H0, false), (H2, true)]),
            ],
        );
        assert_eq!((s.replicas_seen, s.replicas_in_sync), (2, 2));
        assert!(s.healthy);
    }

    #[test]
    fn disagreement_and_silence() {
        let s = summarize(
            3,
            &[
                primary(H0, &[(H1, true), (H2, true)]),
                primary(H1, &[(H0, true), (H2, true)]),
                primary(H1, &[(H0, true), (H2, true)]),
            ],
        );
        assert_eq!(s.primary.as_deref(), Some("s-redis-1"));
        assert!(!s.healthy);
        assert!(s.message.contains("disagree"), "{}", s.message);
        let s = summarize(
            3,
            &[
                Answer::Unreachable("a".into()),
                Answer::Unreachable("b".into()),
            ],
        );
        assert_eq!(s.primary, None);
        assert!(!s.healthy);
        assert!(
            s.message.starts_with("no Sentinel answered"),
            "{}",
            s.message
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_an_answer_not_a_panic() {
        // Port 1 on loopback: connection refused at once.
        let a = ask("127.0.0.1", 1, "pw", "odoo-sessions").await;
        assert!(matches!(a, Answer::Unreachable(_)), "{a:?}");
    }
}

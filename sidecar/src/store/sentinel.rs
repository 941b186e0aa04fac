//! Finding the Redis primary through Sentinel, on every (re)connect.
//!
//! Written here rather than through redis-rs's `SentinelClient` because of how that one
//! behaves in an outage (read in redis 1.8): it asks the Sentinels in their configured order
//! and takes the answers in that order, so one Sentinel that does not answer (a deleted Pod
//! whose address swallows packets) delays every look-up by a full connect timeout, which is
//! as long as the whole request budget; its Sentinel connections and master check carry
//! redis-rs's default timeouts, not the sidecar's; and it sends no password to the Sentinels
//! themselves. Here:
//!
//! - all Sentinels are asked at once (`SENTINEL MASTER <name>` and
//!   `GET-MASTER-ADDR-BY-NAME`, one round trip), each within the backend timeout; the
//!   answers that arrive within a short grace after the first are compared and the highest
//!   `config-epoch` wins, so a Sentinel that missed a fail-over cannot send the sidecar back
//!   to the old primary, and the Sentinel leading one sends it to the promoted replica as
//!   soon as that replica is a primary;
//! - the named primary is connected and asked `ROLE`: only a node that says it is the
//!   primary is used (a demoted primary, or a replica being promoted, is refused);
//! - nothing is cached for long: a discovered address is reused for at most
//!   [`REUSE_OK`], and forgotten at once when a connection to it breaks or answers
//!   `READONLY`; a failed discovery is remembered for [`REUSE_ERR`] so an outage under load
//!   costs the Sentinels a few look-ups per second, not one per request;
//! - the Sentinels get the same username and password as the Redis nodes (from the URI or
//!   `DKN_AUTH_REDIS_PASSWORD`). A Sentinel that has no password configured refuses `AUTH`;
//!   the sidecar then connects to it without one, so nodes with a password behind Sentinels
//!   without one also work;
//! - hostnames (`announce-hostnames yes`) are fine: the address a Sentinel returns is
//!   resolved when connecting, like the hosts of the URI.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    RedisConnectionInfo, RedisError, Role, TlsCertificates,
};

/// How long a discovered primary is reused by further connects before the Sentinels are
/// asked again (a broken connection or `READONLY` forgets it sooner).
pub const REUSE_OK: Duration = Duration::from_secs(1);
/// How long a failed discovery answers further connects at once.
pub const REUSE_ERR: Duration = Duration::from_millis(100);

/// A host and port, as given in the URI or returned by a Sentinel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl HostPort {
    /// `host:port`, `[v6]:port`; the port is required.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} needs host:port"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(format!("{s:?} has no host"));
        }
        let port = port
            .parse()
            .map_err(|_| format!("{s:?} has a bad port {port:?}"))?;
        Ok(HostPort {
            host: host.to_owned(),
            port,
        })
    }
}

/// Why no primary could be used, as one line for the 503 message and the log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no usable Redis primary for master name {master:?}: {detail}")]
pub struct NoPrimary {
    pub master: String,
    pub detail: String,
}

struct Remembered {
    at: Instant,
    result: Result<HostPort, NoPrimary>,
}

/// The Sentinels of one master name, and how to reach the nodes they name.
pub struct Sentinels {
    sentinels: Vec<HostPort>,
    master: String,
    /// Username, password and database for the nodes; the Sentinels get the same
    /// username and password (no database).
    auth: RedisConnectionInfo,
    tls: bool,
    ca: Option<Vec<u8>>,
    timeout: Duration,
    last: tokio::sync::Mutex<Option<Remembered>>,
    /// The primary the latest connection went to, for [`Sentinels::check_primary`].
    connected_to: parking_lot::Mutex<Option<HostPort>>,
}

/// A Sentinel's `SENTINEL MASTER` answer, field by field.
type MasterFields = HashMap<String, String>;

/// One Sentinel's answer: where it says the primary is, and how sure it is.
struct Named {
    sentinel: HostPort,
    primary: HostPort,
    epoch: u64,
    down: bool,
}

impl Sentinels {
    pub fn new(
        sentinels: Vec<HostPort>,
        master: String,
        auth: RedisConnectionInfo,
        tls: bool,
        ca: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Self {
        Sentinels {
            sentinels,
            master,
            auth,
            tls,
            ca,
            timeout,
            last: tokio::sync::Mutex::new(None),
            connected_to: parking_lot::Mutex::new(None),
        }
    }

    pub fn master_name(&self) -> &str {
        &self.master
    }

    fn client(&self, at: &HostPort, redis: RedisConnectionInfo) -> Result<Client, RedisError> {
        let addr = if self.tls {
            ConnectionAddr::TcpTls {
                host: at.host.clone(),
                port: at.port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(at.host.clone(), at.port)
        };
        let info: ConnectionInfo = addr.into_connection_info()?.set_redis_settings(redis);
        match &self.ca {
            Some(pem) if self.tls => Client::build_with_tls(
                info,
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            _ => Client::open(info),
        }
    }

    fn config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
    }

    /// Forgets the remembered primary: the next connect asks the Sentinels.
    pub fn forget(&self) {
        if let Ok(mut last) = self.last.try_lock() {
            *last = None;
        }
        // A discovery in progress holds the lock; it will store a fresh answer anyway.
    }

    /// A connection to the current primary, checked with `ROLE`.
    pub async fn connect_primary(
        &self,
        config: &AsyncConnectionConfig,
    ) -> Result<MultiplexedConnection, NoPrimary> {
        // One discovery at a time; the others reuse its answer.
        let mut last = self.last.lock().await;
        let reuse = last.as_ref().and_then(|r| {
            let fresh = match &r.result {
                Ok(_) => r.at.elapsed() < REUSE_OK,
                Err(_) => r.at.elapsed() < REUSE_ERR,
            };
            fresh.then(|| r.result.clone())
        });
        match reuse {
            Some(Err(e)) => return Err(e),
            Some(Ok(at)) => {
                drop(last);
                match self.connect_checked(&at, config).await {
                    Ok(c) => {
                        *self.connected_to.lock() = Some(at);
                        return Ok(c);
                    }
                    Err(detail) => {
                        tracing::debug!(primary = %at, %detail, "remembered Redis primary unusable; asking the Sentinels");
                        last = self.last.lock().await;
                    }
                }
            }
            None => {}
        }
        let result = self.discover(config).await;
        *last = Some(Remembered {
            at: Instant::now(),
            result: result
                .as_ref()
                .map(|(at, _)| at.clone())
                .map_err(Clone::clone),
        });
        match result {
            Ok((at, c)) => {
                tracing::debug!(primary = %at, master = %self.master, "Sentinels named the Redis primary");
                *self.connected_to.lock() = Some(at);
                Ok(c)
            }
            Err(e) => Err(e),
        }
    }

    fn no_primary(&self, detail: String) -> NoPrimary {
        NoPrimary {
            master: self.master.clone(),
            detail,
        }
    }

    /// Asks every Sentinel, then connects to the best-named primary that says it is one.
    async fn discover(
        &self,
        config: &AsyncConnectionConfig,
    ) -> Result<(HostPort, MultiplexedConnection), NoPrimary> {
        let mut asks: FuturesUnordered<_> = self
            .sentinels
            .iter()
            .map(|s| async move { (s, self.ask(s).await) })
            .collect();
        let mut named: Vec<Named> = Vec::new();
        let mut problems: Vec<String> = Vec::new();
        // Once one Sentinel has answered, the others get a short grace (they are normally
        // all on one network) rather than the whole timeout of a dead one.
        let grace =
            (self.timeout / 10).clamp(Duration::from_millis(10), Duration::from_millis(100));
        let mut until: Option<tokio::time::Instant> = None;
        loop {
            let next = match until {
                Some(t) => match tokio::time::timeout_at(t, asks.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        problems.push(format!("{} Sentinel(s) did not answer in time", asks.len()));
                        break;
                    }
                },
                None => asks.next().await,
            };
            let Some((sentinel, answer)) = next else {
                break;
            };
            match answer {
                Ok(n) => {
                    until.get_or_insert_with(|| tokio::time::Instant::now() + grace);
                    named.push(n);
                }
                Err(e) => problems.push(format!("Sentinel {sentinel}: {e}")),
            }
        }
        if named.is_empty() {
            return Err(self.no_primary(problems.join("; ")));
        }
        // Highest epoch first (the latest fail-over); among equals, not flagged down first.
        named.sort_by(|a, b| b.epoch.cmp(&a.epoch).then(a.down.cmp(&b.down)));
        let mut tried: Vec<HostPort> = Vec::new();
        for n in &named {
            if tried.contains(&n.primary) {
                continue;
            }
            tried.push(n.primary.clone());
            match self.connect_checked(&n.primary, config).await {
                Ok(c) => return Ok((n.primary.clone(), c)),
                Err(detail) => problems.push(format!(
                    "Sentinel {} names {} (epoch {}{}): {detail}",
                    n.sentinel,
                    n.primary,
                    n.epoch,
                    if n.down { ", flagged down" } else { "" }
                )),
            }
        }
        Err(self.no_primary(problems.join("; ")))
    }

    /// One Sentinel's view of the master name.
    async fn ask(&self, sentinel: &HostPort) -> Result<Named, String> {
        let mut conn = self.sentinel_connection(sentinel).await?;
        self.ask_on(sentinel, &mut conn).await
    }

    /// `SENTINEL MASTER` (the configuration epoch and the flags) and, in the same round
    /// trip, `SENTINEL GET-MASTER-ADDR-BY-NAME`. The Sentinel leading a fail-over answers
    /// the latter with the promoted replica as soon as the replica says it is a primary,
    /// and bumps the epoch then; `SENTINEL MASTER` keeps the old address until every other
    /// replica follows the new primary (`+switch-master`), which it sees through their
    /// `INFO` once a second: seconds the sidecar would answer 503 for (test
    /// `promoted_replica_is_used_before_the_switch`).
    async fn ask_on(
        &self,
        sentinel: &HostPort,
        conn: &mut MultiplexedConnection,
    ) -> Result<Named, String> {
        let reply: redis::RedisResult<(MasterFields, Option<(String, u16)>)> = redis::pipe()
            .cmd("SENTINEL")
            .arg("MASTER")
            .arg(&self.master)
            .cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.master)
            .query_async(conn)
            .await;
        let (fields, current) = match reply {
            Ok(r) => r,
            Err(e) if e.to_string().contains("No such master") => {
                return Err(format!("does not monitor a master named {:?}", self.master))
            }
            Err(e) => return Err(e.to_string()),
        };
        named_from(sentinel, &fields, current)
    }

    async fn sentinel_connection(&self, at: &HostPort) -> Result<MultiplexedConnection, String> {
        let mut creds = RedisConnectionInfo::default();
        if let Some(u) = self.auth.username() {
            creds = creds.set_username(u);
        }
        if let Some(p) = self.auth.password() {
            creds = creds.set_password(p);
        }
        let with_password = self.auth.password().is_some();
        let first = self
            .client(at, creds)
            .map_err(|e| e.to_string())?
            .get_multiplexed_async_connection_with_config(&self.config())
            .await;
        match first {
            Ok(c) => Ok(c),
            // A Sentinel without a password refuses AUTH (redis-rs reports only "Password
            // authentication failed"): ask it again without one. A Sentinel that does want
            // a password then refuses the command, and the first error is the one shown.
            Err(e) if with_password && e.kind() == redis::ErrorKind::AuthenticationFailed => {
                let open = self
                    .client(at, RedisConnectionInfo::default())
                    .map_err(|e| e.to_string())?
                    .get_multiplexed_async_connection_with_config(&self.config())
                    .await;
                match open {
                    Ok(mut c) => match redis::cmd("PING").query_async::<String>(&mut c).await {
                        Ok(_) => Ok(c),
                        Err(_) => Err(format!("{e} (check DKN_AUTH_REDIS_PASSWORD)")),
                    },
                    Err(_) => Err(format!("{e} (check DKN_AUTH_REDIS_PASSWORD)")),
                }
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Connects to `at` and keeps the connection only if the node says it is the primary.
    async fn connect_checked(
        &self,
        at: &HostPort,
        config: &AsyncConnectionConfig,
    ) -> Result<MultiplexedConnection, String> {
        let mut conn = self
            .client(at, self.auth.clone())
            .map_err(|e| e.to_string())?
            .get_multiplexed_async_connection_with_config(config)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let role: Role = redis::cmd("ROLE")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("ROLE failed: {e}"))?;
        match role {
            Role::Primary { .. } => Ok(conn),
            Role::Replica {
                primary_ip,
                primary_port,
                ..
            } => Err(format!(
                "it is a replica (of {primary_ip}:{primary_port}), not the primary: a fail-over is under way"
            )),
            Role::Sentinel { .. } => Err("it is a Sentinel, not a Redis node".into()),
            other => Err(format!("it answered ROLE with {other:?}, not as the primary")),
        }
    }
}

/// One Sentinel's answer from its `SENTINEL MASTER` fields and its current address of the
/// primary (`GET-MASTER-ADDR-BY-NAME`). Where the two differ, a fail-over led by this
/// Sentinel has promoted a replica: that replica is the primary it names, and the down
/// flags (which are the old primary's) do not apply to it.
fn named_from(
    sentinel: &HostPort,
    fields: &MasterFields,
    current: Option<(String, u16)>,
) -> Result<Named, String> {
    let host = fields
        .get("ip")
        .filter(|h| !h.is_empty())
        .ok_or("answer has no ip")?;
    let port = fields
        .get("port")
        .and_then(|p| p.parse().ok())
        .ok_or("answer has no port")?;
    let configured = HostPort {
        host: host.clone(),
        port,
    };
    let flags = fields.get("flags").map(String::as_str).unwrap_or("");
    let down = flags.split(',').any(|f| f == "s_down" || f == "o_down");
    let (primary, down) = match current {
        Some((host, port))
            if !host.is_empty() && (host != configured.host || port != configured.port) =>
        {
            (HostPort { host, port }, false)
        }
        _ => (configured, down),
    };
    Ok(Named {
        sentinel: sentinel.clone(),
        primary,
        epoch: fields
            .get("config-epoch")
            .and_then(|e| e.parse().ok())
            .unwrap_or(0),
        down,
    })
}

/// Asks the Sentinels, over connections kept between calls, whether they still name the
/// primary the sidecar's connections go to. A fail-over with the old primary alive (forced,
/// or a network split that leaves it reachable from the sidecar but not from the
/// Sentinels) leaves that primary accepting writes until it is demoted, which Sentinel
/// does only once it sees it again, seconds later or never: the connections must move
/// on their own.
pub struct PrimaryCheck {
    conns: Vec<Option<MultiplexedConnection>>,
}

impl PrimaryCheck {
    pub fn new(sentinels: &Sentinels) -> Self {
        PrimaryCheck {
            conns: sentinels.sentinels.iter().map(|_| None).collect(),
        }
    }

    /// `Some(named)` when the Sentinels (highest epoch among the answers) name a primary
    /// other than the one connected to; `None` when they agree, or cannot tell.
    pub async fn moved(&mut self, sentinels: &Sentinels) -> Option<(HostPort, HostPort)> {
        let current = sentinels.connected_to.lock().clone()?;
        // All at once, so one Sentinel that does not answer delays nothing.
        let asks =
            sentinels
                .sentinels
                .iter()
                .zip(self.conns.iter_mut())
                .map(|(at, slot)| async move {
                    let ask = async {
                        if slot.is_none() {
                            *slot = sentinels.sentinel_connection(at).await.ok();
                        }
                        let conn = slot.as_mut()?;
                        sentinels.ask_on(at, conn).await.ok()
                    };
                    match tokio::time::timeout(sentinels.timeout, ask).await {
                        Ok(Some(n)) => Some(n),
                        _ => {
                            *slot = None;
                            None
                        }
                    }
                });
        let answers = futures_util::future::join_all(asks).await;
        let mut best: Option<Named> = None;
        for n in answers.into_iter().flatten() {
            if best.as_ref().is_none_or(|b| n.epoch > b.epoch) {
                best = Some(n);
            }
        }
        let best = best?;
        // Still the connected primary, or a primary the Sentinels think is down (the
        // connections find out by themselves): nothing to do.
        if best.primary == current || best.down {
            return None;
        }
        // The connections may have moved meanwhile.
        let now = sentinels.connected_to.lock().clone()?;
        (best.primary != now).then_some((now, best.primary))
    }
}

/// Shared so the pool and its error path can both reach it.
pub type SharedSentinels = Arc<Sentinels>;

#[cfg(test)]
mod tests {
    use super::{named_from, HostPort};
    use std::collections::HashMap;

    fn master_fields(ip: &str, port: &str, flags: &str, epoch: &str) -> HashMap<String, String> {
        [
            ("ip", ip),
            ("port", port),
            ("flags", flags),
            ("config-epoch", epoch),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn a_promoted_replica_is_named_before_the_switch() {
        let at = HostPort::parse("s:26379").unwrap();
        // The leader of a fail-over, between +promoted-slave and +switch-master.
        let f = master_fields(
            "10.0.0.1",
            "6379",
            "master,s_down,o_down,failover_in_progress",
            "3",
        );
        let n = named_from(&at, &f, Some(("10.0.0.2".into(), 6379))).unwrap();
        assert_eq!(n.primary, HostPort::parse("10.0.0.2:6379").unwrap());
        assert_eq!(n.epoch, 3);
        assert!(!n.down, "the down flags are the old primary's");
        // Same address: the MASTER answer as it is, its flags included.
        let n = named_from(&at, &f, Some(("10.0.0.1".into(), 6379))).unwrap();
        assert_eq!(n.primary, HostPort::parse("10.0.0.1:6379").unwrap());
        assert!(n.down);
        // Another port of the same host is another node.
        let n = named_from(&at, &f, Some(("10.0.0.1".into(), 6380))).unwrap();
        assert_eq!(n.primary.port, 6380);
        // No current address (or an empty one): the MASTER answer.
        for current in [None, Some((String::new(), 0))] {
            let n = named_from(&at, &f, current).unwrap();
            assert_eq!(n.primary, HostPort::parse("10.0.0.1:6379").unwrap());
        }
    }

    #[test]
    fn a_master_answer_without_an_address_is_refused() {
        let at = HostPort::parse("s:26379").unwrap();
        let f = master_fields("", "6379", "master", "1");
        assert!(named_from(&at, &f, None).is_err());
        let f = master_fields("10.0.0.1", "x", "master", "1");
        assert!(named_from(&at, &f, None).is_err());
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            HostPort::parse("redis-0.redis:26379").unwrap(),
            HostPort {
                host: "redis-0.redis".into(),
                port: 26379
            }
        );
        assert_eq!(HostPort::parse("[::1]:26379").unwrap().host, "::1");
        assert_eq!(
            HostPort::parse("[::1]:26379").unwrap().to_string(),
            "[::1]:26379"
        );
        assert!(HostPort::parse("h1").unwrap_err().contains("host:port"));
        assert!(HostPort::parse(":1").unwrap_err().contains("no host"));
        assert!(HostPort::parse("h:x").unwrap_err().contains("bad port"));
    }
}

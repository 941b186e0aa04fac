//! The Redis driver on a Redis Cluster (`redis+cluster://h1:p1,h2:p2/`, `rediss+cluster://`).
//!
//! The scripts are those of `store/redis.rs`: every key one script touches carries the hash
//! tag of one sid's group, so each script runs on the one primary that owns its slot.
//! redis-rs's cluster client routes each command by its first key, follows `MOVED`/`ASK`,
//! and refreshes the slot map after a fail-over inside the cluster; while a slot has no
//! primary its commands are retried until the backend timeout and then answer 503.
//!
//! Two things span slots and are done here:
//! - A rotation between sids of different slots (a login: the anonymous sid and the new
//!   one have unrelated hash tags) cannot be one script. The new sid's slot is read first
//!   (so a taken or tombstoned new sid refuses the rotation with nothing changed), then the
//!   old sid is ended on its slot (`rotate_out.lua`: tombstone and index entry removed, or
//!   the soft-rotation mark), which returns the data to copy, and only then is the new sid
//!   created create-only on its slot (`put.lua`). A sidecar that dies between the two
//!   steps leaves the user logged out (the old sid is a tombstone, the new one absent),
//!   never a logged-out session alive, and a retried rotation finds the tombstone (410).
//! - Identifier batches: the delete scripts run concurrently, each on its slot's primary;
//!   the "missing" look-up groups the identifiers by slot, one script per slot, run
//!   concurrently.
//!
//! Connections: one cluster connection (one multiplexed connection per node, opened and
//! replaced by redis-rs) for every request, and, for writes followed by `WAIT` (which
//! blocks the node connection it runs on), cluster connections lent to one ending at a
//! time ([`Lender`]).

use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{RedisError, Value};

use super::redis::{
    delete_call, delete_reply, flag, group_prefix, keys_of, outcome, parse_hosts, patch_call,
    patch_reply, put_call, put_reply, rotate_call, rotate_reply, split_auth, status, text, Call,
    Ending, Keys, RotateArgs, Scripts,
};
use super::sentinel::HostPort;
use super::{millis, StoreError, StoreResult, StoreSettings};
use crate::model::{
    Condition, Fields, Identifier, Patch, RotateSource, Rotation, Session, Sid, Written,
};

/// Whether `uri` is one of the Cluster forms.
pub fn is_cluster_uri(uri: &str) -> bool {
    uri.starts_with("redis+cluster://") || uri.starts_with("rediss+cluster://")
}

/// A parsed Cluster URI: the seed nodes, and clients for them: one for the shared
/// connection, one for the connections lent to endings.
pub struct ClusterTarget {
    nodes: Vec<HostPort>,
    client: ClusterClient,
    waited: ClusterClient,
}

impl ClusterTarget {
    /// `redis+cluster://[user:pass@]h1:p1,h2:p2[/]` (`rediss+cluster://`: TLS to every
    /// node, verified against `ca` when given, else the public roots). A Cluster has only
    /// database 0. `timeout` bounds each request.
    pub fn from_uri(
        uri: &str,
        password: Option<&str>,
        ca: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let (rest, tls) = match uri.strip_prefix("redis+cluster://") {
            Some(r) => (r, false),
            None => (
                uri.strip_prefix("rediss+cluster://")
                    .ok_or("expected redis+cluster:// or rediss+cluster://")?,
                true,
            ),
        };
        let (user, pass, rest) = split_auth(rest)?;
        let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
        if !path.is_empty() && path != "0" {
            return Err(format!(
                "a Redis Cluster has only database 0, the URI names {path:?}"
            ));
        }
        let pass = pass
            .filter(|p| !p.is_empty())
            .or(password.map(str::to_owned));
        let nodes = parse_hosts(hosts, "the cluster form needs at least one host:port")?;
        let scheme = if tls { "rediss" } else { "redis" };
        let urls: Vec<String> = nodes.iter().map(|n| format!("{scheme}://{n}")).collect();
        let user = user.filter(|u| !u.is_empty());
        // `step` bounds each connect and each answer on one node connection.
        let build = |step: Duration| {
            let mut b = ClusterClientBuilder::new(urls.clone())
                .connection_timeout(step)
                .response_timeout(step)
                // The whole request, redirections and retries included, within the budget.
                .overall_response_timeout(Some(timeout))
                // Retried (a slot without a primary, a node reconnecting) every 10 to 100 ms
                // rather than redis-rs's default of 1.3 s and up, which is past any budget.
                .retries(RETRIES)
                .min_retry_wait(10)
                .max_retry_wait(100);
            if let Some(u) = &user {
                b = b.username(u);
            }
            if let Some(p) = &pass {
                b = b.password(p);
            }
            if tls {
                b = b.tls(redis::TlsMode::Secure);
                if let Some(pem) = &ca {
                    b = b.certs(redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem.clone()),
                    });
                }
            }
            b.build().map_err(|e| e.to_string())
        };
        // The shared connection's commands are short scripts; redis-rs's slot-map refresh
        // checks every node connection while all requests of the cluster connection wait,
        // and a node that does not answer yet (just restarted, or hung) held them for the
        // whole budget (seen: requests on live slots answered 503 as the killed primary's
        // node came back). Half the budget per step leaves the other half to the requests.
        let client = build(timeout / 2)?;
        // A lent connection runs `WAIT`, which may take most of the budget.
        let waited = build(timeout)?;
        Ok(ClusterTarget {
            nodes,
            client,
            waited,
        })
    }

    /// Whether any seed node accepts a TCP connection within `timeout`: a Cluster URI
    /// none of whose nodes can be reached is a setting mistake, refused at start-up.
    pub fn check_reachable(&self, timeout: Duration) -> Result<(), String> {
        let mut why = Vec::new();
        for n in &self.nodes {
            let addrs = match (n.host.as_str(), n.port).to_socket_addrs() {
                Ok(a) => a.collect::<Vec<_>>(),
                Err(e) => {
                    why.push(format!("{n}: {e}"));
                    continue;
                }
            };
            for a in &addrs {
                match std::net::TcpStream::connect_timeout(a, timeout) {
                    Ok(_) => return Ok(()),
                    Err(e) => why.push(format!("{n} ({a}): {e}")),
                }
            }
        }
        Err(format!(
            "no node of the Redis Cluster can be reached: {}",
            why.join("; ")
        ))
    }
}

/// Tries of one command in redis-rs's cluster client (redirections, reconnects); the
/// overall timeout ends them first.
const RETRIES: u32 = 30;

/// Identifier scripts in flight at once, per batch.
const CONCURRENT: usize = 64;

/// Cluster connections for endings followed by `WAIT` (`DKN_AUTH_REDIS_MIN_REPLICAS` > 0),
/// each lent to one ending at a time, kept open between endings.
///
/// Redis blocks a connection in `WAIT`, and on a cluster connection that also holds
/// redis-rs's slot-map refresh: it `PING`s every node connection while every request of that
/// cluster connection waits. With one cluster connection shared by every ending, an ending
/// waiting for a replica that is still syncing held the endings of every other slot past
/// the backend timeout (seen in `tests/redis_cluster.rs`: a `DELETE` on a live primary's
/// slot answered 503 while the killed primary's node came back as a replica). Lent out
/// alone, a connection's `WAIT` holds only its own ending.
///
/// Connections are opened in the background, never on a request's path: opening one asks
/// every node, and a node that hangs (a frozen VM, a partition) makes that take longer than
/// the backend timeout (seen: endings on live slots answered 503 "connecting to Redis
/// Cluster" while one primary was frozen). [`SPARE`] stay ready for the next endings.
struct Lender {
    client: ClusterClient,
    /// Ready to lend.
    idle: parking_lot::Mutex<Vec<ClusterConnection>>,
    /// Cut short (a command timed out, or its request was dropped): lent again from the
    /// instant given, once redis-rs has stopped retrying the command (its overall timeout)
    /// and a `WAIT` in it has timed out on the server, which frees its node connection.
    resting: parking_lot::Mutex<Vec<(Instant, ClusterConnection)>>,
    /// Given back, rested or opened.
    ready: tokio::sync::Notify,
    permits: tokio::sync::Semaphore,
    size: usize,
    timeout: Duration,
    /// Idle, resting or lent.
    open: AtomicUsize,
    opening: AtomicUsize,
    /// Why the last attempt to open one failed, until one succeeds.
    failed: parking_lot::Mutex<Option<String>>,
}

/// Endings in flight at once per sidecar, each on its own cluster connection: a quarter of
/// `DKN_AUTH_REDIS_MAX_CONN`, 4 to 16 (one connection to every node each).
fn lent_connections(max_conn: usize) -> usize {
    (max_conn / 4).clamp(4, 16)
}

/// Connections kept ready beyond those lent, opened ahead of the endings that need them.
const SPARE: usize = 2;

impl Lender {
    /// An idle connection, or a resting one whose rest is over.
    fn take(&self) -> Option<ClusterConnection> {
        let now = Instant::now();
        let mut idle = self.idle.lock();
        let mut resting = self.resting.lock();
        let (rested, still): (Vec<_>, Vec<_>) = resting.drain(..).partition(|(at, _)| *at <= now);
        *resting = still;
        idle.extend(rested.into_iter().map(|(_, c)| c));
        idle.pop()
    }

    /// Opens connections in the background until [`SPARE`] are idle or being opened, within
    /// `size` + [`SPARE`] open in all.
    fn top_up(self: &Arc<Self>) {
        loop {
            let idle = self.idle.lock().len();
            let opening = self.opening.load(Ordering::Acquire);
            let open = self.open.load(Ordering::Acquire);
            if idle + opening >= SPARE || open + opening >= self.size + SPARE {
                return;
            }
            if self
                .opening
                .compare_exchange(opening, opening + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            let lender = self.clone();
            tokio::spawn(async move {
                match lender.client.get_async_connection().await {
                    Ok(c) => {
                        lender.open.fetch_add(1, Ordering::AcqRel);
                        lender.idle.lock().push(c);
                        *lender.failed.lock() = None;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "opening a Redis Cluster connection for endings failed");
                        *lender.failed.lock() = Some(e.to_string());
                    }
                }
                lender.opening.fetch_sub(1, Ordering::AcqRel);
                lender.ready.notify_waiters();
            });
        }
    }
}

/// A cluster connection lent to one ending; given back when dropped, after a rest when a
/// command on it was cut short.
struct Lent<'a> {
    lender: &'a Lender,
    conn: ClusterConnection,
    in_doubt: bool,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Lent<'_> {
    /// The connection, for a command whose reply goes to [`Lent::answered`].
    fn conn(&mut self) -> &mut ClusterConnection {
        self.in_doubt = true;
        &mut self.conn
    }

    /// The reply of a command sent on [`Lent::conn`]: a timeout leaves the connection in
    /// doubt.
    fn answered<T>(&mut self, r: redis::RedisResult<T>) -> StoreResult<T> {
        self.in_doubt = r.as_ref().is_err_and(RedisError::is_timeout);
        r.map_err(fail)
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let conn = self.conn.clone();
        if self.in_doubt {
            let at = Instant::now() + self.lender.timeout;
            self.lender.resting.lock().push((at, conn));
        } else {
            self.lender.idle.lock().push(conn);
        }
        self.lender.ready.notify_waiters();
    }
}

/// The cluster connection every request shares, and its opening ([`ClusterStore::conn`]).
#[derive(Default)]
struct Shared {
    conn: std::sync::OnceLock<ClusterConnection>,
    opening: AtomicBool,
    done: tokio::sync::Notify,
    /// Why the last attempt failed.
    failed: parking_lot::Mutex<Option<String>>,
}

pub struct ClusterStore {
    client: ClusterClient,
    shared: Arc<Shared>,
    lender: Arc<Lender>,
    scripts: Scripts,
    settings: StoreSettings,
    min_replicas: u32,
    timeout: Duration,
    replicas_short: AtomicBool,
}

/// A Redis error as the API answers it: the cluster or a node unreachable, a slot without
/// a primary, a timeout are outages (503), anything else 502.
fn fail(e: RedisError) -> StoreError {
    use redis::{ErrorKind, ServerErrorKind};
    let outage = e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || e.code() == Some("NOREPLICAS")
        || e.code() == Some("UNBLOCKED")
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
            ) | ErrorKind::ClusterConnectionNotFound
                | ErrorKind::AuthenticationFailed
        );
    // A WAIT that reached a replica: the node that took the write was demoted meanwhile
    // (a fail-over), so whether the write survives is not known.
    let demoted = e.to_string().contains("WAIT cannot be used with replica");
    if outage || demoted {
        StoreError::Unavailable(format!("Redis Cluster: {e}"))
    } else {
        StoreError::Backend(format!("Redis Cluster: {e}"))
    }
}

impl ClusterStore {
    pub fn new(
        target: ClusterTarget,
        settings: StoreSettings,
        min_replicas: u32,
        max_conn: usize,
        timeout: Duration,
    ) -> Self {
        let size = lent_connections(max_conn);
        ClusterStore {
            lender: Arc::new(Lender {
                client: target.waited,
                idle: parking_lot::Mutex::new(Vec::new()),
                resting: parking_lot::Mutex::new(Vec::new()),
                ready: tokio::sync::Notify::new(),
                permits: tokio::sync::Semaphore::new(size),
                size,
                timeout,
                open: AtomicUsize::new(0),
                opening: AtomicUsize::new(0),
                failed: parking_lot::Mutex::new(None),
            }),
            client: target.client,
            shared: Arc::default(),
            scripts: Scripts::load(),
            settings,
            min_replicas,
            timeout,
            replicas_short: AtomicBool::new(false),
        }
    }

    /// The shared cluster connection, opened on first use by a task of its own. Opening
    /// asks every seed node, and one that hangs makes that outlast a request's time limit:
    /// opened on the request's path, every attempt would be cancelled and the sidecar stay
    /// unconnected for as long as the node hangs. One attempt at a time; the requests that
    /// wait for a failed one get its error, the next request starts another. Once open,
    /// redis-rs reconnects to the nodes itself.
    async fn conn(&self) -> StoreResult<ClusterConnection> {
        let shared = &self.shared;
        loop {
            if let Some(c) = shared.conn.get() {
                return Ok(c.clone());
            }
            let done = shared.done.notified();
            if !shared.opening.swap(true, Ordering::AcqRel) {
                let opener = shared.clone();
                let client = self.client.clone();
                tokio::spawn(async move {
                    match client.get_async_connection().await {
                        Ok(c) => {
                            let _ = opener.conn.set(c);
                            *opener.failed.lock() = None;
                            tracing::info!("connected to the Redis Cluster");
                        }
                        Err(e) => {
                            *opener.failed.lock() =
                                Some(format!("connecting to Redis Cluster: {e}"));
                        }
                    }
                    opener.opening.store(false, Ordering::Release);
                    opener.done.notify_waiters();
                });
            }
            done.await;
            if let Some(c) = shared.conn.get() {
                return Ok(c.clone());
            }
            if let Some(e) = shared.failed.lock().clone() {
                return Err(StoreError::Unavailable(e));
            }
        }
    }

    /// A cluster connection for one ending, within what is left of the budget of the
    /// request that began at `start`: an idle one, or the first to be given back, rested or
    /// opened meanwhile.
    async fn lend(&self, start: Instant) -> StoreResult<Lent<'_>> {
        let lender = &self.lender;
        let busy = |left: Duration| {
            let why = match lender.failed.lock().as_deref() {
                Some(e) => format!("; the last attempt to open one: {e}"),
                None => String::new(),
            };
            StoreError::Unavailable(format!(
                "no Redis Cluster connection for endings was free within {} ms ({} lent at \
                 most, {} open){why}",
                millis(left),
                lender.size,
                lender.open.load(Ordering::Relaxed)
            ))
        };
        let left = self.timeout.saturating_sub(start.elapsed());
        let permit = match tokio::time::timeout(left, lender.permits.acquire()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) | Err(_) => return Err(busy(left)),
        };
        loop {
            let ready = lender.ready.notified();
            let taken = lender.take();
            lender.top_up();
            if let Some(conn) = taken {
                return Ok(Lent {
                    lender,
                    conn,
                    in_doubt: false,
                    _permit: permit,
                });
            }
            let left = self.timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(busy(self.timeout));
            }
            // A rest ends without a notification: looked at again every 20 ms.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(20)), ready).await;
        }
    }

    fn keys(&self, sid: &Sid) -> Keys {
        keys_of(&self.settings.prefix, sid)
    }

    fn index_key(&self, id: &Identifier) -> String {
        format!("{}i", group_prefix(&self.settings.prefix, id.as_str()))
    }

    async fn run(&self, inv: Call<'_>) -> StoreResult<Vec<Value>> {
        let mut c = self.conn().await?;
        inv.invoke_async::<Vec<Value>>(&mut c).await.map_err(fail)
    }

    /// Runs a script that ends or moves a session. With `min_replicas` > 0 it runs on the
    /// lent connection ([`Lender`]) in one pipeline with `WAIT`, sent to the primary of `key`'s slot:
    /// the `WAIT` runs on the node connection that ran the script, right after it, and a
    /// redirection (`MOVED`, `ASK`) moves both. Success only once enough replicas have it,
    /// when `ok` says the script wrote.
    async fn run_ending(
        &self,
        inv: Call<'_>,
        key: &str,
        ending: Ending,
        start: Instant,
        ok: impl Fn(&[Value]) -> bool,
    ) -> StoreResult<Vec<Value>> {
        if self.min_replicas == 0 {
            return self.run(inv).await;
        }
        let n = self.min_replicas;
        let mut lent = self.lend(start).await?;
        let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master));
        let mut loaded = false;
        loop {
            let left = self.timeout.saturating_sub(start.elapsed());
            // As in store/redis.rs: Redis notices a WAIT's timeout up to 1/hz late.
            let margin = (Duration::from_millis(120) + self.timeout / 10).min(self.timeout / 2);
            let wait_ms = millis(left.saturating_sub(margin)).max(1);
            let guard = left.saturating_sub(Duration::from_millis(10));
            let mut pipe = redis::pipe();
            pipe.add_command(inv.evalsha())
                .cmd("WAIT")
                .arg(n)
                .arg(wait_ms);
            let sent = lent.conn().route_pipeline(pipe, 0, 2, route.clone());
            let replies = match tokio::time::timeout(guard, sent).await {
                Ok(r) => lent.answered(r)?,
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "the {} and its WAIT for the {n} replica(s) required by \
                         DKN_AUTH_REDIS_MIN_REPLICAS did not answer within {} ms; it may or \
                         may not have been applied",
                        ending.what(),
                        millis(guard)
                    )))
                }
            };
            let mut it = replies.into_iter();
            let (Some(script), Some(waited)) = (it.next(), it.next()) else {
                return Err(StoreError::Backend(
                    "short pipeline reply from Redis".into(),
                ));
            };
            let script = match script.extract_error() {
                Err(e)
                    if !loaded
                        && e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    // Not loaded on this node yet (nothing ran): load, send again.
                    let r = inv.script.load_async(lent.conn()).await;
                    lent.answered(r)?;
                    loaded = true;
                    continue;
                }
                Err(e) => return Err(fail(e)),
                Ok(v) => v,
            };
            let r: Vec<Value> = redis::FromRedisValue::from_redis_value(script)
                .map_err(|e| StoreError::Backend(format!("Redis Cluster: {e}")))?;
            if ok(&r) {
                let acked = waited.extract_error().map_err(fail)?;
                self.judge(acked, n, wait_ms, ending)?;
            }
            return Ok(r);
        }
    }

    /// A `WAIT` reply against `n`, logged once when endings start (and stop) lacking
    /// acknowledgements.
    fn judge(&self, acked: Value, n: u32, wait_ms: u64, ending: Ending) -> StoreResult<()> {
        let r = match acked {
            Value::Int(a) if a >= i64::from(n) => Ok(()),
            Value::Int(a) => Err(StoreError::NotReplicated(format!(
                "the {} was applied on its Redis Cluster primary, but only {a} of the {n} \
                 replica(s) required by DKN_AUTH_REDIS_MIN_REPLICAS acknowledged it within \
                 {wait_ms} ms; it is not durable and may be undone by a fail-over",
                ending.what()
            ))),
            other => Err(StoreError::Backend(format!(
                "expected an integer from WAIT, got {other:?}"
            ))),
        };
        match &r {
            Err(StoreError::NotReplicated(m)) => {
                if !self.replicas_short.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %m, min_replicas = n,
                        "endings are not acknowledged by enough Redis replicas: they answer 503");
                }
            }
            Ok(()) => {
                if self.replicas_short.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        min_replicas = n,
                        "endings are acknowledged by enough Redis replicas again"
                    );
                }
            }
            Err(_) => {}
        }
        r
    }

    /// `WAIT min_replicas <what is left of the budget>` on every primary (redis-rs sends it
    /// to each over the connections of `c`, which ran the batch, and keeps the smallest
    /// count).
    async fn wait_all_primaries(
        &self,
        lent: &mut Lent<'_>,
        start: Instant,
        ending: Ending,
    ) -> StoreResult<()> {
        let n = self.min_replicas;
        let left = self.timeout.saturating_sub(start.elapsed());
        // As in store/redis.rs: Redis notices a WAIT's timeout up to 1/hz late.
        let margin = (Duration::from_millis(120) + self.timeout / 10).min(self.timeout / 2);
        let wait_ms = millis(left.saturating_sub(margin)).max(1);
        let guard = left.saturating_sub(Duration::from_millis(10));
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(n).arg(wait_ms);
        let routing = RoutingInfo::MultiNode((
            redis::cluster_routing::MultipleNodeRoutingInfo::AllMasters,
            Some(redis::cluster_routing::ResponsePolicy::Aggregate(
                redis::cluster_routing::AggregateOp::Min,
            )),
        ));
        let sent = lent.conn().route_command(cmd, routing);
        match tokio::time::timeout(guard, sent).await {
            Ok(r) => {
                let acked = lent.answered(r.and_then(Value::extract_error))?;
                self.judge(acked, n, wait_ms, ending)
            }
            Err(_) => Err(StoreError::NotReplicated(format!(
                "the {} was applied on its Redis Cluster primaries, but their WAIT for the {n} \
                 replica(s) required by DKN_AUTH_REDIS_MIN_REPLICAS did not answer within {} \
                 ms; it is not known to be durable and may be undone by a fail-over",
                ending.what(),
                millis(guard)
            ))),
        }
    }

    /// The shared cluster connection and the lent ones open, idle or lent.
    pub fn pool_in_use(&self) -> u64 {
        u64::from(self.shared.conn.get().is_some())
            + self.lender.open.load(Ordering::Relaxed) as u64
    }

    pub async fn ping(&self) -> StoreResult<()> {
        let mut c = self.conn().await?;
        // Every primary answers, or the cluster is not whole.
        let cmd = redis::cmd("PING");
        c.route_command(
            cmd,
            RoutingInfo::MultiNode((
                redis::cluster_routing::MultipleNodeRoutingInfo::AllMasters,
                Some(redis::cluster_routing::ResponsePolicy::AllSucceeded),
            )),
        )
        .await
        .map(|_| ())
        .map_err(fail)
    }

    pub async fn get(&self, sid: &Sid) -> StoreResult<Option<Session>> {
        let k = self.keys(sid);
        let mut pipe = redis::pipe();
        pipe.cmd("PTTL")
            .arg(&k.session)
            .cmd("HGETALL")
            .arg(&k.session);
        let mut c = self.conn().await?;
        let (ttl, v): (Value, Vec<Value>) = pipe.query_async(&mut c).await.map_err(fail)?;
        super::redis::session_of(&ttl, v)
    }

    pub async fn put(
        &self,
        sid: &Sid,
        fields: Fields,
        ttl: Duration,
        cond: Condition,
    ) -> StoreResult<Written> {
        let k = self.keys(sid);
        put_reply(
            &self
                .run(put_call(&self.scripts, &k, sid, &fields, ttl, cond))
                .await?,
        )
    }

    pub async fn patch(
        &self,
        sid: &Sid,
        patch: Patch,
        ttl: Duration,
        if_match: Option<u64>,
    ) -> StoreResult<u64> {
        let k = self.keys(sid);
        patch_reply(
            &self
                .run(patch_call(&self.scripts, &k, sid, &patch, ttl, if_match))
                .await?,
        )
    }

    pub async fn delete(&self, sid: &Sid, if_match: Option<u64>) -> StoreResult<bool> {
        let start = Instant::now();
        let k = self.keys(sid);
        let inv = delete_call(
            &self.scripts,
            &k,
            sid,
            self.settings.tombstone_ttl,
            if_match,
        );
        let r = self
            .run_ending(inv, &k.session, Ending::Delete, start, |r| {
                matches!(status(r), Ok(0))
            })
            .await?;
        delete_reply(&r)
    }

    pub async fn rotate(
        &self,
        old: &Sid,
        rotation: Rotation,
        if_match: Option<u64>,
    ) -> StoreResult<Written> {
        let start = Instant::now();
        let ko = self.keys(old);
        let kn = self.keys(&rotation.new_sid);
        if Slot::for_key(&ko.session) == Slot::for_key(&kn.session) {
            let inv = rotate_call(
                &self.scripts,
                &ko,
                &kn,
                old,
                &rotation,
                self.settings.tombstone_ttl,
                if_match,
            );
            let r = self
                .run_ending(inv, &ko.session, Ending::Rotation, start, |r| {
                    matches!(status(r), Ok(0))
                })
                .await?;
            return rotate_reply(&r);
        }
        // Across slots. Step 0: is the new sid free? (Read-only; its answer is checked by
        // step 1 where rotate.lua checks it, so the outcomes come in the same order.)
        let mut pipe = redis::pipe();
        pipe.cmd("EXISTS")
            .arg(&kn.tombstone)
            .cmd("HGET")
            .arg(&kn.session)
            .arg("v");
        let mut c = self.conn().await?;
        let (tomb, newv): (i64, Option<String>) = pipe.query_async(&mut c).await.map_err(fail)?;
        let new_state = if tomb == 1 {
            "-1".to_owned()
        } else {
            newv.unwrap_or_default()
        };
        // Step 1: end the old sid on its slot, get its data.
        let a = RotateArgs::of(&rotation);
        let mut inv = Call::new(&self.scripts.rotate_out);
        inv.key(&ko.session)
            .key(&ko.tombstone)
            .key(ko.index.as_ref().unwrap_or(&ko.session))
            .arg(a.mode)
            .arg(old.as_str())
            .arg(rotation.new_sid.as_str())
            .arg(millis(self.settings.tombstone_ttl))
            .arg(a.keep_ms)
            .arg(flag(ko.index.is_some()))
            .arg(new_state);
        a.push_lists(&mut inv);
        inv.arg(if_match.map(|v| v.to_string()).unwrap_or_default());
        let r = self
            .run_ending(inv, &ko.session, Ending::Rotation, start, |r| {
                matches!(status(r), Ok(0))
            })
            .await?;
        match status(&r)? {
            0 => {}
            code => return Err(outcome(code, &r)),
        }
        let mut fields = Fields::new();
        let mut it = r.into_iter().skip(1);
        while let (Some(f), Some(v)) = (it.next(), it.next()) {
            let f = text(f)?;
            if let Some(key) = f.strip_prefix("d:") {
                fields.insert(key.to_owned(), text(v)?);
            }
        }
        match &rotation.source {
            RotateSource::Stored(p) => {
                fields.extend(p.set.iter().map(|(k, v)| (k.clone(), v.clone())));
                for key in &p.remove {
                    fields.remove(key);
                }
            }
            RotateSource::Given(given) => fields.clone_from(given),
        }
        // Step 2: the new sid, create-only. Refused only if it was taken since step 0.
        let inv = put_call(
            &self.scripts,
            &kn,
            &rotation.new_sid,
            &fields,
            rotation.ttl,
            Condition::CreateOnly,
        );
        let created = self
            .run_ending(inv, &kn.session, Ending::Rotation, start, |r| {
                matches!(status(r), Ok(0))
            })
            .await;
        let created = match created {
            Ok(r) => put_reply(&r),
            Err(e) => Err(e),
        };
        match created {
            Ok(w) => Ok(Written {
                version: w.version,
                created: true,
            }),
            Err(e) => {
                tracing::warn!(error = %e,
                    "a rotation across Redis Cluster slots ended the old sid but could not create the new one: the user is logged out");
                Err(match e {
                    StoreError::Gone => StoreError::Precondition { current: None },
                    other => other,
                })
            }
        }
    }

    pub async fn delete_identifiers(&self, ids: &[Identifier]) -> StoreResult<u64> {
        let start = Instant::now();
        let tomb = millis(self.settings.tombstone_ttl);
        let mut lent = if self.min_replicas == 0 {
            None
        } else {
            Some(self.lend(start).await?)
        };
        let c = match &mut lent {
            Some(l) => l.conn().clone(),
            None => self.conn().await?,
        };
        // Collected first: a lazy map over borrowed ids makes the handler's future not Send.
        let calls: Vec<_> = ids
            .iter()
            .map(|id| {
                let mut c = c.clone();
                let key = self.index_key(id);
                let prefix = group_prefix(&self.settings.prefix, id.as_str());
                async move {
                    let mut inv = self.scripts.delete_identifier.prepare_invoke();
                    inv.key(key).arg(prefix).arg(tomb);
                    inv.invoke_async::<u64>(&mut c).await
                }
            })
            .collect();
        let counts: Result<Vec<u64>, RedisError> = stream::iter(calls)
            .buffer_unordered(CONCURRENT)
            .try_collect()
            .await;
        let counts = match &mut lent {
            Some(l) => l.answered(counts)?,
            None => counts.map_err(fail)?,
        };
        if let Some(l) = &mut lent {
            // Every primary's connection of this cluster connection has its share of the
            // batch.
            self.wait_all_primaries(l, start, Ending::IdentifierDelete)
                .await?;
        }
        Ok(counts.into_iter().sum())
    }

    pub async fn missing_identifiers(&self, ids: &[Identifier]) -> StoreResult<Vec<Identifier>> {
        let c = self.conn().await?;
        let mut by_slot: HashMap<Slot, Vec<usize>> = HashMap::new();
        let keys: Vec<String> = ids.iter().map(|id| self.index_key(id)).collect();
        for (i, k) in keys.iter().enumerate() {
            by_slot.entry(Slot::for_key(k)).or_default().push(i);
        }
        let calls: Vec<_> = by_slot
            .into_values()
            .map(|members| {
                let mut c = c.clone();
                let keys = &keys;
                async move {
                    let mut inv = self.scripts.missing.prepare_invoke();
                    for &i in &members {
                        inv.key(&keys[i]);
                    }
                    let counts: Vec<u64> = inv.invoke_async(&mut c).await?;
                    Ok::<_, RedisError>(
                        members
                            .into_iter()
                            .zip(counts)
                            .filter(|(_, n)| *n == 0)
                            .map(|(i, _)| i)
                            .collect::<Vec<_>>(),
                    )
                }
            })
            .collect();
        let found: Vec<Vec<usize>> = stream::iter(calls)
            .buffer_unordered(CONCURRENT)
            .try_collect()
            .await
            .map_err(fail)?;
        let mut missing: Vec<usize> = found.into_iter().flatten().collect();
        // In request order.
        missing.sort_unstable();
        Ok(missing.into_iter().map(|i| ids[i].clone()).collect())
    }
}

//! The Redis driver. Each session operation is one Lua script that also sets the TTL, so a
//! write and its expiry can never be separated. Keys of one sid share a hash tag (its
//! Odoo 18 identifier, or the sid itself), so they live in one Redis Cluster slot.
//!
//! Connections are multiplexed; the pool is a fixed set of slots, each (re)connected lazily.
//! A request uses the slot given by the number of requests already in flight, divided by
//! [`PIPELINE_DEPTH`]: up to that many requests share one connection, whose commands the
//! driver writes together and Redis reads together (automatic pipelining: fewer system calls
//! on both sides than one connection per request in flight), and a busier sidecar spreads
//! over up to `max_conn`. A checkout costs no round trip (a ping-on-checkout pool would
//! double the latency of every call).
//!
//! Every connection carries the pool generation it was opened in. A broken connection, a
//! `READONLY`, a reconnect after connects had failed, or the Sentinels naming another primary
//! start a new generation, and a checkout replaces any connection of an older one: one failure
//! retires every connection of its era (a connection to a killed server is dead whether or
//! not a request has noticed yet), and a connect that raced the change is replaced as well.
//! A command that failed on a broken connection is run once more on a fresh one when that
//! cannot apply it twice: a read always, a write only when it provably never left the
//! sidecar (see `attempt`).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use parking_lot::RwLock;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Script, Value};

use super::sentinel::{HostPort, PrimaryCheck, Sentinels};
use super::{millis, StoreError, StoreResult, StoreSettings, MAX_SESSION_KEYS};
use crate::model::{
    Condition, Fields, Identifier, Patch, RotateSource, Rotation, Session, Sid, Written,
};

const COMMON: &str = include_str!("lua/common.lua");
/// The checks and the old sid's end that a rotation within one slot and the first step of
/// one across Cluster slots share, so both answer in the same order.
const ROTATION: &str = include_str!("lua/rotation.lua");

pub(super) struct Scripts {
    pub(super) put: Script,
    pub(super) patch: Script,
    pub(super) delete: Script,
    pub(super) rotate: Script,
    pub(super) delete_identifier: Script,
    /// Redis Cluster only: step 1 of a rotation across slots (`store/cluster.rs`).
    pub(super) rotate_out: Script,
    /// Redis Cluster only: live-session counts of the indexes of one slot.
    pub(super) missing: Script,
}

impl Scripts {
    pub(super) fn load() -> Self {
        let with_common = |body: &str| {
            Script::new(&format!(
                "local MAX_KEYS = {MAX_SESSION_KEYS}\n{COMMON}\n{body}"
            ))
        };
        let with_rotation = |body: &str| with_common(&format!("{ROTATION}\n{body}"));
        Scripts {
            put: with_common(include_str!("lua/put.lua")),
            patch: with_common(include_str!("lua/patch.lua")),
            delete: Script::new(include_str!("lua/delete.lua")),
            rotate: with_rotation(include_str!("lua/rotate.lua")),
            delete_identifier: Script::new(include_str!("lua/delete_identifier.lua")),
            rotate_out: with_rotation(include_str!("lua/rotate_out.lua")),
            missing: Script::new(include_str!("lua/missing.lua")),
        }
    }
}

/// Where connections come from.
pub enum Target {
    Direct(Box<Client>),
    /// Found through Sentinel on every (re)connect (`store/sentinel.rs`).
    Sentinel(Arc<Sentinels>),
}

impl Target {
    /// `redis://`, `rediss://`, or `redis+sentinel://[user:pass@]h1:p1,h2:p2/master[/db]`
    /// (`rediss+sentinel://` for TLS to the Sentinels and the nodes). `timeout` bounds each
    /// Sentinel look-up.
    pub fn from_uri(
        uri: &str,
        password: Option<&str>,
        ca: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Self, String> {
        if let Some(rest) = uri
            .strip_prefix("redis+sentinel://")
            .map(|r| (r, false))
            .or_else(|| uri.strip_prefix("rediss+sentinel://").map(|r| (r, true)))
        {
            return Self::sentinel(rest.0, rest.1, password, ca, timeout);
        }
        let mut url = url::Url::parse(uri).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(url.scheme(), "redis" | "rediss" | "redis+unix" | "unix") {
            return Err(
                "expected redis://, rediss://, redis+sentinel://, rediss+sentinel://, \
                 redis+cluster:// or rediss+cluster://"
                    .into(),
            );
        }
        if let Some(pw) = password {
            if url.password().is_none() {
                url.set_password(Some(pw))
                    .map_err(|_| "cannot set a password on this URL".to_string())?;
            }
        }
        let client = match ca {
            Some(pem) => Client::build_with_tls(
                url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            ),
            None => Client::open(url.as_str()),
        };
        client
            .map(|c| Target::Direct(Box::new(c)))
            .map_err(|e| e.to_string())
    }

    fn sentinel(
        rest: &str,
        tls: bool,
        password: Option<&str>,
        ca: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let (user, pass, rest) = split_auth(rest)?;
        let (hosts, path) = rest
            .split_once('/')
            .ok_or("sentinel form needs /<master name> after the hosts")?;
        let mut parts = path.split('/');
        let master = parts
            .next()
            .filter(|m| !m.is_empty())
            .ok_or("sentinel form needs a master name")?;
        let db: i64 = match parts.next() {
            Some(d) if !d.is_empty() => d.parse().map_err(|_| format!("bad db number {d:?}"))?,
            _ => 0,
        };
        let pass = pass.or(password.map(str::to_owned));
        let mut info = redis::RedisConnectionInfo::default().set_db(db);
        if let Some(u) = user.filter(|u| !u.is_empty()) {
            info = info.set_username(u);
        }
        if let Some(p) = pass.filter(|p| !p.is_empty()) {
            info = info.set_password(p);
        }
        let sentinels = parse_hosts(hosts, "sentinel form needs at least one host:port")?;
        Ok(Target::Sentinel(Arc::new(Sentinels::new(
            sentinels,
            master.to_owned(),
            info,
            tls,
            ca,
            timeout,
        ))))
    }

    /// Forgets what it knows of the primary, after a connection to it broke.
    fn forget(&self) {
        if let Target::Sentinel(s) = self {
            s.forget();
        }
    }
}

/// The `[user[:password]@]` part of a multi-host URI (Sentinel, Cluster) after its scheme,
/// percent-decoded as in redis:// URIs, and the rest.
pub(super) fn split_auth(rest: &str) -> Result<(Option<String>, Option<String>, &str), String> {
    let Some((auth, rest)) = rest.rsplit_once('@') else {
        return Ok((None, None, rest));
    };
    Ok(match auth.split_once(':') {
        Some((u, p)) => (Some(percent_decode(u)?), Some(percent_decode(p)?), rest),
        None => (Some(percent_decode(auth)?), None, rest),
    })
}

/// `h1:p1,h2:p2` of a multi-host URI; `none` is the error when it names no host.
pub(super) fn parse_hosts(hosts: &str, none: &str) -> Result<Vec<HostPort>, String> {
    let parsed: Vec<HostPort> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(HostPort::parse)
        .collect::<Result<_, _>>()?;
    if parsed.is_empty() {
        return Err(none.into());
    }
    Ok(parsed)
}

/// `%XX` escapes of a URI's user or password.
fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad %-escape in the user or password (write % as %25)")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "user or password is not UTF-8 once decoded".to_string())
}

/// A slot's connection, and the pool generation it was opened in.
#[derive(Clone)]
struct Pooled {
    conn: MultiplexedConnection,
    generation: u64,
}

struct Slot {
    conn: RwLock<Option<Pooled>>,
    connecting: tokio::sync::Mutex<()>,
}

/// A fixed set of lazily connected slots, picked by the requests in flight on the set.
struct Slots {
    what: &'static str,
    slots: Vec<Slot>,
    in_flight: AtomicUsize,
}

impl Slots {
    fn new(what: &'static str, n: usize) -> Self {
        Slots {
            what,
            slots: (0..n.max(1))
                .map(|_| Slot {
                    conn: RwLock::new(None),
                    connecting: tokio::sync::Mutex::new(()),
                })
                .collect(),
            in_flight: AtomicUsize::new(0),
        }
    }
}

pub struct RedisPool {
    target: Target,
    /// Shared by every request.
    shared: Slots,
    /// Only for writes followed by `WAIT` (`DKN_AUTH_REDIS_MIN_REPLICAS` > 0): Redis
    /// blocks a connection in `WAIT`, and would hold every request multiplexed behind it.
    waited: Slots,
    config: AsyncConnectionConfig,
    /// Connections of an older generation are replaced at checkout (module comment).
    generation: AtomicU64,
    /// A connect failed since the last one that succeeded: the next success starts a new
    /// generation (the backend was down and is back).
    connect_failed: AtomicBool,
}

struct Checkout<'a> {
    _in_flight: InFlight<'a>,
    pool: &'a RedisPool,
    slot: &'a Slot,
    conn: MultiplexedConnection,
    generation: u64,
}

impl Checkout<'_> {
    /// Maps a Redis error, retiring the connection when it is broken (or points at a
    /// former primary) so the next checkout reconnects.
    fn fail(&self, e: RedisError) -> StoreError {
        self.pool.fail(self.slot, self.generation, e)
    }
}

/// Whether a failed command may run once more on a fresh connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// Reads: on any broken connection (not a time-out: the budget is spent).
    Read,
    /// Writes: only when the command provably never left the sidecar, since one that ran
    /// and lost its answer would run twice (a create-only `PUT` or an `If-Match` write
    /// would then answer a false 412, a `PATCH` would bump the version twice).
    Write,
}

/// A connection-level failure (not an answer of the server).
fn broken(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

/// Runs a command's future and tells whether it ever waited (returned `Pending`).
///
/// A multiplexed connection hands a command to its driver task over a channel and waits
/// for the answer: the first poll queues the command and then waits. A command that
/// failed on its first poll, before waiting at all, found the channel closed: the driver
/// had already ended (its socket was closed by the server), so not a byte of it was
/// written. That is what redis-rs reports as `broken pipe` for a connection found dead,
/// and the one case where a write is retried.
struct Attempt<T> {
    result: redis::RedisResult<T>,
    waited: bool,
}

async fn attempt<T>(fut: impl Future<Output = redis::RedisResult<T>>) -> Attempt<T> {
    let mut fut = std::pin::pin!(fut);
    let mut waited = false;
    let result = std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Pending => {
            waited = true;
            Poll::Pending
        }
        ready => ready,
    })
    .await;
    Attempt { result, waited }
}

/// Requests in flight that share one connection before the next one is used. Measured in
/// docs/benchmarks.md (issue 9): at 32 requests in flight, one connection costs Redis and
/// the sidecar less CPU per request than 4 or 32.
pub const PIPELINE_DEPTH: usize = 32;

/// How often the Sentinels are asked whether the primary moved (besides every reconnect).
pub const PRIMARY_CHECK: Duration = Duration::from_secs(1);

/// Connections reserved for waited writes: a few, since they are only endings.
pub fn waited_slots(max_conn: usize) -> usize {
    (max_conn / 8).clamp(1, 4)
}

impl RedisPool {
    /// `max_conn` shared connections, plus [`waited_slots`] for waited writes when
    /// `min_replicas` > 0 (taken from `max_conn` when it is large enough).
    pub fn new(target: Target, max_conn: usize, timeout: Duration, min_replicas: u32) -> Self {
        let max_conn = max_conn.max(1);
        let (shared, waited) = if min_replicas > 0 {
            let w = waited_slots(max_conn);
            ((max_conn.saturating_sub(w)).max(1), w)
        } else {
            (max_conn, 1)
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        RedisPool {
            target,
            shared: Slots::new("shared", shared),
            waited: Slots::new("waited", waited),
            config,
            generation: AtomicU64::new(0),
            connect_failed: AtomicBool::new(false),
        }
    }

    async fn checkout_from<'a>(&'a self, set: &'a Slots) -> StoreResult<Checkout<'a>> {
        let n = set.in_flight.fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlight(set);
        let index = (n / PIPELINE_DEPTH) % set.slots.len();
        let slot = &set.slots[index];
        let current = self.generation.load(Ordering::Acquire);
        let cached = slot.conn.read().clone().filter(|p| p.generation >= current);
        let pooled = match cached {
            Some(p) => p,
            None => self.connect(set.what, index, slot).await?,
        };
        Ok(Checkout {
            _in_flight: in_flight,
            pool: self,
            slot,
            conn: pooled.conn,
            generation: pooled.generation,
        })
    }

    async fn connect(&self, what: &'static str, index: usize, s: &Slot) -> StoreResult<Pooled> {
        let _one_at_a_time = s.connecting.lock().await;
        let mut generation = self.generation.load(Ordering::Acquire);
        if let Some(p) = s.conn.read().clone().filter(|p| p.generation >= generation) {
            return Ok(p);
        }
        let conn = match &self.target {
            Target::Direct(client) => client
                .get_multiplexed_async_connection_with_config(&self.config)
                .await
                .map_err(|e| StoreError::Unavailable(format!("connecting to Redis: {e}"))),
            Target::Sentinel(sentinels) => sentinels
                .connect_primary(&self.config)
                .await
                .map_err(|e| StoreError::Unavailable(format!("Redis Sentinel: {e}"))),
        };
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                self.connect_failed.store(true, Ordering::Release);
                return Err(e);
            }
        };
        // Back after connects failed: whatever the other slots hold predates the outage.
        if self.connect_failed.swap(false, Ordering::AcqRel) {
            // The primary just found is the current one: keep it for the other slots.
            generation = self.renew(None, false, "Redis reachable again after failed connects");
        }
        // A generation that changed meanwhile leaves this connection to this request only.
        let p = Pooled { conn, generation };
        *s.conn.write() = Some(p.clone());
        tracing::info!(slot = index, set = what, generation, "connected to Redis");
        Ok(p)
    }

    /// Starts a new generation, when `of` (the generation of a failed connection) is still
    /// the current one or is `None`, and drops the connections of older ones. Returns the
    /// current generation.
    /// `forget`: also forget the Sentinels' answer, so the next connect asks them again.
    fn renew(&self, of: Option<u64>, forget: bool, why: &str) -> u64 {
        let now = match of {
            None => self.generation.fetch_add(1, Ordering::AcqRel) + 1,
            Some(g) => match self.generation.compare_exchange(
                g,
                g + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => g + 1,
                // Already retired with its generation.
                Err(current) => return current,
            },
        };
        for set in [&self.shared, &self.waited] {
            for slot in &set.slots {
                let mut conn = slot.conn.write();
                if conn.as_ref().is_some_and(|p| p.generation < now) {
                    *conn = None;
                }
            }
        }
        if forget {
            self.target.forget();
        }
        tracing::info!(
            generation = now,
            "{why}: every pooled Redis connection is replaced on its next use"
        );
        now
    }

    /// Maps a Redis error, retiring the connection when it is broken so the next checkout
    /// reconnects: with every connection of its generation, unless it only timed out.
    fn fail(&self, slot: &Slot, generation: u64, e: RedisError) -> StoreError {
        use redis::{ErrorKind, ServerErrorKind};
        let connection_broken = broken(&e);
        // READONLY: a write reached a replica (a former primary). UNBLOCKED: a WAIT was cut
        // short because the primary turned replica. Both mean: find the primary again.
        let read_only = matches!(e.kind(), ErrorKind::Server(ServerErrorKind::ReadOnly))
            || e.code() == Some("UNBLOCKED");
        // The server's own min-replicas-to-write refusing writes: an outage, same connection.
        let no_replicas = e.code() == Some("NOREPLICAS");
        // A server that is starting, or a former master after a Sentinel fail-over, is an
        // outage too; the latter also needs a new connection to find the new master.
        let server_not_ready = matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
            ) | ErrorKind::MasterNameNotFoundBySentinel
                | ErrorKind::NoValidReplicasFoundBySentinel
                | ErrorKind::AuthenticationFailed
        );
        if connection_broken || server_not_ready || read_only || no_replicas {
            if e.is_timeout() && !read_only {
                // A slow answer says nothing of the other connections.
                let mut conn = slot.conn.write();
                if conn.as_ref().is_some_and(|p| p.generation == generation) {
                    *conn = None;
                }
                drop(conn);
                self.target.forget();
            } else if connection_broken || read_only {
                self.renew(
                    Some(generation),
                    true,
                    if read_only {
                        "a former Redis primary answered"
                    } else {
                        "a Redis connection broke"
                    },
                );
            }
            StoreError::Unavailable(format!("Redis: {e}"))
        } else {
            StoreError::Backend(format!("Redis: {e}"))
        }
    }

    /// Checks out a connection and runs `op` on it; on a broken connection, once more on a
    /// fresh one when `replay` allows. The checkout is returned for a `WAIT` on the same
    /// connection.
    async fn exec<'a, T, F, Fut>(
        &'a self,
        set: &'a Slots,
        replay: Replay,
        mut op: F,
    ) -> StoreResult<(T, Checkout<'a>)>
    where
        F: FnMut(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let mut last_try = false;
        loop {
            let c = self.checkout_from(set).await?;
            let Attempt { result, waited } = attempt(op(c.conn.clone())).await;
            let e = match result {
                Ok(v) => return Ok((v, c)),
                Err(e) => e,
            };
            let again = !last_try
                && broken(&e)
                && match replay {
                    Replay::Read => !e.is_timeout(),
                    Replay::Write => !waited,
                };
            let message = e.to_string();
            let err = c.fail(e);
            if !again {
                return Err(err);
            }
            tracing::debug!(error = %message, unsent = !waited,
                "Redis connection found broken: running the command again on a fresh one");
            last_try = true;
        }
    }

    /// Drops every connection (the next request of each slot reconnects).
    fn drop_all(&self) {
        self.renew(None, true, "the Sentinels name another Redis primary");
    }

    /// With Sentinel: checks every [`PRIMARY_CHECK`] that the Sentinels still name the
    /// primary the connections go to, and drops them all when they name another. Ends
    /// when the pool is dropped.
    fn spawn_primary_watch(pool: &Arc<RedisPool>) {
        let Target::Sentinel(sentinels) = &pool.target else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let sentinels = sentinels.clone();
        let weak = Arc::downgrade(pool);
        runtime.spawn(async move {
            let mut check = PrimaryCheck::new(&sentinels);
            let mut tick = tokio::time::interval(PRIMARY_CHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                // Each Sentinel is asked within the backend timeout.
                if let Some((was, now)) = check.moved(&sentinels).await {
                    tracing::warn!(
                        %was, %now, master = sentinels.master_name(),
                        "the Sentinels name another Redis primary: reconnecting"
                    );
                    pool.drop_all();
                }
            }
        });
    }

    pub fn connected(&self) -> u64 {
        let current = self.generation.load(Ordering::Acquire);
        let count = |set: &Slots| {
            set.slots
                .iter()
                .filter(|s| {
                    s.conn
                        .read()
                        .as_ref()
                        .is_some_and(|p| p.generation >= current)
                })
                .count()
        };
        (count(&self.shared) + count(&self.waited)) as u64
    }
}

/// Counts a request in flight on a set of slots until dropped.
struct InFlight<'a>(&'a Slots);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct RedisStore {
    pool: Arc<RedisPool>,
    scripts: Scripts,
    settings: StoreSettings,
    /// `DKN_AUTH_REDIS_MIN_REPLICAS`: replicas that must acknowledge an ending.
    min_replicas: u32,
    /// `DKN_AUTH_BACKEND_TIMEOUT_MS`: the budget an ending and its `WAIT` share.
    timeout: Duration,
    /// Whether the last waited ending lacked acknowledgements: logged once per change.
    replicas_short: std::sync::atomic::AtomicBool,
}

/// What a waited write was, for the 503 message.
#[derive(Clone, Copy)]
pub(super) enum Ending {
    Delete,
    Rotation,
    IdentifierDelete,
}

impl Ending {
    pub(super) fn what(self) -> &'static str {
        match self {
            Ending::Delete => "session deletion",
            Ending::Rotation => "session rotation",
            Ending::IdentifierDelete => "identifier deletion",
        }
    }
}

pub(super) struct Keys {
    pub(super) session: String,
    pub(super) tombstone: String,
    pub(super) index: Option<String>,
}

/// `<prefix>{<group>}:`: the start of every key of one group (one hash tag, one slot).
pub(super) fn group_prefix(prefix: &str, group: &str) -> String {
    format!("{prefix}{{{group}}}:")
}

pub(super) fn keys_of(prefix: &str, sid: &Sid) -> Keys {
    let p = group_prefix(prefix, sid.group());
    Keys {
        session: format!("{p}s:{sid}"),
        tombstone: format!("{p}t:{sid}"),
        index: sid.identifier().map(|_| format!("{p}i")),
    }
}

impl RedisStore {
    pub fn new(
        pool: RedisPool,
        settings: StoreSettings,
        min_replicas: u32,
        timeout: Duration,
    ) -> Self {
        let pool = Arc::new(pool);
        RedisPool::spawn_primary_watch(&pool);
        RedisStore {
            pool,
            scripts: Scripts::load(),
            settings,
            min_replicas,
            timeout,
            replicas_short: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn group_prefix(&self, group: &str) -> String {
        group_prefix(&self.settings.prefix, group)
    }

    fn keys(&self, sid: &Sid) -> Keys {
        keys_of(&self.settings.prefix, sid)
    }

    /// Runs a writing script (retried only when provably unsent).
    async fn run(&self, inv: Call<'_>) -> StoreResult<Vec<Value>> {
        self.run_on(&self.pool.shared, &inv).await.map(|(r, _)| r)
    }

    async fn run_on<'a>(
        &'a self,
        set: &'a Slots,
        inv: &Call<'_>,
    ) -> StoreResult<(Vec<Value>, Checkout<'a>)> {
        self.pool
            .exec(set, Replay::Write, |mut conn| async move {
                inv.invoke_async::<Vec<Value>>(&mut conn).await
            })
            .await
    }

    /// Runs a script that ends or moves a session. With `min_replicas` > 0 it runs on a
    /// waited connection and is followed there by `WAIT`: success only once enough replicas
    /// have the change. `ok` says whether the reply is a success (a refused rotation changed
    /// nothing and answers as it is).
    async fn run_ending(
        &self,
        inv: Call<'_>,
        ending: Ending,
        ok: impl Fn(&[Value]) -> bool,
    ) -> StoreResult<Vec<Value>> {
        if self.min_replicas == 0 {
            return self.run(inv).await;
        }
        let start = Instant::now();
        let (r, mut c) = self.run_on(&self.pool.waited, &inv).await?;
        if ok(&r) {
            self.wait_replicas(&mut c, start, self.timeout, ending)
                .await?;
        }
        Ok(r)
    }

    /// [`Self::wait_for_replicas`], logging once when endings start (and stop) lacking
    /// acknowledgements.
    async fn wait_replicas(
        &self,
        c: &mut Checkout<'_>,
        start: Instant,
        budget: Duration,
        ending: Ending,
    ) -> StoreResult<()> {
        let r = self.wait_for_replicas(c, start, budget, ending).await;
        match &r {
            Err(StoreError::NotReplicated(m)) => {
                if !self.replicas_short.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %m, min_replicas = self.min_replicas,
                        "endings are not acknowledged by enough Redis replicas: they answer 503");
                }
            }
            Ok(()) => {
                if self.replicas_short.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        min_replicas = self.min_replicas,
                        "endings are acknowledged by enough Redis replicas again"
                    );
                }
            }
            Err(_) => {}
        }
        r
    }

    /// `WAIT min_replicas <what is left of the budget>` on the connection that wrote.
    async fn wait_for_replicas(
        &self,
        c: &mut Checkout<'_>,
        start: Instant,
        budget: Duration,
        ending: Ending,
    ) -> StoreResult<()> {
        let n = self.min_replicas;
        // Redis notices a WAIT's timeout on its next event-loop turn, up to 1/hz (100 ms at
        // the default hz 10) late: ask for less than what is left, and still guard the reply
        // here so the answer is this one, not the request's own time limit.
        let left = budget.saturating_sub(start.elapsed());
        let margin = (Duration::from_millis(120) + budget / 10).min(budget / 2);
        // WAIT with 0 ms would block for ever.
        let wait_ms = millis(left.saturating_sub(margin)).max(1);
        let guard = left.saturating_sub(Duration::from_millis(10));
        let mut wait_cmd = redis::cmd("WAIT");
        wait_cmd.arg(n).arg(wait_ms);
        let wait = wait_cmd.query_async::<i64>(&mut c.conn);
        let acked = match tokio::time::timeout(guard, wait).await {
            Ok(r) => r.map_err(|e| c.fail(e))?,
            Err(_) => {
                return Err(StoreError::NotReplicated(format!(
                    "the {} was applied on the Redis primary, but its WAIT for the {n} replica(s) \
                     required by DKN_AUTH_REDIS_MIN_REPLICAS did not answer within {} ms; it is \
                     not known to be durable and may be undone by a fail-over",
                    ending.what(),
                    millis(guard)
                )))
            }
        };
        if acked >= i64::from(n) {
            return Ok(());
        }
        // Say why: a primary without replicas is a setting mistake, not an outage.
        let rest = budget
            .saturating_sub(start.elapsed())
            .saturating_sub(Duration::from_millis(10));
        let role_cmd = redis::cmd("ROLE");
        let role = role_cmd.query_async::<redis::Role>(&mut c.conn);
        let connected = match tokio::time::timeout(rest, role).await {
            Ok(Ok(redis::Role::Primary { replicas, .. })) => {
                format!("; the primary has {} replica(s) connected", replicas.len())
            }
            _ => String::new(),
        };
        Err(StoreError::NotReplicated(format!(
            "the {} was applied on the Redis primary, but only {acked} of the {n} replica(s) \
             required by DKN_AUTH_REDIS_MIN_REPLICAS acknowledged it within {wait_ms} ms{connected}; \
             it is not durable and may be undone by a fail-over",
            ending.what()
        )))
    }

    pub fn pool_in_use(&self) -> u64 {
        self.pool.connected()
    }

    pub async fn ping(&self) -> StoreResult<()> {
        self.pool
            .exec(&self.pool.shared, Replay::Read, |mut conn| async move {
                redis::cmd("PING").query_async::<String>(&mut conn).await
            })
            .await
            .map(|_| ())
    }

    pub async fn get(&self, sid: &Sid) -> StoreResult<Option<Session>> {
        let k = self.keys(sid);
        // Two plain commands in one round trip cost Redis less than a script. If the key
        // expires between them, HGETALL finds nothing and the session reads as missing.
        let mut pipe = redis::pipe();
        pipe.cmd("PTTL")
            .arg(&k.session)
            .cmd("HGETALL")
            .arg(&k.session);
        let pipe = &pipe;
        let ((ttl, v), _): ((Value, Vec<Value>), _) = self
            .pool
            .exec(&self.pool.shared, Replay::Read, |mut conn| async move {
                pipe.query_async(&mut conn).await
            })
            .await?;
        session_of(&ttl, v)
    }

    pub async fn put(
        &self,
        sid: &Sid,
        fields: Fields,
        ttl: Duration,
        cond: Condition,
    ) -> StoreResult<Written> {
        let k = self.keys(sid);
        let inv = put_call(&self.scripts, &k, sid, &fields, ttl, cond);
        put_reply(&self.run(inv).await?)
    }

    pub async fn patch(
        &self,
        sid: &Sid,
        patch: Patch,
        ttl: Duration,
        if_match: Option<u64>,
    ) -> StoreResult<u64> {
        let k = self.keys(sid);
        let inv = patch_call(&self.scripts, &k, sid, &patch, ttl, if_match);
        patch_reply(&self.run(inv).await?)
    }

    pub async fn delete(&self, sid: &Sid, if_match: Option<u64>) -> StoreResult<bool> {
        let k = self.keys(sid);
        let inv = delete_call(
            &self.scripts,
            &k,
            sid,
            self.settings.tombstone_ttl,
            if_match,
        );
        // A delete writes (the tombstone) unless its condition failed.
        let r = self
            .run_ending(inv, Ending::Delete, |r| matches!(status(r), Ok(0)))
            .await?;
        delete_reply(&r)
    }

    pub async fn rotate(
        &self,
        old: &Sid,
        rotation: Rotation,
        if_match: Option<u64>,
    ) -> StoreResult<Written> {
        let ko = self.keys(old);
        let kn = self.keys(&rotation.new_sid);
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
            .run_ending(inv, Ending::Rotation, |r| matches!(status(r), Ok(0)))
            .await?;
        rotate_reply(&r)
    }

    async fn delete_identifier(
        &self,
        conn: &MultiplexedConnection,
        id: Identifier,
        tomb_ms: u64,
    ) -> Result<u64, RedisError> {
        let prefix = self.group_prefix(id.as_str());
        let mut inv = self.scripts.delete_identifier.prepare_invoke();
        inv.key(format!("{prefix}i")).arg(&prefix).arg(tomb_ms);
        let mut conn = conn.clone();
        inv.invoke_async::<u64>(&mut conn).await
    }

    pub async fn delete_identifiers(&self, ids: &[Identifier]) -> StoreResult<u64> {
        let start = Instant::now();
        let tomb = millis(self.settings.tombstone_ttl);
        // Every script of the batch on one connection (pipelined, many in flight), so one
        // WAIT after them covers them all. Retried only if the batch never waited: then no
        // script of it was sent.
        let set = if self.min_replicas == 0 {
            &self.pool.shared
        } else {
            &self.pool.waited
        };
        let (counts, c): (Vec<u64>, _) = self
            .pool
            .exec(set, Replay::Write, |conn| async move {
                let calls: Vec<_> = ids
                    .iter()
                    .map(|id| self.delete_identifier(&conn, id.clone(), tomb))
                    .collect();
                stream::iter(calls).buffer_unordered(32).try_collect().await
            })
            .await?;
        if self.min_replicas > 0 {
            let mut c = c;
            // The HTTP layer sends at most 5,000 identifiers per call, each call within one
            // backend timeout.
            self.wait_replicas(&mut c, start, self.timeout, Ending::IdentifierDelete)
                .await?;
        }
        Ok(counts.into_iter().sum())
    }

    pub async fn missing_identifiers(&self, ids: &[Identifier]) -> StoreResult<Vec<Identifier>> {
        const CHUNK: usize = 5_000;
        let (missing, _) = self
            .pool
            .exec(&self.pool.shared, Replay::Read, |mut conn| async move {
                let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
                let now_ms = secs * 1000 + micros / 1000;
                let min = format!("({now_ms}");
                let mut missing = Vec::new();
                for chunk in ids.chunks(CHUNK) {
                    let mut pipe = redis::pipe();
                    for id in chunk {
                        pipe.cmd("ZCOUNT")
                            .arg(format!("{}i", self.group_prefix(id.as_str())))
                            .arg(&min)
                            .arg("+inf");
                    }
                    let counts: Vec<u64> = pipe.query_async(&mut conn).await?;
                    missing.extend(
                        chunk
                            .iter()
                            .zip(counts)
                            .filter(|(_, n)| *n == 0)
                            .map(|(id, _)| id.clone()),
                    );
                }
                Ok(missing)
            })
            .await?;
        Ok(missing)
    }
}

/// A session from the replies of `PTTL` and `HGETALL` of its hash.
pub(super) fn session_of(ttl: &Value, v: Vec<Value>) -> StoreResult<Option<Session>> {
    let ttl = int(ttl)?;
    if ttl < 0 {
        return Ok(None);
    }
    let mut it = v.into_iter();
    let mut fields = Fields::new();
    let mut version = None;
    while let (Some(f), Some(val)) = (it.next(), it.next()) {
        let f = text(f)?;
        let val = text(val)?;
        if let Some(key) = f.strip_prefix("d:") {
            fields.insert(key.to_owned(), val);
        } else if f == "v" {
            version = val.parse().ok();
        }
    }
    // A hash without a version is not one of ours (or a half-expired race): treat as missing.
    Ok(version.map(|version| Session {
        version,
        fields,
        ttl: Duration::from_millis(u64::try_from(ttl).unwrap_or(0)),
    }))
}

/// A script call: `EVALSHA` with its keys and arguments, the script loaded on `NOSCRIPT`.
/// Unlike redis-rs's `ScriptInvocation` it gives its command, which the Cluster driver
/// pipelines with the `WAIT` that must run on the same node connection.
pub(super) struct Call<'a> {
    pub(super) script: &'a Script,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl<'a> Call<'a> {
    pub(super) fn new(script: &'a Script) -> Self {
        Call {
            script,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }

    pub(super) fn key(&mut self, key: impl redis::ToRedisArgs) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    pub(super) fn arg(&mut self, arg: impl redis::ToRedisArgs) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    pub(super) fn evalsha(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash())
            .arg(self.keys.len())
            .arg(&*self.keys)
            .arg(&*self.args);
        cmd
    }

    pub(super) async fn invoke_async<T: redis::FromRedisValue>(
        &self,
        con: &mut impl redis::aio::ConnectionLike,
    ) -> redis::RedisResult<T> {
        match self.evalsha().query_async(con).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.script.load_async(con).await?;
                self.evalsha().query_async(con).await
            }
            r => r,
        }
    }
}

pub(super) fn flag(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

/// `put.lua` for one sid (shared with the Cluster driver, as are the other `*_call`s).
pub(super) fn put_call<'a>(
    scripts: &'a Scripts,
    k: &Keys,
    sid: &Sid,
    fields: &Fields,
    ttl: Duration,
    cond: Condition,
) -> Call<'a> {
    let (mode, expected) = match cond {
        Condition::Unconditional => ("none", String::new()),
        Condition::CreateOnly => ("create", String::new()),
        Condition::IfMatch(v) => ("match", v.to_string()),
    };
    let mut inv = Call::new(&scripts.put);
    inv.key(&k.session)
        .key(&k.tombstone)
        .key(k.index.as_ref().unwrap_or(&k.session))
        .arg(mode)
        .arg(expected)
        .arg(millis(ttl))
        .arg(sid.as_str())
        .arg(flag(k.index.is_some()))
        .arg(fields.len());
    for (key, val) in fields {
        inv.arg(key).arg(val);
    }
    inv
}

pub(super) fn put_reply(r: &[Value]) -> StoreResult<Written> {
    match status(r)? {
        0 => Ok(Written {
            version: uint(r.get(1))?,
            created: int(r.get(2).unwrap_or(&Value::Int(0)))? == 1,
        }),
        code => Err(outcome(code, r)),
    }
}

pub(super) fn patch_call<'a>(
    scripts: &'a Scripts,
    k: &Keys,
    sid: &Sid,
    patch: &Patch,
    ttl: Duration,
    if_match: Option<u64>,
) -> Call<'a> {
    let mut inv = Call::new(&scripts.patch);
    inv.key(&k.session)
        .key(&k.tombstone)
        .key(k.index.as_ref().unwrap_or(&k.session))
        .arg(if_match.map(|v| v.to_string()).unwrap_or_default())
        .arg(millis(ttl))
        .arg(sid.as_str())
        .arg(flag(k.index.is_some()))
        .arg(patch.set.len());
    for (key, val) in &patch.set {
        inv.arg(key).arg(val);
    }
    inv.arg(patch.remove.len());
    for key in &patch.remove {
        inv.arg(key);
    }
    inv.arg(patch.expect.len());
    for (key, val) in &patch.expect {
        // Stored JSON text is never empty: "" stands for an absent key.
        inv.arg(key).arg(val.as_deref().unwrap_or(""));
    }
    inv
}

pub(super) fn patch_reply(r: &[Value]) -> StoreResult<u64> {
    match status(r)? {
        0 => uint(r.get(1)),
        code => Err(outcome(code, r)),
    }
}

pub(super) fn delete_call<'a>(
    scripts: &'a Scripts,
    k: &Keys,
    sid: &Sid,
    tombstone_ttl: Duration,
    if_match: Option<u64>,
) -> Call<'a> {
    let mut inv = Call::new(&scripts.delete);
    inv.key(&k.session)
        .key(&k.tombstone)
        .key(k.index.as_ref().unwrap_or(&k.session))
        .arg(millis(tombstone_ttl))
        .arg(sid.as_str())
        .arg(flag(k.index.is_some()))
        .arg(if_match.map(|v| v.to_string()).unwrap_or_default());
    inv
}

pub(super) fn delete_reply(r: &[Value]) -> StoreResult<bool> {
    match status(r)? {
        0 => Ok(int(r.get(1).unwrap_or(&Value::Int(0)))? == 1),
        code => Err(outcome(code, r)),
    }
}

/// What a rotation writes: the patch of the stored session (or the given data), and the
/// old session's grace period and marks for a soft rotation (0 ms = tombstone it).
pub(super) struct RotateArgs<'r> {
    pub(super) mode: &'static str,
    pub(super) set: &'r Fields,
    pub(super) remove: &'r [String],
    pub(super) keep_ms: u64,
    pub(super) keep_set: &'r Fields,
}

static NO_FIELDS: Fields = Fields::new();

impl<'r> RotateArgs<'r> {
    pub(super) fn of(rotation: &'r Rotation) -> Self {
        let (mode, set, remove): (&'static str, &Fields, &[String]) = match &rotation.source {
            RotateSource::Stored(p) => ("stored", &p.set, &p.remove),
            RotateSource::Given(f) => ("given", f, &[]),
        };
        let (keep_ms, keep_set) = match &rotation.keep_old {
            Some(k) => (millis(k.ttl).max(1), &k.set),
            None => (0, &NO_FIELDS),
        };
        RotateArgs {
            mode,
            set,
            remove,
            keep_ms,
            keep_set,
        }
    }

    /// Set count, set pairs, remove count, remove keys, keep count, keep pairs.
    pub(super) fn push_lists(&self, inv: &mut Call<'_>) {
        inv.arg(self.set.len());
        for (key, val) in self.set {
            inv.arg(key).arg(val);
        }
        inv.arg(self.remove.len());
        for key in self.remove {
            inv.arg(key);
        }
        inv.arg(self.keep_set.len());
        for (key, val) in self.keep_set {
            inv.arg(key).arg(val);
        }
    }
}

/// `rotate.lua`: both sids in one atomic step (one Redis, or one Cluster slot).
pub(super) fn rotate_call<'a>(
    scripts: &'a Scripts,
    ko: &Keys,
    kn: &Keys,
    old: &Sid,
    rotation: &Rotation,
    tombstone_ttl: Duration,
    if_match: Option<u64>,
) -> Call<'a> {
    let a = RotateArgs::of(rotation);
    let mut inv = Call::new(&scripts.rotate);
    inv.key(&ko.session)
        .key(&ko.tombstone)
        .key(ko.index.as_ref().unwrap_or(&ko.session))
        .key(&kn.session)
        .key(&kn.tombstone)
        .key(kn.index.as_ref().unwrap_or(&kn.session))
        .arg(a.mode)
        .arg(millis(rotation.ttl))
        .arg(old.as_str())
        .arg(rotation.new_sid.as_str())
        .arg(millis(tombstone_ttl))
        .arg(a.keep_ms)
        .arg(flag(ko.index.is_some()))
        .arg(flag(kn.index.is_some()));
    a.push_lists(&mut inv);
    inv.arg(if_match.map(|v| v.to_string()).unwrap_or_default());
    inv
}

pub(super) fn rotate_reply(r: &[Value]) -> StoreResult<Written> {
    match status(r)? {
        0 => Ok(Written {
            version: uint(r.get(1))?,
            created: true,
        }),
        code => Err(outcome(code, r)),
    }
}

pub(super) fn int(v: &Value) -> StoreResult<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(StoreError::Backend(format!(
            "expected an integer from Redis, got {other:?}"
        ))),
    }
}

pub(super) fn uint(v: Option<&Value>) -> StoreResult<u64> {
    let i = int(v.ok_or_else(|| StoreError::Backend("short reply from Redis".into()))?)?;
    u64::try_from(i).map_err(|_| StoreError::Backend(format!("negative number {i} from Redis")))
}

pub(super) fn text(v: Value) -> StoreResult<String> {
    match v {
        Value::BulkString(b) => {
            String::from_utf8(b).map_err(|_| StoreError::Backend("non-UTF-8 value in Redis".into()))
        }
        Value::SimpleString(s) => Ok(s),
        other => Err(StoreError::Backend(format!(
            "expected a string from Redis, got {other:?}"
        ))),
    }
}

pub(super) fn status(r: &[Value]) -> StoreResult<i64> {
    int(r
        .first()
        .ok_or_else(|| StoreError::Backend("empty reply from Redis".into()))?)
}

/// The scripts' shared failure codes: 1 gone, 2 precondition (+ current version or -1),
/// 3 not found, 4 too many keys (+ count), 5 conflict (+ current version, keys), 6 already
/// soft-rotated (+ next sid).
pub(super) fn outcome(code: i64, r: &[Value]) -> StoreError {
    match code {
        1 => StoreError::Gone,
        2 => StoreError::Precondition {
            current: r
                .get(1)
                .and_then(|v| int(v).ok())
                .and_then(|v| u64::try_from(v).ok()),
        },
        3 => StoreError::NotFound,
        4 => StoreError::TooManyKeys {
            would: r
                .get(1)
                .and_then(|v| int(v).ok())
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(0),
        },
        5 => match (r.get(1).map(int), r.get(2)) {
            (Some(Ok(current)), Some(Value::Array(keys))) => {
                match keys
                    .iter()
                    .cloned()
                    .map(text)
                    .collect::<StoreResult<Vec<_>>>()
                {
                    Ok(keys) => StoreError::Conflict {
                        keys,
                        current: u64::try_from(current).unwrap_or(0),
                    },
                    Err(e) => e,
                }
            }
            _ => StoreError::Backend("conflicting keys missing from reply".into()),
        },
        6 => match r.get(1).cloned().map(text) {
            Some(Ok(new_sid)) => StoreError::AlreadyRotated { new_sid },
            _ => StoreError::Backend("next sid missing from reply".into()),
        },
        other => StoreError::Backend(format!("unknown script status {other}")),
    }
}

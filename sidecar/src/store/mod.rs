//! The session store interface and its three drivers.
//!
//! Every driver implements the same operations with the same outcomes; `tests/behaviour.rs`
//! runs one suite against all of them.

pub mod cluster;
pub mod memory;
pub mod postgres;
pub mod redis;
pub mod sentinel;

use std::time::Duration;

use crate::model::{Condition, Fields, Identifier, Patch, Rotation, Session, Sid, Written};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("session not found")]
    NotFound,
    #[error("session was deleted; writes to it are refused")]
    Gone,
    #[error("version condition failed")]
    Precondition { current: Option<u64> },
    /// A soft rotation (`keep_old`) of a sid that an earlier soft rotation already moved:
    /// nothing was written; the session lives on at `new_sid`, the first rotation's (409).
    #[error("this session was already rotated (softly) to another sid; nothing was written")]
    AlreadyRotated { new_sid: String },
    /// A `PATCH` whose `expect`/`expect_absent` keys changed since the client read them:
    /// nothing was written (409). `keys` in sorted order.
    #[error("keys changed since they were read: {}; nothing was written", keys.join(", "))]
    Conflict { keys: Vec<String>, current: u64 },
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// An ending was written on the Redis primary, but fewer replicas than
    /// `DKN_AUTH_REDIS_MIN_REPLICAS` acknowledged it in time (503). Not an outage: the
    /// backend answered.
    #[error("not durable: {0}")]
    NotReplicated(String),
    #[error("backend answered unexpectedly: {0}")]
    Backend(String),
    /// The write would leave the session with more than [`MAX_SESSION_KEYS`] keys (400).
    #[error("the session would hold {would} keys, more than the {MAX_SESSION_KEYS} a session may hold; nothing was changed")]
    TooManyKeys { would: u64 },
}

/// Most data keys one session may hold after a `PATCH` or a rotation (a `PUT` names at most
/// as many): bounds what one request makes the backend copy or compare.
pub const MAX_SESSION_KEYS: usize = 1_000;

pub type StoreResult<T> = Result<T, StoreError>;

/// Settings every driver shares.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub prefix: String,
    pub tombstone_ttl: Duration,
}

/// One of the drivers. An enum rather than a trait object: the request path stays
/// monomorphic and no boxing of futures is needed.
pub enum Store {
    Memory(memory::MemoryStore),
    Redis(Box<redis::RedisStore>),
    RedisCluster(Box<cluster::ClusterStore>),
    Postgres(postgres::PgStore),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Memory($s) => $e,
            Store::Redis($s) => $e,
            Store::RedisCluster($s) => $e,
            Store::Postgres($s) => $e,
        }
    };
}

impl Store {
    pub fn driver_name(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) | Store::RedisCluster(_) => "redis",
            Store::Postgres(_) => "db",
        }
    }

    pub async fn ping(&self) -> StoreResult<()> {
        dispatch!(self, s => s.ping().await)
    }

    pub async fn get(&self, sid: &Sid) -> StoreResult<Option<Session>> {
        dispatch!(self, s => s.get(sid).await)
    }

    pub async fn put(
        &self,
        sid: &Sid,
        fields: Fields,
        ttl: Duration,
        cond: Condition,
    ) -> StoreResult<Written> {
        dispatch!(self, s => s.put(sid, fields, ttl, cond).await)
    }

    pub async fn patch(
        &self,
        sid: &Sid,
        patch: Patch,
        ttl: Duration,
        if_match: Option<u64>,
    ) -> StoreResult<u64> {
        dispatch!(self, s => s.patch(sid, patch, ttl, if_match).await)
    }

    /// Deletes and tombstones; true when a live session was removed. With `if_match`, only
    /// a live session at that version is deleted (else `Precondition`, or `Gone` for a
    /// tombstone).
    pub async fn delete(&self, sid: &Sid, if_match: Option<u64>) -> StoreResult<bool> {
        dispatch!(self, s => s.delete(sid, if_match).await)
    }

    /// With `if_match`, the old session must be live at that version.
    pub async fn rotate(
        &self,
        old: &Sid,
        rotation: Rotation,
        if_match: Option<u64>,
    ) -> StoreResult<Written> {
        if &rotation.new_sid == old {
            return Err(StoreError::Precondition { current: None });
        }
        dispatch!(self, s => s.rotate(old, rotation, if_match).await)
    }

    /// Deletes every live session of these identifiers; returns how many.
    pub async fn delete_identifiers(&self, ids: &[Identifier]) -> StoreResult<u64> {
        dispatch!(self, s => s.delete_identifiers(ids).await)
    }

    /// The identifiers without any live session, in request order.
    pub async fn missing_identifiers(&self, ids: &[Identifier]) -> StoreResult<Vec<Identifier>> {
        dispatch!(self, s => s.missing_identifiers(ids).await)
    }

    /// Connections of the backend pool in use, for `/metrics`.
    pub fn pool_in_use(&self) -> u64 {
        match self {
            Store::Memory(_) => 0,
            Store::Redis(s) => s.pool_in_use(),
            Store::RedisCluster(s) => s.pool_in_use(),
            Store::Postgres(s) => s.pool_in_use(),
        }
    }
}

/// Runs one backend call under a hard time limit: late is an outage (503), like a refused
/// connection.
pub async fn within<T>(
    limit: Duration,
    op: impl std::future::Future<Output = StoreResult<T>>,
) -> StoreResult<T> {
    match tokio::time::timeout(limit, op).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Unavailable(format!(
            "the backend did not answer within {} ms",
            millis(limit)
        ))),
    }
}

/// Milliseconds, saturating, for backends that count in them.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Opens the configured driver. Never waits for the backend: a backend that is down at
/// start makes `/readyz` fail until it answers, like an outage later on.
pub fn open(settings: &crate::config::Settings) -> Result<Store, String> {
    use crate::config::Driver;
    let common = StoreSettings {
        prefix: settings.prefix.clone(),
        tombstone_ttl: settings.tombstone_ttl,
    };
    match settings.driver {
        Driver::Memory => Ok(Store::Memory(memory::MemoryStore::new(common))),
        Driver::Redis => {
            let ca = match &settings.redis_ca_file {
                Some(path) => Some(
                    std::fs::read(path)
                        .map_err(|e| format!("DKN_AUTH_REDIS_CA_FILE={path}: cannot read: {e}"))?,
                ),
                None => None,
            };
            if cluster::is_cluster_uri(&settings.redis_uri) {
                let target = cluster::ClusterTarget::from_uri(
                    &settings.redis_uri,
                    settings.redis_password.as_deref(),
                    ca,
                    settings.backend_timeout,
                )
                .map_err(|e| format!("DKN_AUTH_REDIS_URI is invalid: {e}"))?;
                // A Cluster client cannot work without a node to ask for the slot map; a
                // URI none of whose nodes accepts a connection is a mistake, not an outage.
                target
                    .check_reachable(settings.backend_timeout)
                    .map_err(|e| format!("DKN_AUTH_REDIS_URI: {e}"))?;
                return Ok(Store::RedisCluster(Box::new(cluster::ClusterStore::new(
                    target,
                    common,
                    settings.redis_min_replicas,
                    settings.redis_max_conn,
                    settings.backend_timeout,
                ))));
            }
            let target = redis::Target::from_uri(
                &settings.redis_uri,
                settings.redis_password.as_deref(),
                ca,
                settings.backend_timeout,
            )
            .map_err(|e| format!("DKN_AUTH_REDIS_URI is invalid: {e}"))?;
            let pool = redis::RedisPool::new(
                target,
                settings.redis_max_conn,
                settings.backend_timeout,
                settings.redis_min_replicas,
            );
            Ok(Store::Redis(Box::new(redis::RedisStore::new(
                pool,
                common,
                settings.redis_min_replicas,
                settings.backend_timeout,
            ))))
        }
        Driver::Db => {
            let pg = postgres::PgSettings {
                uri: settings.db_uri.clone().unwrap_or_default(),
                password: settings.db_password.clone(),
                max_conn: settings.db_max_conn,
                table: settings.db_table.clone(),
                unlogged: settings.db_unlogged,
                timeout: settings.backend_timeout,
                ca_file: settings.db_ca_file.clone(),
                synchronous_commit: settings.db_synchronous_commit,
            };
            let store = postgres::PgStore::new(&pg, common)?;
            store.spawn_migration(pg.unlogged);
            store.spawn_gc(settings.db_gc_interval);
            Ok(Store::Postgres(store))
        }
    }
}

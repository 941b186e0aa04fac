//! The PostgreSQL driver. One table holds sessions and tombstones (`data IS NULL`), with a
//! version column, an expiry column and a partial index on the Odoo 18 identifier. Every
//! single-session write is one statement; rotation is one transaction. Expired rows are
//! invisible at once and deleted in batches by whichever sidecar holds an advisory lock.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;

use super::{millis, StoreError, StoreResult, StoreSettings, MAX_SESSION_KEYS};
use crate::model::{
    fields_from_object, write_object, Condition, Fields, Identifier, Patch, RotateSource, Rotation,
    Session, Sid, Written,
};

const SCHEMA_VERSION: i32 = 1;
const GC_BATCH: i64 = 1000;

#[derive(Debug, Clone)]
pub struct PgSettings {
    pub uri: String,
    pub password: Option<String>,
    pub max_conn: usize,
    pub table: String,
    pub unlogged: bool,
    pub timeout: Duration,
    pub ca_file: Option<String>,
    /// false (`DKN_AUTH_DB_SYNCHRONOUS_COMMIT=off`): data-only writes do not wait for the
    /// WAL flush.
    pub synchronous_commit: bool,
}

/// SQL text with the table names filled in once at start.
struct Sql {
    get: String,
    put_create: String,
    put_any: String,
    put_match: String,
    patch_quick: String,
    patch: String,
    classify: String,
    delete: String,
    delete_match: String,
    lock_pair: String,
    rotate_insert_stored: String,
    rotate_insert_given: String,
    keep_old: String,
    delete_identifiers: String,
    missing: String,
    gc: String,
}

/// A condition that is always true and, when evaluated, makes the statement's own implicit
/// transaction commit without waiting for the WAL flush (`SET LOCAL synchronous_commit =
/// off`, statement-level: no extra round trip). With `DKN_AUTH_DB_SYNCHRONOUS_COMMIT=off`
/// only the writes that change data carry it (puts, patches, TTL refreshes); writes that end
/// a session (delete, rotation, identifier revoke) keep the connection's setting, durable by
/// default. It sits in the condition that selects the row to write, so any row written has
/// evaluated it first.
const DATA_ONLY_COMMIT: &str = "set_config('synchronous_commit', 'off', true) IS NOT NULL";

impl Sql {
    /// `wait_for_flush`: false puts [`DATA_ONLY_COMMIT`] into the data-only writes.
    fn new(t: &str, wait_for_flush: bool) -> Self {
        let ttl = |p: &str| format!("now() + ({p}::float8 * interval '1 millisecond')");
        // "Changed" as on every driver: a key of `set` whose JSON text differs from the stored
        // one (jsonb's text keeps a number as written, so 1.0 -> 1 is a change).
        let changed = |data: &str, set: &str| {
            format!(
                "EXISTS (SELECT 1 FROM jsonb_each(({set}::text)::jsonb) e \
                 WHERE ({data} -> e.key)::text IS DISTINCT FROM e.value::text)"
            )
        };
        // The patched session's key count, for the bound. Only a `set` key the stored session
        // lacks can raise the count (stored sessions are within the bound), so the count over
        // the whole result is made only then, and is 0 otherwise: most patches (Odoo's saves,
        // TTL refreshes) set existing keys and walk no more than `set` itself.
        let key_count = |data: &str, set: &str, remove: &str| {
            format!(
                "CASE WHEN EXISTS (SELECT 1 FROM jsonb_object_keys(({set}::text)::jsonb) k \
                 WHERE NOT {data} ? k) \
                 THEN (SELECT count(*) FROM jsonb_object_keys(({data} || ({set}::text)::jsonb) \
                 - ({remove}::text[]))) ELSE 0 END"
            )
        };
        let quick = if wait_for_flush {
            String::new()
        } else {
            format!(" AND {DATA_ONLY_COMMIT}")
        };
        // An INSERT's row: `VALUES`, or a `SELECT` that can carry the condition.
        let new_row = |e: &str| {
            if wait_for_flush {
                format!("VALUES ($1, $2, $3, 1, ($4::text)::jsonb, {e})")
            } else {
                format!("SELECT $1, $2, $3, 1, ($4::text)::jsonb, {e} WHERE {DATA_ONLY_COMMIT}")
            }
        };
        Sql {
            get: format!(
                "SELECT version, data, (extract(epoch from expires_at - now()) * 1000)::bigint \
                 FROM {t} WHERE ns = $1 AND sid = $2 AND data IS NOT NULL AND expires_at > now()"
            ),
            put_create: format!(
                "INSERT INTO {t} AS s (ns, sid, ident, version, data, expires_at) {row} \
                 ON CONFLICT (ns, sid) DO UPDATE SET ident = EXCLUDED.ident, version = 1, \
                 data = EXCLUDED.data, expires_at = EXCLUDED.expires_at, next_sid = NULL \
                 WHERE s.expires_at <= now() RETURNING version",
                row = new_row(&ttl("$5"))
            ),
            put_any: format!(
                "INSERT INTO {t} AS s (ns, sid, ident, version, data, expires_at) {row} \
                 ON CONFLICT (ns, sid) DO UPDATE SET ident = EXCLUDED.ident, \
                 version = CASE WHEN s.data IS NULL OR s.expires_at <= now() THEN 1 ELSE s.version + 1 END, \
                 data = EXCLUDED.data, expires_at = EXCLUDED.expires_at, next_sid = NULL \
                 WHERE NOT (s.data IS NULL AND s.expires_at > now()) RETURNING version",
                row = new_row(&ttl("$5"))
            ),
            put_match: format!(
                "UPDATE {t} SET version = version + 1, data = ($3::text)::jsonb, expires_at = {e}, \
                 next_sid = NULL \
                 WHERE ns = $1 AND sid = $2 AND data IS NOT NULL AND expires_at > now() \
                 AND version = $5{quick} RETURNING version",
                e = ttl("$4")
            ),
            // The common patch: one `UPDATE` whose condition holds the version, the `expect`
            // conditions ($7 the values read, $8 the keys read as absent; both empty when
            // none was sent) and the key bound. Under concurrency PostgreSQL re-checks the
            // condition on the newest row before it writes, so the checks and the write are
            // one step. Every check over the row is a scalar subquery (a SubPlan, evaluated
            // again in that re-check): a top-level `NOT EXISTS` would become an anti-join,
            // which the re-check does not run again (increments were lost under
            // contention). No row: [`Sql::patch`] tells why.
            patch_quick: format!(
                "UPDATE {t} s SET data = (s.data || ($3::text)::jsonb) - ($4::text[]), \
                 version = s.version + CASE WHEN (s.data ?| ($4::text[])) OR {changed} \
                 THEN 1 ELSE 0 END, expires_at = {e} \
                 WHERE s.ns = $1 AND s.sid = $2 AND s.data IS NOT NULL AND s.expires_at > now() \
                 AND ($6::bigint IS NULL OR s.version = $6) \
                 AND NOT coalesce((SELECT true FROM jsonb_each(($7::text)::jsonb) x \
                 WHERE (s.data -> x.key)::text IS DISTINCT FROM x.value::text LIMIT 1), false) \
                 AND NOT (s.data ?| ($8::text[])) \
                 AND {keys} <= {MAX_SESSION_KEYS}{quick} RETURNING s.version",
                e = ttl("$5"),
                changed = changed("s.data", "$3"),
                keys = key_count("s.data", "$3", "$4"),
            ),
            // One statement: lock the live row, compute the result and its key count, write
            // only when within the bound. Answers (new version, key count): (NULL, NULL) when
            // no live row matched, (NULL, n) when n keys are over the bound.
            // The `expect` conditions ($7 the values read, $8 the keys read as absent) are
            // checked on the locked row: (NULL, n, keys, version) when some failed.
            patch: format!(
                "WITH cur AS (SELECT data, version, (data || ($3::text)::jsonb) - ($4::text[]) AS new \
                 FROM {t} WHERE ns = $1 AND sid = $2 AND data IS NOT NULL AND expires_at > now() \
                 AND ($6::bigint IS NULL OR version = $6) FOR UPDATE), \
                 exp AS (SELECT e.key AS k, e.value::text AS want FROM jsonb_each(($7::text)::jsonb) e \
                 UNION ALL SELECT a, NULL FROM unnest($8::text[]) a), \
                 bad AS (SELECT array_agg(exp.k) AS keys FROM cur, exp \
                 WHERE (cur.data -> exp.k)::text IS DISTINCT FROM exp.want), \
                 n AS (SELECT new, {keys} AS keys, \
                 (data ?| ($4::text[])) OR {changed} AS changed FROM cur), \
                 upd AS (UPDATE {t} s SET data = n.new, \
                 version = s.version + CASE WHEN n.changed THEN 1 ELSE 0 END, expires_at = {e} \
                 FROM n WHERE s.ns = $1 AND s.sid = $2 AND n.keys <= {MAX_SESSION_KEYS} \
                 AND (SELECT keys FROM bad) IS NULL{quick} RETURNING s.version) \
                 SELECT (SELECT version FROM upd), (SELECT keys FROM n), (SELECT keys FROM bad), \
                 (SELECT version FROM cur)",
                e = ttl("$5"),
                changed = changed("data", "$3"),
                keys = key_count("data", "$3", "$4"),
            ),
            classify: format!(
                "SELECT data IS NULL, version FROM {t} \
                 WHERE ns = $1 AND sid = $2 AND expires_at > now()"
            ),
            delete_match: format!(
                "UPDATE {t} SET ident = NULL, data = NULL, next_sid = NULL, expires_at = {e} \
                 WHERE ns = $1 AND sid = $2 AND data IS NOT NULL AND expires_at > now() \
                 AND version = $4 RETURNING 1",
                e = ttl("$3")
            ),
            delete: format!(
                "WITH old AS (SELECT data IS NOT NULL AND expires_at > now() AS live FROM {t} \
                 WHERE ns = $1 AND sid = $2 FOR UPDATE) \
                 INSERT INTO {t} AS s (ns, sid, ident, version, data, expires_at) \
                 VALUES ($1, $2, NULL, 0, NULL, {e}) \
                 ON CONFLICT (ns, sid) DO UPDATE SET ident = NULL, data = NULL, next_sid = NULL, \
                 expires_at = EXCLUDED.expires_at \
                 RETURNING coalesce((SELECT live FROM old), false)",
                e = ttl("$3")
            ),
            lock_pair: format!(
                "SELECT sid, data IS NULL, version, next_sid FROM {t} \
                 WHERE ns = $1 AND sid = ANY($2::text[]) AND expires_at > now() FOR UPDATE"
            ),
            rotate_insert_stored: format!(
                "INSERT INTO {t} AS s (ns, sid, ident, version, data, expires_at) \
                 SELECT $1, $3, $4, 1, (o.data || ($5::text)::jsonb) - ($6::text[]), {e} \
                 FROM {t} o WHERE o.ns = $1 AND o.sid = $2 \
                 AND o.data IS NOT NULL AND o.expires_at > now() \
                 ON CONFLICT (ns, sid) DO UPDATE SET ident = EXCLUDED.ident, version = 1, \
                 data = EXCLUDED.data, expires_at = EXCLUDED.expires_at, next_sid = NULL \
                 WHERE s.expires_at <= now() \
                 RETURNING version, (SELECT count(*) FROM jsonb_object_keys(s.data))",
                e = ttl("$7")
            ),
            rotate_insert_given: format!(
                "INSERT INTO {t} AS s (ns, sid, ident, version, data, expires_at) \
                 VALUES ($1, $2, $3, 1, ($4::text)::jsonb, {e}) \
                 ON CONFLICT (ns, sid) DO UPDATE SET ident = EXCLUDED.ident, version = 1, \
                 data = EXCLUDED.data, expires_at = EXCLUDED.expires_at, next_sid = NULL \
                 WHERE s.expires_at <= now() RETURNING version",
                e = ttl("$5")
            ),
            keep_old: format!(
                "UPDATE {t} SET data = data || ($3::text)::jsonb, next_sid = $5, \
                 version = version + CASE WHEN {changed} THEN 1 ELSE 0 END, expires_at = {e} \
                 WHERE ns = $1 AND sid = $2 AND data IS NOT NULL AND expires_at > now()",
                e = ttl("$4"),
                changed = changed("data", "$3"),
            ),
            delete_identifiers: format!(
                "WITH target AS (SELECT sid, expires_at > now() AS live FROM {t} \
                 WHERE ns = $1 AND ident = ANY($2::text[]) AND data IS NOT NULL FOR UPDATE), \
                 gone AS (UPDATE {t} s SET data = NULL, ident = NULL, next_sid = NULL, expires_at = {e} \
                 FROM target WHERE s.ns = $1 AND s.sid = target.sid RETURNING 1) \
                 SELECT count(*) FILTER (WHERE live) FROM target",
                e = ttl("$3")
            ),
            missing: format!(
                "SELECT u.i FROM unnest($2::text[]) WITH ORDINALITY AS u(i, n) \
                 WHERE NOT EXISTS (SELECT 1 FROM {t} s WHERE s.ns = $1 AND s.ident = u.i \
                 AND s.data IS NOT NULL AND s.expires_at > now()) ORDER BY u.n"
            ),
            gc: format!(
                "DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} \
                 WHERE expires_at < now() LIMIT {GC_BATCH} FOR UPDATE SKIP LOCKED))"
            ),
        }
    }
}

#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    sql: Arc<Sql>,
    table: Arc<str>,
    settings: StoreSettings,
    /// Set once this sidecar has created or checked the schema; until then every
    /// operation answers 503 (a newer schema it does not know stays unset for good).
    schema_ready: Arc<AtomicBool>,
}

/// tokio-postgres prints "db error" alone; say what the server said.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("PostgreSQL {}: {}", db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(src) => format!("PostgreSQL: {e}: {src}"),
            None => format!("PostgreSQL: {e}"),
        },
    }
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    if e.is_closed() || e.as_db_error().is_none() {
        return StoreError::Unavailable(describe(&e));
    }
    match e.code() {
        Some(c)
            if *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::READ_ONLY_SQL_TRANSACTION
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::UNDEFINED_TABLE =>
        {
            StoreError::Unavailable(describe(&e))
        }
        _ => StoreError::Backend(describe(&e)),
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL pool: {e}"))
}

fn tls_config(ca_file: Option<&str>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("DKN_AUTH_DB_CA_FILE {path}: {e}"))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("DKN_AUTH_DB_CA_FILE {path}: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("DKN_AUTH_DB_CA_FILE {path}: {e}"))?;
        }
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl PgStore {
    pub fn new(pg: &PgSettings, settings: StoreSettings) -> Result<Self, String> {
        // Checked at start already; again here because the name goes into SQL text.
        if !crate::config::valid_table_name(&pg.table) {
            return Err(format!(
                "DKN_AUTH_DB_TABLE {:?}: expected 1 to 48 characters of [a-z0-9_], not starting with a digit",
                pg.table
            ));
        }
        let mut config = tokio_postgres::Config::from_str(&pg.uri)
            .map_err(|e| format!("DKN_AUTH_DB_URI: not a PostgreSQL URI: {e}"))?;
        if config.get_password().is_none() {
            if let Some(pw) = &pg.password {
                config.password(pw);
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(pg.timeout);
        }
        config.application_name("odoo-session-sidecar");
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(pg.ca_file.as_deref())?);
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pg.max_conn.max(1))
            .wait_timeout(Some(pg.timeout))
            .create_timeout(Some(pg.timeout))
            .recycle_timeout(Some(pg.timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| format!("PostgreSQL pool: {e}"))?;
        Ok(PgStore {
            pool,
            sql: Arc::new(Sql::new(&pg.table, pg.synchronous_commit)),
            table: pg.table.as_str().into(),
            settings,
            schema_ready: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Creates or migrates the schema; several sidecars starting at once take turns.
    pub async fn migrate(&self, unlogged: bool) -> StoreResult<()> {
        let t = &*self.table;
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            &[&format!("{t}:migrate")],
        )
        .await
        .map_err(pg_err)?;
        let kind = if unlogged { "UNLOGGED " } else { "" };
        // `{t}_leases`, made by sidecars that still had the lease API, is no longer created
        // nor read; an existing one is left alone (docs/sidecar.md: it may be dropped).
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {t}_meta (key text PRIMARY KEY, value text NOT NULL);
             CREATE {kind}TABLE IF NOT EXISTS {t} (
               ns text NOT NULL,
               sid text NOT NULL,
               ident text,
               version bigint NOT NULL,
               data jsonb,
               expires_at timestamptz NOT NULL,
               PRIMARY KEY (ns, sid));
             -- Added in place (older sidecars ignore it): the sid a soft rotation moved
             -- the session to.
             ALTER TABLE {t} ADD COLUMN IF NOT EXISTS next_sid text;
             CREATE INDEX IF NOT EXISTS {t}_ident ON {t} (ns, ident)
               WHERE ident IS NOT NULL AND data IS NOT NULL;
             CREATE INDEX IF NOT EXISTS {t}_expiry ON {t} (expires_at);"
        ))
        .await
        .map_err(pg_err)?;
        let found: Option<String> = tx
            .query_opt(
                &format!("SELECT value FROM {t}_meta WHERE key = 'schema'"),
                &[],
            )
            .await
            .map_err(pg_err)?
            .map(|r| r.get(0));
        match found.as_deref().map(str::parse::<i32>) {
            None => {
                tx.execute(
                    &format!("INSERT INTO {t}_meta (key, value) VALUES ('schema', $1)"),
                    &[&SCHEMA_VERSION.to_string()],
                )
                .await
                .map_err(pg_err)?;
            }
            Some(Ok(v)) if v == SCHEMA_VERSION => {}
            Some(Ok(v)) if v > SCHEMA_VERSION => {
                return Err(StoreError::Backend(format!(
                    "table {t} has schema version {v}, newer than this sidecar's {SCHEMA_VERSION}: upgrade the sidecar"
                )))
            }
            other => {
                return Err(StoreError::Backend(format!(
                    "table {t}_meta has an unreadable schema version {other:?}"
                )))
            }
        }
        // Follow the setting if it changed since the table was created.
        let persistence: i8 = tx
            .query_one(
                "SELECT relpersistence::\"char\" FROM pg_class WHERE oid = $1::text::regclass",
                &[&t],
            )
            .await
            .map_err(pg_err)?
            .get(0);
        let is_unlogged = persistence == b'u' as i8;
        if is_unlogged != unlogged {
            let to = if unlogged { "UNLOGGED" } else { "LOGGED" };
            tracing::warn!(table = t, to, "changing the session table's persistence");
            tx.batch_execute(&format!("ALTER TABLE {t} SET {to}"))
                .await
                .map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)
    }

    /// Creates the schema in the background, retrying until PostgreSQL answers; until then
    /// operations answer 503 (the table is missing) and `/readyz` fails.
    pub fn spawn_migration(&self, unlogged: bool) {
        let store = self.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(200);
            loop {
                match store.migrate(unlogged).await {
                    Ok(()) => {
                        store.schema_ready.store(true, Ordering::Release);
                        tracing::info!(table = %store.table, "session schema ready");
                        if unlogged {
                            store.warn_if_replicated().await;
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot prepare the session schema yet; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(10));
                    }
                }
            }
        });
    }

    /// An UNLOGGED table is not replicated: on a server with streaming replicas (or a
    /// standby) a fail-over comes up with the table empty. Said once, at start.
    pub async fn warn_if_replicated(&self) {
        let probe = async {
            let c = self.pool.get().await.map_err(pool_err)?;
            let row = c
                .query_one(
                    "SELECT pg_is_in_recovery(), (SELECT count(*) FROM pg_stat_replication)",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            Ok::<(bool, i64), StoreError>((row.get(0), row.get(1)))
        };
        match probe.await {
            Ok((standby, replicas)) if standby || replicas > 0 => tracing::warn!(
                table = %self.table,
                replicas,
                standby,
                "DKN_AUTH_DB_UNLOGGED=true on a replicated PostgreSQL: an unlogged table is not \
                 replicated, so a fail-over to a replica loses every session (users log in again); \
                 set DKN_AUTH_DB_UNLOGGED=false to keep sessions across fail-overs"
            ),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot tell whether PostgreSQL has replicas"),
        }
    }

    /// Deletes expired rows in batches while this sidecar holds the clean-up lock.
    pub async fn collect_garbage(&self) -> StoreResult<u64> {
        if !self.schema_ready.load(Ordering::Acquire) {
            return Ok(0);
        }
        let mut total = 0;
        loop {
            let mut client = self.pool.get().await.map_err(pool_err)?;
            let tx = client.transaction().await.map_err(pg_err)?;
            let mine: bool = tx
                .query_one(
                    "SELECT pg_try_advisory_xact_lock(hashtext($1))",
                    &[&format!("{}:gc", self.table)],
                )
                .await
                .map_err(pg_err)?
                .get(0);
            if !mine {
                return Ok(total);
            }
            let n = tx.execute(&self.sql.gc, &[]).await.map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            total += n;
            if n < GC_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Runs `collect_garbage` every `every` until the store is dropped.
    pub fn spawn_gc(&self, every: Duration) {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                match store.collect_garbage().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rows = n, "expired sessions removed"),
                    Err(e) => tracing::warn!(error = %e, "expired-session clean-up failed"),
                }
            }
        });
    }

    pub fn pool_in_use(&self) -> u64 {
        let s = self.pool.status();
        (s.size.saturating_sub(s.available)) as u64
    }

    fn ns(&self) -> &str {
        &self.settings.prefix
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        if !self.schema_ready.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(format!(
                "the session table {} is not prepared yet (see the sidecar's log)",
                self.table
            )));
        }
        self.pool.get().await.map_err(pool_err)
    }

    /// Ready means the schema is prepared and PostgreSQL answers.
    pub async fn ping(&self) -> StoreResult<()> {
        let c = self.client().await?;
        c.simple_query("SELECT 1").await.map_err(pg_err)?;
        Ok(())
    }

    pub async fn get(&self, sid: &Sid) -> StoreResult<Option<Session>> {
        let c = self.client().await?;
        let st = c.prepare_cached(&self.sql.get).await.map_err(pg_err)?;
        let Some(row) = c
            .query_opt(&st, &[&self.ns(), &sid.as_str()])
            .await
            .map_err(pg_err)?
        else {
            return Ok(None);
        };
        let version: i64 = row.get(0);
        let data: serde_json::Value = row.get(1);
        let ttl_ms: i64 = row.get(2);
        let serde_json::Value::Object(obj) = data else {
            return Err(StoreError::Backend(
                "stored session is not a JSON object".into(),
            ));
        };
        let fields = fields_from_object(obj).map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(Some(Session {
            version: version as u64,
            fields,
            ttl: Duration::from_millis(ttl_ms.max(0) as u64),
        }))
    }

    /// Why a conditional write touched no row.
    async fn classify(&self, c: &deadpool_postgres::Object, sid: &Sid) -> StoreError {
        let st = match c.prepare_cached(&self.sql.classify).await {
            Ok(st) => st,
            Err(e) => return pg_err(e),
        };
        match c.query_opt(&st, &[&self.ns(), &sid.as_str()]).await {
            Ok(None) => StoreError::NotFound,
            Ok(Some(row)) if row.get::<_, bool>(0) => StoreError::Gone,
            Ok(Some(row)) => StoreError::Precondition {
                current: Some(row.get::<_, i64>(1) as u64),
            },
            Err(e) => pg_err(e),
        }
    }

    pub async fn put(
        &self,
        sid: &Sid,
        fields: Fields,
        ttl: Duration,
        cond: Condition,
    ) -> StoreResult<Written> {
        let mut data = String::new();
        write_object(&fields, &mut data);
        let ttl_ms = millis(ttl) as f64;
        let c = self.client().await?;
        let ident = sid.identifier();
        let row = match cond {
            Condition::CreateOnly | Condition::Unconditional => {
                let sql = if cond == Condition::CreateOnly {
                    &self.sql.put_create
                } else {
                    &self.sql.put_any
                };
                let st = c.prepare_cached(sql).await.map_err(pg_err)?;
                c.query_opt(&st, &[&self.ns(), &sid.as_str(), &ident, &data, &ttl_ms])
                    .await
            }
            Condition::IfMatch(v) => {
                let st = c
                    .prepare_cached(&self.sql.put_match)
                    .await
                    .map_err(pg_err)?;
                c.query_opt(
                    &st,
                    &[&self.ns(), &sid.as_str(), &data, &ttl_ms, &(v as i64)],
                )
                .await
            }
        }
        .map_err(pg_err)?;
        match row {
            Some(row) => {
                let version = row.get::<_, i64>(0) as u64;
                Ok(Written {
                    version,
                    created: version == 1 && !matches!(cond, Condition::IfMatch(_)),
                })
            }
            None => Err(match self.classify(&c, sid).await {
                StoreError::NotFound => StoreError::Precondition { current: None },
                other => other,
            }),
        }
    }

    pub async fn patch(
        &self,
        sid: &Sid,
        patch: Patch,
        ttl: Duration,
        if_match: Option<u64>,
    ) -> StoreResult<u64> {
        let mut set = String::new();
        write_object(&patch.set, &mut set);
        let ttl_ms = millis(ttl) as f64;
        let if_match = if_match.map(|v| v as i64);
        let present: Fields = patch
            .expect
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .collect();
        let mut expect = String::new();
        write_object(&present, &mut expect);
        let absent: Vec<&str> = patch
            .expect
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.as_str())
            .collect();
        let c = self.client().await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
            &self.ns(),
            &sid.as_str(),
            &set,
            &patch.remove,
            &ttl_ms,
            &if_match,
            &expect,
            &absent,
        ];
        let st = c
            .prepare_cached(&self.sql.patch_quick)
            .await
            .map_err(pg_err)?;
        if let Some(row) = c.query_opt(&st, &params).await.map_err(pg_err)? {
            return Ok(row.get::<_, i64>(0) as u64);
        }
        // Nothing written (missing, version, `expect`, bound): the locking statement says
        // which, or writes if the row changed since.
        let st = c.prepare_cached(&self.sql.patch).await.map_err(pg_err)?;
        let row = c.query_one(&st, &params).await.map_err(pg_err)?;
        if let Some(mut keys) = row.get::<_, Option<Vec<String>>>(2) {
            keys.sort();
            return Err(StoreError::Conflict {
                keys,
                current: row.get::<_, Option<i64>>(3).unwrap_or(0) as u64,
            });
        }
        match (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1)) {
            (Some(version), _) => Ok(version as u64),
            (None, Some(keys)) => Err(StoreError::TooManyKeys { would: keys as u64 }),
            (None, None) => Err(self.classify(&c, sid).await),
        }
    }

    pub async fn delete(&self, sid: &Sid, if_match: Option<u64>) -> StoreResult<bool> {
        let c = self.client().await?;
        if let Some(want) = if_match {
            let st = c
                .prepare_cached(&self.sql.delete_match)
                .await
                .map_err(pg_err)?;
            let tomb = millis(self.settings.tombstone_ttl) as f64;
            let row = c
                .query_opt(&st, &[&self.ns(), &sid.as_str(), &tomb, &(want as i64)])
                .await
                .map_err(pg_err)?;
            return match row {
                Some(_) => Ok(true),
                None => Err(match self.classify(&c, sid).await {
                    StoreError::NotFound => StoreError::Precondition { current: None },
                    other => other,
                }),
            };
        }
        let st = c.prepare_cached(&self.sql.delete).await.map_err(pg_err)?;
        let row = c
            .query_one(
                &st,
                &[
                    &self.ns(),
                    &sid.as_str(),
                    &(millis(self.settings.tombstone_ttl) as f64),
                ],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.get(0))
    }

    pub async fn rotate(
        &self,
        old: &Sid,
        rotation: Rotation,
        if_match: Option<u64>,
    ) -> StoreResult<Written> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let ns = self.ns();
        let pair = vec![
            old.as_str().to_owned(),
            rotation.new_sid.as_str().to_owned(),
        ];
        let lock = tx
            .prepare_cached(&self.sql.lock_pair)
            .await
            .map_err(pg_err)?;
        let rows = tx.query(&lock, &[&ns, &pair]).await.map_err(pg_err)?;
        // (tombstone, version) of each live-or-tombstoned row; expired rows are not there.
        let mut old_row = None;
        let mut new_row = None;
        let mut old_next: Option<String> = None;
        for row in &rows {
            let sid: &str = row.get(0);
            let found = (row.get::<_, bool>(1), row.get::<_, i64>(2) as u64);
            if sid == old.as_str() {
                old_row = Some(found);
                old_next = row.get(3);
            } else {
                new_row = Some(found);
            }
        }
        let old_live = match old_row {
            Some((true, _)) => return Err(StoreError::Gone),
            Some((false, v)) => Some(v),
            None => None,
        };
        if let (Some(_), Some(new_sid)) = (&rotation.keep_old, old_next) {
            // A second soft rotation of the same sid: the first one's new sid answers.
            return Err(StoreError::AlreadyRotated { new_sid });
        }
        if let Some(want) = if_match {
            if old_live != Some(want) {
                return Err(StoreError::Precondition { current: old_live });
            }
        }
        match new_row {
            Some((true, _)) => return Err(StoreError::Precondition { current: None }),
            Some((false, v)) => return Err(StoreError::Precondition { current: Some(v) }),
            None => {}
        }
        let old_live = old_live.is_some();
        let ttl_ms = millis(rotation.ttl) as f64;
        let new_ident = rotation.new_sid.identifier();
        let inserted = match &rotation.source {
            RotateSource::Stored(patch) => {
                if !old_live {
                    return Err(StoreError::NotFound);
                }
                let mut set = String::new();
                write_object(&patch.set, &mut set);
                let st = tx
                    .prepare_cached(&self.sql.rotate_insert_stored)
                    .await
                    .map_err(pg_err)?;
                tx.query_opt(
                    &st,
                    &[
                        &ns,
                        &old.as_str(),
                        &rotation.new_sid.as_str(),
                        &new_ident,
                        &set,
                        &patch.remove,
                        &ttl_ms,
                    ],
                )
                .await
            }
            RotateSource::Given(fields) => {
                let mut data = String::new();
                write_object(fields, &mut data);
                let st = tx
                    .prepare_cached(&self.sql.rotate_insert_given)
                    .await
                    .map_err(pg_err)?;
                tx.query_opt(
                    &st,
                    &[&ns, &rotation.new_sid.as_str(), &new_ident, &data, &ttl_ms],
                )
                .await
            }
        }
        .map_err(pg_err)?;
        let Some(inserted) = inserted else {
            // Someone created the new sid between our check and the insert.
            return Err(StoreError::Precondition { current: None });
        };
        if matches!(rotation.source, RotateSource::Stored(_)) {
            // Dropping the transaction rolls the insert back.
            let keys: i64 = inserted.get(1);
            if keys > MAX_SESSION_KEYS as i64 {
                return Err(StoreError::TooManyKeys { would: keys as u64 });
            }
        }
        match &rotation.keep_old {
            Some(keep) => {
                let mut set = String::new();
                write_object(&keep.set, &mut set);
                let st = tx
                    .prepare_cached(&self.sql.keep_old)
                    .await
                    .map_err(pg_err)?;
                tx.execute(
                    &st,
                    &[
                        &ns,
                        &old.as_str(),
                        &set,
                        &(millis(keep.ttl) as f64),
                        &rotation.new_sid.as_str(),
                    ],
                )
                .await
                .map_err(pg_err)?;
            }
            None => {
                let st = tx.prepare_cached(&self.sql.delete).await.map_err(pg_err)?;
                tx.query_one(
                    &st,
                    &[
                        &ns,
                        &old.as_str(),
                        &(millis(self.settings.tombstone_ttl) as f64),
                    ],
                )
                .await
                .map_err(pg_err)?;
            }
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(Written {
            version: 1,
            created: true,
        })
    }

    pub async fn delete_identifiers(&self, ids: &[Identifier]) -> StoreResult<u64> {
        let ids: Vec<&str> = ids.iter().map(Identifier::as_str).collect();
        let c = self.client().await?;
        let st = c
            .prepare_cached(&self.sql.delete_identifiers)
            .await
            .map_err(pg_err)?;
        let row = c
            .query_one(
                &st,
                &[
                    &self.ns(),
                    &ids,
                    &(millis(self.settings.tombstone_ttl) as f64),
                ],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    pub async fn missing_identifiers(&self, ids: &[Identifier]) -> StoreResult<Vec<Identifier>> {
        let raw: Vec<&str> = ids.iter().map(Identifier::as_str).collect();
        let c = self.client().await?;
        let st = c.prepare_cached(&self.sql.missing).await.map_err(pg_err)?;
        let rows = c.query(&st, &[&self.ns(), &raw]).await.map_err(pg_err)?;
        rows.iter()
            .map(|r| Identifier::parse(r.get(0)).map_err(|e| StoreError::Backend(e.to_string())))
            .collect()
    }
}

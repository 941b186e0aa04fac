//! `odoo-session-sidecar import <source>`: copies the live sessions of Odoo's own store
//! (session files), camptocamp `session_redis` or OCA `session_db` into the sidecar's store,
//! so that switching to `dkn_auth` logs nobody out. See `docs/migration.md`.
//!
//! Every session is written create-only with its remaining lifetime: a session the store
//! already holds (a newer one, or one imported by an earlier run) is left alone, an expired
//! one is not copied, and a run can be repeated. Nothing read from a source is ever executed:
//! pickles are read as data and refused when they name a Python global.

mod files;
mod session_db;
mod session_redis;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;

use odoo_session_sidecar::config::{Args, Driver, Settings, MAX_TTL_SECS};
use odoo_session_sidecar::model::{check_key, Condition, Fields, Sid};
use odoo_session_sidecar::store::{self, Store, StoreError, MAX_SESSION_KEYS};

/// How long the target store may take to answer its first ping (a PostgreSQL target also
/// creates or migrates its table meanwhile).
const TARGET_WAIT: Duration = Duration::from_secs(10);

/// Skipped sessions shown one per line on stderr, at most.
const SHOWN_SKIPS: usize = 20;

#[derive(Debug, Parser)]
#[command(
    name = "odoo-session-sidecar import",
    bin_name = "odoo-session-sidecar import",
    about = "Copy live Odoo sessions into the sidecar's store (create-only, remaining lifetime kept)",
    after_help = "Sources: files <session directory> | session_redis --from <redis URI> | session_db --from <postgresql URI>.\nThe target store is given by the sidecar's own settings (flags, DKN_AUTH_* variables, --config odoo.conf)."
)]
pub struct ImportArgs {
    /// files (Odoo's session directory), session_redis (camptocamp) or session_db (OCA).
    pub source: String,
    /// files: Odoo's session directory (`<data_dir>/sessions`, or `<data_dir>` itself).
    pub path: Option<PathBuf>,
    /// session_redis: redis:// or rediss:// URI of the source Redis (with its database
    /// number); session_db: postgresql:// URI of the database holding the session table.
    #[arg(long, value_name = "URI", hide_env_values = true)]
    pub from: Option<String>,
    /// session_redis: the key prefix in front of each sid. Default `session:` (camptocamp
    /// writes `session::<ODOO_SESSION_REDIS_PREFIX>:` when that variable is set).
    #[arg(long, value_name = "PREFIX")]
    pub from_prefix: Option<String>,
    /// session_db: the session table. Default http_sessions.
    #[arg(long, value_name = "TABLE")]
    pub from_table: Option<String>,
    /// Seconds after its last write at which the source's own clean-up removes a session
    /// (files, session_db, and session_redis keys without a TTL). Default: DKN_AUTH_EXPIRY,
    /// whose default is Odoo's own 7 days.
    #[arg(long, value_name = "SECONDS")]
    pub max_age: Option<String>,
    /// Only sessions written (files, session_db) or used (session_redis) at or after this
    /// Unix time: the `started=` of the previous run.
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub since: Option<String>,
    /// Read everything and print the counts; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub target: Args,
}

/// Why a session was not copied (the summary counts each reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    /// The sid is not one the target accepts (40 hex, or 84/86 URL-safe characters).
    InvalidSid,
    /// A pickle naming a Python global (a class, a function): never loaded.
    PickleGlobal,
    /// Neither a pickle nor a JSON object, or truncated.
    Unreadable,
    /// A value JSON or the store cannot keep as it is (bytes, NaN, integers beyond 64
    /// bits, U+0000, odd dict keys, too many keys).
    NotStorable,
    /// The store holds a tombstone for this sid: it was logged out or rotated there.
    DeletedInStore,
}

impl Skip {
    fn code(self) -> &'static str {
        match self {
            Skip::InvalidSid => "invalid_sid",
            Skip::PickleGlobal => "pickle_global",
            Skip::Unreadable => "unreadable",
            Skip::NotStorable => "not_storable",
            Skip::DeletedInStore => "deleted_in_store",
        }
    }
}

/// A session that could not be decoded: the reason and a description for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub skip: Skip,
    pub why: String,
}

impl Refused {
    pub fn new(skip: Skip, why: impl Into<String>) -> Self {
        Refused {
            skip,
            why: why.into(),
        }
    }
}

/// A failure that stops the run: the source or the target does not answer.
#[derive(Debug)]
pub enum Fatal {
    Source(String),
    Target(String),
}

#[derive(Debug, Default)]
struct Counts {
    imported: u64,
    present: u64,
    expired: u64,
    unchanged: u64,
    skipped: BTreeMap<Skip, u64>,
}

/// Receives the sessions a source finds and writes them to the store.
pub struct Importer {
    store: Store,
    timeout: Duration,
    dry_run: bool,
    /// The source's clean-up age (`--max-age`).
    pub max_age: Duration,
    since: Option<SystemTime>,
    counts: Counts,
    shown: usize,
}

/// One session as a source found it.
pub struct Found<'a> {
    /// The sid as stored by the source.
    pub sid: &'a str,
    /// Time left before the source would have dropped it (may be negative: expired).
    pub remaining_ms: i64,
    /// When it was last written or used, when the source knows it (for `--since`).
    pub touched: Option<SystemTime>,
    /// Where it came from, for the log (no secret in it beyond the sid's first characters).
    pub place: &'a str,
}

impl Importer {
    /// Counts one session, and writes it when it is live, new to the store and readable.
    /// `decode` is only called for sessions worth decoding.
    pub async fn offer(
        &mut self,
        found: Found<'_>,
        decode: impl FnOnce() -> Result<Fields, Refused>,
    ) -> Result<(), Fatal> {
        let Ok(sid) = Sid::parse(found.sid) else {
            self.skip(
                &found,
                Refused::new(
                    Skip::InvalidSid,
                    "not a session id the store accepts (40 lowercase hex, or 84/86 URL-safe characters)",
                ),
            );
            return Ok(());
        };
        if let (Some(since), Some(touched)) = (self.since, found.touched) {
            if touched < since {
                self.counts.unchanged += 1;
                return Ok(());
            }
        }
        if found.remaining_ms <= 0 {
            self.counts.expired += 1;
            return Ok(());
        }
        let ttl =
            Duration::from_millis(found.remaining_ms as u64).min(Duration::from_secs(MAX_TTL_SECS));
        let fields = match decode().and_then(check_fields) {
            Ok(f) => f,
            Err(refused) => {
                self.skip(&found, refused);
                return Ok(());
            }
        };
        if self.dry_run {
            return match store::within(self.timeout, self.store.get(&sid)).await {
                Ok(Some(_)) => {
                    self.counts.present += 1;
                    Ok(())
                }
                Ok(None) => {
                    self.counts.imported += 1;
                    Ok(())
                }
                Err(e) => Err(Fatal::Target(e.to_string())),
            };
        }
        let put = self.store.put(&sid, fields, ttl, Condition::CreateOnly);
        match store::within(self.timeout, put).await {
            Ok(_) => self.counts.imported += 1,
            Err(StoreError::Precondition { .. }) => self.counts.present += 1,
            Err(StoreError::Gone) => self.skip(
                &found,
                Refused::new(
                    Skip::DeletedInStore,
                    "logged out or rotated in the store since: not brought back",
                ),
            ),
            Err(e @ StoreError::TooManyKeys { .. }) => {
                self.skip(&found, Refused::new(Skip::NotStorable, e.to_string()))
            }
            Err(e) => return Err(Fatal::Target(e.to_string())),
        }
        Ok(())
    }

    fn skip(&mut self, found: &Found<'_>, refused: Refused) {
        *self.counts.skipped.entry(refused.skip).or_default() += 1;
        if self.shown < SHOWN_SKIPS {
            let sid: String = found.sid.chars().take(8).collect();
            eprintln!(
                "odoo-session-sidecar import: skipped {} (sid {sid}...): {}: {}",
                found.place,
                refused.skip.code(),
                refused.why
            );
        } else if self.shown == SHOWN_SKIPS {
            eprintln!("odoo-session-sidecar import: further skipped sessions are only counted");
        }
        self.shown += 1;
    }

    fn summary(&self, source: &str, started: u64) -> String {
        let c = &self.counts;
        let total: u64 = c.skipped.values().sum();
        let mut line = if self.dry_run {
            format!(
                "import {source} (dry run, nothing written): would_import={}",
                c.imported
            )
        } else {
            format!("import {source}: imported={}", c.imported)
        };
        let _ = write!(
            line,
            " already_present={} expired={} unchanged_since={} skipped={total}",
            c.present, c.expired, c.unchanged
        );
        if total > 0 {
            let reasons: Vec<String> = c
                .skipped
                .iter()
                .map(|(k, n)| format!("{}={n}", k.code()))
                .collect();
            let _ = write!(line, " ({})", reasons.join(", "));
        }
        let _ = write!(line, " started={started}");
        line
    }
}

/// The checks the sidecar's HTTP layer makes on a session body, applied to decoded data.
fn check_fields(fields: Fields) -> Result<Fields, Refused> {
    if fields.len() > MAX_SESSION_KEYS {
        return Err(Refused::new(
            Skip::NotStorable,
            format!(
                "{} keys, more than the {MAX_SESSION_KEYS} a session may hold",
                fields.len()
            ),
        ));
    }
    for (k, v) in &fields {
        check_key(k).map_err(|e| Refused::new(Skip::NotStorable, e.to_string()))?;
        check_storable_text(v).map_err(|why| Refused::new(Skip::NotStorable, why))?;
    }
    Ok(fields)
}

/// Refuses what a store would not give back as it was read: strings holding U+0000
/// (PostgreSQL's `jsonb` refuses them) and integers beyond 64 bits (serde_json reads them
/// as rounded floats). `text` is compact JSON as serde_json writes it.
fn check_storable_text(text: &str) -> Result<(), String> {
    if text.contains("\\u0000") {
        return Err("a string holds U+0000, which the session store does not keep".into());
    }
    Ok(())
}

/// Turns a JSON object read from a source (already JSON: Odoo 18+ files, session_redis,
/// session_db) into stored fields, refusing integers JSON-in-Rust would round.
pub fn fields_from_json(text: &[u8]) -> Result<Fields, Refused> {
    check_integers(text)?;
    let value: serde_json::Value = serde_json::from_slice(text)
        .map_err(|e| Refused::new(Skip::Unreadable, format!("not JSON: {e}")))?;
    match value {
        serde_json::Value::Object(obj) => {
            Ok(obj.into_iter().map(|(k, v)| (k, v.to_string())).collect())
        }
        _ => Err(Refused::new(Skip::Unreadable, "the JSON is not an object")),
    }
}

/// Integer tokens outside strings that fit neither i64 nor u64.
fn check_integers(text: &[u8]) -> Result<(), Refused> {
    let mut i = 0;
    let mut in_string = false;
    while i < text.len() {
        let c = text[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if c == b'-' || c.is_ascii_digit() {
            let start = i;
            while i < text.len()
                && matches!(text[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
            {
                i += 1;
            }
            let token = std::str::from_utf8(&text[start..i]).unwrap_or("");
            let integer = !token.contains(['.', 'e', 'E']);
            if integer && token.parse::<i64>().is_err() && token.parse::<u64>().is_err() {
                return Err(Refused::new(
                    Skip::NotStorable,
                    "an integer beyond 64 bits (the store would give it back rounded)",
                ));
            }
            continue;
        }
        i += 1;
    }
    Ok(())
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds left of a lifetime `max_age` that started `age` ago (negative: past).
pub fn remaining_ms(max_age: Duration, age_ms: i64) -> i64 {
    i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX) - age_ms
}

enum Source {
    Files(PathBuf),
    Redis { uri: String, prefix: String },
    Db { uri: String, table: String },
}

fn usage_error(e: &str) -> ExitCode {
    eprintln!("odoo-session-sidecar import: {e}");
    ExitCode::from(2)
}

/// Entry point from `main` when the first argument is `import`: `argv` starts with it.
pub fn main(argv: Vec<OsString>) -> ExitCode {
    let args = match ImportArgs::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            return usage_error(first.trim_start_matches("error: "));
        }
    };
    let settings = match Settings::from_args(&args.target) {
        Ok(s) => s,
        Err(e) => return usage_error(&e.to_string()),
    };
    if settings.driver == Driver::Memory {
        return usage_error(
            "DKN_AUTH_DRIVER=memory: the memory store lives in one sidecar process; import into redis or db",
        );
    }
    let source = match source_of(&args) {
        Ok(s) => s,
        Err(e) => return usage_error(&e),
    };
    let max_age = match args.max_age.as_deref() {
        None => settings.expiry,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (1..=MAX_TTL_SECS).contains(&n) => Duration::from_secs(n),
            _ => {
                return usage_error(&format!(
                    "--max-age={v:?} is invalid: expected seconds from 1 to {MAX_TTL_SECS}"
                ))
            }
        },
    };
    let since = match args.since.as_deref() {
        None => None,
        Some(v) => match v.parse::<u64>() {
            Ok(n) => Some(UNIX_EPOCH + Duration::from_secs(n)),
            Err(_) => {
                return usage_error(&format!(
                    "--since={v:?} is invalid: expected a Unix time in seconds (the started= of the previous run)"
                ))
            }
        },
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("odoo-session-sidecar import: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(
        args.source,
        source,
        settings,
        max_age,
        since,
        args.dry_run,
    ));
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

fn source_of(args: &ImportArgs) -> Result<Source, String> {
    let name = args.source.replace('-', "_");
    let only = |what: &str, allowed: bool| {
        if allowed {
            Ok(())
        } else {
            Err(format!("{what} does not apply to the {name} source"))
        }
    };
    match name.as_str() {
        "files" => {
            only("--from", args.from.is_none())?;
            only("--from-prefix", args.from_prefix.is_none())?;
            only("--from-table", args.from_table.is_none())?;
            let path = args.path.clone().ok_or(
                "files needs Odoo's session directory: odoo-session-sidecar import files <data_dir>/sessions",
            )?;
            if !path.is_dir() {
                return Err(format!("{}: not a directory", path.display()));
            }
            Ok(Source::Files(path))
        }
        "session_redis" => {
            only("a path", args.path.is_none())?;
            only("--from-table", args.from_table.is_none())?;
            let uri = args
                .from
                .clone()
                .ok_or("session_redis needs --from redis://host:6379/<db> (the Redis session_redis writes to)")?;
            if !(uri.starts_with("redis://") || uri.starts_with("rediss://")) {
                return Err("--from is invalid: expected a redis:// or rediss:// URI".into());
            }
            let prefix = args
                .from_prefix
                .clone()
                .unwrap_or_else(|| "session:".into());
            if prefix.is_empty() || prefix.chars().any(char::is_control) {
                return Err("--from-prefix is invalid: expected a non-empty key prefix".into());
            }
            Ok(Source::Redis { uri, prefix })
        }
        "session_db" => {
            only("a path", args.path.is_none())?;
            only("--from-prefix", args.from_prefix.is_none())?;
            let uri = args.from.clone().ok_or(
                "session_db needs --from postgresql://user@host:5432/<db> (the SESSION_DB_URI of session_db)",
            )?;
            if !(uri.starts_with("postgresql://") || uri.starts_with("postgres://")) {
                return Err("--from is invalid: expected a postgresql:// URI".into());
            }
            let table = args
                .from_table
                .clone()
                .unwrap_or_else(|| "http_sessions".into());
            let ok = !table.is_empty()
                && table.len() <= 63
                && !table.starts_with(|c: char| c.is_ascii_digit())
                && table
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_');
            if !ok {
                return Err(format!(
                    "--from-table={table:?} is invalid: expected a table name of [a-z0-9_]"
                ));
            }
            Ok(Source::Db { uri, table })
        }
        other => Err(format!(
            "unknown source {other:?}: expected files, session_redis or session_db"
        )),
    }
}

async fn run(
    name: String,
    source: Source,
    settings: Settings,
    max_age: Duration,
    since: Option<SystemTime>,
    dry_run: bool,
) -> ExitCode {
    let store = match store::open(&settings) {
        Ok(s) => s,
        Err(e) => return usage_error(&e),
    };
    let deadline = tokio::time::Instant::now() + TARGET_WAIT;
    loop {
        match store::within(settings.backend_timeout, store.ping()).await {
            Ok(()) => break,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                eprintln!(
                    "odoo-session-sidecar import: the target store ({}) is unreachable: {e}",
                    store.driver_name()
                );
                return ExitCode::FAILURE;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let started = unix_seconds(now());
    let mut imp = Importer {
        store,
        timeout: settings.backend_timeout,
        dry_run,
        max_age,
        since,
        counts: Counts::default(),
        shown: 0,
    };
    let name = name.replace('-', "_");
    let outcome = match &source {
        Source::Files(path) => files::read(path, &mut imp).await,
        Source::Redis { uri, prefix } => session_redis::read(uri, prefix, &mut imp).await,
        Source::Db { uri, table } => session_db::read(uri, table, &mut imp).await,
    };
    println!("{}", imp.summary(&name, started));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal::Source(e)) => {
            eprintln!("odoo-session-sidecar import: the source stopped answering: {e}");
            ExitCode::FAILURE
        }
        Err(Fatal::Target(e)) => {
            eprintln!("odoo-session-sidecar import: the target store stopped answering: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_integers_are_refused_outside_strings() {
        assert!(
            fields_from_json(br#"{"a": 18446744073709551615, "b": -9223372036854775808}"#).is_ok()
        );
        let e = fields_from_json(br#"{"a": 18446744073709551616}"#).unwrap_err();
        assert_eq!(e.skip, Skip::NotStorable);
        assert!(
            fields_from_json(br#"{"a": "18446744073709551616", "b": 1e400}"#).is_err(),
            "1e400 is not a finite double"
        );
        assert!(fields_from_json(br#"{"a": "99999999999999999999999 \" 1"}"#).is_ok());
        assert_eq!(fields_from_json(b"[1]").unwrap_err().skip, Skip::Unreadable);
    }

    #[test]
    fn nul_and_key_count() {
        let f: Fields = [("a".to_string(), "\"x\\u0000\"".to_string())].into();
        assert_eq!(check_fields(f).unwrap_err().skip, Skip::NotStorable);
        let many: Fields = (0..1001)
            .map(|i| (format!("k{i}"), "1".to_string()))
            .collect();
        assert_eq!(check_fields(many).unwrap_err().skip, Skip::NotStorable);
    }

    #[test]
    fn sources_name_what_is_missing() {
        let parse = |v: &[&str]| {
            let mut argv = vec!["import"];
            argv.extend_from_slice(v);
            ImportArgs::try_parse_from(argv).map(|a| source_of(&a))
        };
        let e = parse(&["mongo"]).unwrap().err().unwrap();
        assert!(e.contains("files, session_redis or session_db"), "{e}");
        let e = parse(&["session_redis"]).unwrap().err().unwrap();
        assert!(e.contains("--from"), "{e}");
        let e = parse(&["session_db", "--from", "redis://x"])
            .unwrap()
            .err()
            .unwrap();
        assert!(e.contains("postgresql://"), "{e}");
        let e = parse(&["files"]).unwrap().err().unwrap();
        assert!(e.contains("session directory"), "{e}");
        let e = parse(&[
            "session-db",
            "--from",
            "postgresql://x/y",
            "--from-table",
            "a;b",
        ])
        .unwrap()
        .err()
        .unwrap();
        assert!(e.contains("--from-table"), "{e}");
        assert!(parse(&["session_redis", "--from", "redis://h/2"])
            .unwrap()
            .is_ok());
    }
}

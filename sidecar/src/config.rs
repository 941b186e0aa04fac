//! Settings: command-line flag > `DKN_AUTH_*` environment variable > `odoo.conf` `[options]`
//! key of the same name in lower case > default. Every problem is reported as one line that
//! names the setting and what it accepts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Memory,
    Redis,
    Db,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// Raw command line. Each flag also reads its `DKN_AUTH_*` variable; values missing from
/// both are looked up in the odoo.conf file, then defaulted.
#[derive(Debug, Parser, Default)]
#[command(
    name = "odoo-session-sidecar",
    version,
    about = "Odoo's session store as a local HTTP service over Redis, PostgreSQL or memory"
)]
pub struct Args {
    /// Odoo configuration file whose [options] dkn_auth_* keys are read.
    #[arg(long, env = "DKN_AUTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Backend: redis, db (PostgreSQL) or memory (one process, for trying out and tests).
    #[arg(long, env = "DKN_AUTH_DRIVER")]
    pub driver: Option<String>,
    /// Key (Redis) or namespace (PostgreSQL) prefix. Default `session:`.
    #[arg(long, env = "DKN_AUTH_PREFIX")]
    pub prefix: Option<String>,
    /// Seconds of inactivity before a session expires, when a write names no TTL. Default 604800.
    #[arg(long, env = "DKN_AUTH_EXPIRY")]
    pub expiry: Option<String>,
    /// Seconds a deleted sid refuses writes. Default 300.
    #[arg(long, env = "DKN_AUTH_TOMBSTONE_TTL")]
    pub tombstone_ttl: Option<String>,
    /// TCP listen address. Default 127.0.0.1:7070; loopback only unless --allow-remote.
    #[arg(long, env = "DKN_AUTH_LISTEN")]
    pub listen: Option<String>,
    /// Unix socket path; replaces the TCP listener.
    #[arg(long, env = "DKN_AUTH_SOCKET")]
    pub socket: Option<String>,
    /// A second TCP listener serving only /healthz, /readyz and /metrics, for Kubernetes
    /// probes (the kubelet probes the Pod IP, not its loopback). Default: none.
    #[arg(long, env = "DKN_AUTH_HEALTH_LISTEN")]
    pub health_listen: Option<String>,
    /// Accept a non-loopback listen address (true/false). Default false.
    #[arg(long, env = "DKN_AUTH_ALLOW_REMOTE")]
    pub allow_remote: Option<String>,
    /// Largest request body in bytes. Default 1048576.
    #[arg(long, env = "DKN_AUTH_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<String>,
    /// Time limit of one backend operation, in ms, before answering 503. Default 1000.
    #[arg(long, env = "DKN_AUTH_BACKEND_TIMEOUT_MS")]
    pub backend_timeout_ms: Option<String>,
    /// redis://, rediss:// (TLS), redis+sentinel://host:port,host:port/master[/db] or
    /// redis+cluster://host:port,host:port/ (rediss+cluster:// for TLS).
    #[arg(long, env = "DKN_AUTH_REDIS_URI", hide_env_values = true)]
    pub redis_uri: Option<String>,
    /// Redis password, used when the URI carries none (for Kubernetes Secrets).
    #[arg(long, env = "DKN_AUTH_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// PEM file of the CA that signed the Redis server certificate (rediss://); default: the
    /// system's roots.
    #[arg(long, env = "DKN_AUTH_REDIS_CA_FILE")]
    pub redis_ca_file: Option<String>,
    /// Redis connections at most. Default 64.
    #[arg(long, env = "DKN_AUTH_REDIS_MAX_CONN")]
    pub redis_max_conn: Option<String>,
    /// Redis replicas that must hold a delete, rotation or identifier revoke (WAIT) before
    /// it is acknowledged; fewer within the backend timeout answers 503. Default 0.
    #[arg(long, env = "DKN_AUTH_REDIS_MIN_REPLICAS")]
    pub redis_min_replicas: Option<String>,
    /// PostgreSQL URI (multi-host with target_session_attrs=read-write allowed).
    #[arg(long, env = "DKN_AUTH_DB_URI", hide_env_values = true)]
    pub db_uri: Option<String>,
    /// PostgreSQL password, used when the URI carries none.
    #[arg(long, env = "DKN_AUTH_DB_PASSWORD", hide_env_values = true)]
    pub db_password: Option<String>,
    /// PostgreSQL connections at most. Default 16.
    #[arg(long, env = "DKN_AUTH_DB_MAX_CONN")]
    pub db_max_conn: Option<String>,
    /// Session table name. Default dkn_auth_sessions.
    #[arg(long, env = "DKN_AUTH_DB_TABLE")]
    pub db_table: Option<String>,
    /// Create the session table UNLOGGED (faster, emptied after a PostgreSQL crash). Default false.
    #[arg(long, env = "DKN_AUTH_DB_UNLOGGED")]
    pub db_unlogged: Option<String>,
    /// on: every write waits for PostgreSQL's WAL flush as the connection's
    /// synchronous_commit says; off: data-only writes (puts, patches, TTL refreshes) do not
    /// wait, endings (delete, rotation, identifier revoke) still do. Default on.
    #[arg(long, env = "DKN_AUTH_DB_SYNCHRONOUS_COMMIT")]
    pub db_synchronous_commit: Option<String>,
    /// Seconds between expired-row clean-ups. Default 60.
    #[arg(long, env = "DKN_AUTH_DB_GC_INTERVAL")]
    pub db_gc_interval: Option<String>,
    /// PEM file of CA certificates for PostgreSQL TLS (in addition to the public roots).
    #[arg(long, env = "DKN_AUTH_DB_CA_FILE")]
    pub db_ca_file: Option<String>,
    /// Seconds the sidecar keeps serving after SIGTERM while clients (the app in the same
    /// Pod) are still connected; it exits once none has been connected for a moment, at the
    /// latest after this. Default 0: finish the requests in flight and exit.
    #[arg(long, env = "DKN_AUTH_DRAIN_SECONDS")]
    pub drain_seconds: Option<String>,
    /// Log format: text or json. Default text.
    #[arg(long, env = "DKN_AUTH_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log filter (tracing syntax). Default info.
    #[arg(long, env = "DKN_AUTH_LOG_LEVEL")]
    pub log_level: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub driver: Driver,
    pub prefix: String,
    pub expiry: Duration,
    pub tombstone_ttl: Duration,
    pub listen: Listen,
    pub health_listen: Option<SocketAddr>,
    pub max_body_bytes: usize,
    pub backend_timeout: Duration,
    pub redis_uri: String,
    pub redis_password: Option<String>,
    pub redis_ca_file: Option<String>,
    pub redis_max_conn: usize,
    /// Replicas that must acknowledge an ending write (Redis `WAIT`); 0: none.
    pub redis_min_replicas: u32,
    pub db_uri: Option<String>,
    pub db_password: Option<String>,
    pub db_max_conn: usize,
    pub db_table: String,
    pub db_unlogged: bool,
    /// false: data-only writes commit without waiting for the WAL flush
    /// (`DKN_AUTH_DB_SYNCHRONOUS_COMMIT=off`); endings always wait.
    pub db_synchronous_commit: bool,
    pub db_gc_interval: Duration,
    pub db_ca_file: Option<String>,
    /// Longest time to keep serving after SIGTERM while clients are connected.
    pub drain: Duration,
    pub log_format: LogFormat,
    pub log_level: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Largest TTL a client may ask for: one year.
pub const MAX_TTL_SECS: u64 = 365 * 24 * 3600;

/// Most Redis replicas an ending write may wait for (`DKN_AUTH_REDIS_MIN_REPLICAS`).
pub const MAX_MIN_REPLICAS: u32 = 16;

/// Longest drain after SIGTERM (`DKN_AUTH_DRAIN_SECONDS`): one hour, Kubernetes' own
/// grace periods are far shorter.
pub const MAX_DRAIN_SECS: u64 = 3600;

/// Reads `[options]` of an odoo.conf: `key = value` lines, `;`/`#` comments.
pub fn read_odoo_conf(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(format!(
            "DKN_AUTH_CONFIG: cannot read {}: {e}",
            path.display()
        ))
    })?;
    Ok(parse_odoo_conf(&text))
}

pub fn parse_odoo_conf(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut in_options = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            in_options = line[1..line.len() - 1].trim() == "options";
            continue;
        }
        if !in_options {
            continue;
        }
        if let Some((k, v)) = line.split_once('=').or_else(|| line.split_once(':')) {
            out.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    out
}

struct Resolver<'a> {
    file: &'a HashMap<String, String>,
    /// The odoo.conf read, to name it in errors.
    path: Option<&'a Path>,
}

/// Where a setting's value came from, so that an error names it as the user wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Flag,
    Env,
    File,
}

/// `DKN_AUTH_BACKEND_TIMEOUT_MS` -> `--backend-timeout-ms`.
fn flag_of(var: &str) -> String {
    let name = var.strip_prefix("DKN_AUTH_").unwrap_or(var);
    format!("--{}", name.to_ascii_lowercase().replace('_', "-"))
}

impl Resolver<'_> {
    /// Where the value `pick` would return comes from. Clap merges a flag and its variable
    /// into one field, so a given value that equals the variable's counts as the variable's
    /// (the same text either way), any other as the flag's.
    fn origin(&self, given: &Option<String>, var: &str) -> Origin {
        match given {
            Some(v) if std::env::var(var).ok().as_deref() == Some(v.as_str()) => Origin::Env,
            Some(_) => Origin::Flag,
            None => Origin::File,
        }
    }

    /// The name of a file key as written: `dkn_auth_expiry in /etc/odoo/odoo.conf`.
    fn file_key(&self, key: &str) -> String {
        match self.path {
            Some(p) => format!("{key} in {}", p.display()),
            None => key.to_owned(),
        }
    }

    /// `what is wrong` about `value` of the setting `var`, naming it as the user wrote it:
    /// `DKN_AUTH_EXPIRY="x" is invalid: ...` (variable), `--expiry="x" is invalid: ...
    /// (DKN_AUTH_EXPIRY)` (flag), `dkn_auth_expiry = "x" in /etc/odoo/odoo.conf is invalid:
    /// ... (DKN_AUTH_EXPIRY)` (file).
    fn bad(&self, given: &Option<String>, var: &str, value: &str, what: &str) -> ConfigError {
        ConfigError(match self.origin(given, var) {
            Origin::Env => format!("{var}={value:?} {what}"),
            Origin::Flag => format!("{}={value:?} {what} ({var})", flag_of(var)),
            Origin::File => {
                let key = var.to_ascii_lowercase();
                match self.path {
                    Some(p) => format!("{key} = {value:?} in {} {what} ({var})", p.display()),
                    None => format!("{key} = {value:?} {what} ({var})"),
                }
            }
        })
    }

    /// Every way to give a setting, for "is required" errors.
    fn ways(&self, var: &str) -> String {
        format!(
            "{}, {var} or {}",
            flag_of(var),
            self.file_key(&var.to_ascii_lowercase())
        )
    }

    /// The flag/env value if given, else the file's, else None. Empty strings and Odoo's
    /// `False` count as unset, as odoo.conf writes unset options that way.
    fn pick(&self, given: &Option<String>, var: &str) -> Option<String> {
        let from_file = || self.file.get(&var.to_ascii_lowercase()).cloned();
        given
            .clone()
            .or_else(from_file)
            .filter(|v| !v.is_empty() && v != "False")
    }

    fn number<T>(
        &self,
        given: &Option<String>,
        var: &str,
        default: T,
        min: T,
        max: T,
        what: &str,
    ) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + Copy + std::fmt::Display,
    {
        match self.pick(given, var) {
            None => Ok(default),
            Some(v) => match v.parse::<T>() {
                Ok(n) if n >= min && n <= max => Ok(n),
                _ => Err(self.bad(
                    given,
                    var,
                    &v,
                    &format!("is invalid: expected {what} from {min} to {max}"),
                )),
            },
        }
    }

    fn boolean(
        &self,
        given: &Option<String>,
        var: &str,
        default: bool,
    ) -> Result<bool, ConfigError> {
        match self
            .pick(given, var)
            .as_deref()
            .map(str::to_ascii_lowercase)
        {
            None => Ok(default),
            Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on") => Ok(true),
            Some(v) if matches!(v.as_str(), "0" | "false" | "no" | "off") => Ok(false),
            Some(v) => Err(self.bad(given, var, &v, "is invalid: expected true or false")),
        }
    }
}

/// The PostgreSQL connection of `DKN_AUTH_DRIVER=db` without a URI: Odoo's own, from the
/// odoo.conf's `db_*` keys, as `odoo.sql_db.connection_info_for` passes them to libpq.
struct OdooDb {
    /// A libpq key/value connection string (no password).
    conninfo: String,
    password: Option<String>,
}

/// Odoo writes unset options as `False` (or leaves them empty).
fn odoo_value(file: &HashMap<String, String>, key: &str) -> Option<String> {
    file.get(key)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty() && v != "False" && v != "None")
}

/// A single-quoted libpq value: `\` and `'` escaped.
fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The name of the user this process runs as: libpq's default `user`, hence Odoo's when
/// `db_user` is unset.
pub fn os_user_name() -> Option<String> {
    let uid = unsafe { libc::geteuid() };
    let mut buf = vec![0u8; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    let rc =
        unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() || pwd.pw_name.is_null() {
        return std::env::var("USER").ok().filter(|u| !u.is_empty());
    }
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// The rule of `DKN_AUTH_DB_TABLE` (contract/src/lib.rs holds the same): the name goes
/// into the driver's SQL text unquoted, so only these characters are allowed.
pub fn valid_table_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 48
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

/// Directory of PostgreSQL's Unix socket when `db_host` is unset: libpq's default on
/// Debian and Ubuntu (and in the official postgres image).
pub const DEFAULT_PG_SOCKET_DIR: &str = "/var/run/postgresql";

fn odoo_db_connection(r: &Resolver, driver_given: &Option<String>) -> Result<OdooDb, ConfigError> {
    let file = r.file;
    let driver = match r.origin(driver_given, "DKN_AUTH_DRIVER") {
        Origin::Env => "DKN_AUTH_DRIVER=db".to_owned(),
        Origin::Flag => "--driver=db".to_owned(),
        Origin::File => format!("{} = db", r.file_key("dkn_auth_driver")),
    };
    let bad = |key: &str, value: &str, what: &str| match r.path {
        Some(p) => ConfigError(format!(
            "{key} = {value:?} in {} {what} (used for {driver} without dkn_auth_db_uri)",
            p.display()
        )),
        None => ConfigError(format!("{key} = {value:?} {what}")),
    };
    let host = odoo_value(file, "db_host");
    let port = match odoo_value(file, "db_port") {
        None => 5432,
        Some(v) => match v.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(bad(
                    "db_port",
                    &v,
                    "is invalid: expected a port from 1 to 65535",
                ))
            }
        },
    };
    let user = match odoo_value(file, "db_user").or_else(os_user_name) {
        Some(u) => u,
        None => {
            return Err(ConfigError(format!(
            "{driver}: {} is not set and the user this process runs as has no name: set db_user",
            r.file_key("db_user")
        )))
        }
    };
    let dbname = match odoo_value(file, "dkn_auth_db_name") {
        Some(name) => name,
        None => match odoo_value(file, "db_name") {
            Some(names) if !names.contains(',') => names,
            Some(names) => {
                return Err(bad(
                    "db_name",
                    &names,
                    "names several databases: set dkn_auth_db_name to the one that keeps the session table (or dkn_auth_db_uri)",
                ))
            }
            None => {
                return Err(ConfigError(format!(
                    "{driver} without dkn_auth_db_uri keeps the sessions in Odoo's PostgreSQL, in the database named by dkn_auth_db_name or else db_name; neither is set in {}: set dkn_auth_db_name = <database> (or dkn_auth_db_uri = postgresql://user@host:5432/dbname)",
                    r.path.map(|p| p.display().to_string()).unwrap_or_default()
                )))
            }
        },
    };
    // Odoo's default is `prefer`. tokio-postgres knows disable, prefer and require; its
    // TLS (rustls) always checks the certificate and the host name, as verify-full does.
    let sslmode =
        match odoo_value(file, "db_sslmode").as_deref() {
            None | Some("prefer") | Some("allow") => "prefer",
            Some("disable") => "disable",
            Some("require") | Some("verify-ca") | Some("verify-full") => "require",
            Some(other) => return Err(bad(
                "db_sslmode",
                other,
                "is invalid: expected disable, allow, prefer, require, verify-ca or verify-full",
            )),
        };
    let host = host.unwrap_or_else(|| DEFAULT_PG_SOCKET_DIR.to_owned());
    let conninfo = format!(
        "host={} port={port} user={} dbname={} sslmode={sslmode}",
        conninfo_quote(&host),
        conninfo_quote(&user),
        conninfo_quote(&dbname),
    );
    if let Err(e) = tokio_postgres::Config::from_str(&conninfo) {
        return Err(ConfigError(format!(
            "{driver}: Odoo's db_host, db_port, db_user and db_name in {} give no PostgreSQL connection: {e}",
            r.path.map(|p| p.display().to_string()).unwrap_or_default()
        )));
    }
    Ok(OdooDb {
        conninfo,
        password: odoo_value(file, "db_password"),
    })
}

impl Settings {
    pub fn from_args(args: &Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    let given = Some(p.display().to_string());
                    let empty = HashMap::new();
                    let r = Resolver {
                        file: &empty,
                        path: None,
                    };
                    r.bad(
                        &given,
                        "DKN_AUTH_CONFIG",
                        &p.display().to_string(),
                        &format!("cannot be read: {e}"),
                    )
                })?;
                parse_odoo_conf(&text)
            }
            None => HashMap::new(),
        };
        let r = Resolver {
            file: &file,
            path: args.config.as_deref(),
        };
        let driver = match r.pick(&args.driver, "DKN_AUTH_DRIVER").as_deref() {
            Some("memory") => Driver::Memory,
            Some("redis") => Driver::Redis,
            Some("db") => Driver::Db,
            Some(other) => {
                return Err(r.bad(
                    &args.driver,
                    "DKN_AUTH_DRIVER",
                    other,
                    "is invalid: expected redis, db or memory",
                ))
            }
            None => {
                return Err(ConfigError(format!(
                    "DKN_AUTH_DRIVER is required ({}): expected redis, db or memory",
                    r.ways("DKN_AUTH_DRIVER")
                )))
            }
        };
        let prefix = r
            .pick(&args.prefix, "DKN_AUTH_PREFIX")
            .unwrap_or_else(|| "session:".into());
        if prefix.len() > 64
            || prefix
                .chars()
                .any(|c| c.is_control() || "{}*?[] ".contains(c))
        {
            return Err(r.bad(
                &args.prefix,
                "DKN_AUTH_PREFIX",
                &prefix,
                "is invalid: expected up to 64 characters without spaces, braces, wildcards or control characters",
            ));
        }
        let expiry = r.number(
            &args.expiry,
            "DKN_AUTH_EXPIRY",
            604_800u64,
            // The settings contract's bounds (contract/src/lib.rs EXPIRY), the addon's and
            // the CRD's too; a shorter TTL is a per-request `ttl`, not this default.
            60,
            MAX_TTL_SECS,
            "seconds",
        )?;
        let tombstone = r.number(
            &args.tombstone_ttl,
            "DKN_AUTH_TOMBSTONE_TTL",
            300u64,
            1,
            86_400,
            "seconds",
        )?;
        let allow_remote = r.boolean(&args.allow_remote, "DKN_AUTH_ALLOW_REMOTE", false)?;
        let listen = match r.pick(&args.socket, "DKN_AUTH_SOCKET") {
            Some(path) => Listen::Unix(PathBuf::from(path)),
            None => {
                let text = r
                    .pick(&args.listen, "DKN_AUTH_LISTEN")
                    .unwrap_or_else(|| "127.0.0.1:7070".into());
                let addr: SocketAddr = text.parse().map_err(|_| {
                    r.bad(
                        &args.listen,
                        "DKN_AUTH_LISTEN",
                        &text,
                        "is invalid: expected an address like 127.0.0.1:7070",
                    )
                })?;
                if !addr.ip().is_loopback() && !allow_remote {
                    return Err(r.bad(
                        &args.listen,
                        "DKN_AUTH_LISTEN",
                        &text,
                        "is not a loopback address: the sidecar serves its own pod only; set DKN_AUTH_ALLOW_REMOTE=true (dkn_auth_allow_remote = true) to override",
                    ));
                }
                Listen::Tcp(addr)
            }
        };
        let health_listen = match r.pick(&args.health_listen, "DKN_AUTH_HEALTH_LISTEN") {
            None => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                r.bad(
                    &args.health_listen,
                    "DKN_AUTH_HEALTH_LISTEN",
                    &text,
                    "is invalid: expected an address like 0.0.0.0:7071",
                )
            })?),
        };
        let max_body_bytes = r.number(
            &args.max_body_bytes,
            "DKN_AUTH_MAX_BODY_BYTES",
            1_048_576usize,
            1024,
            64 << 20,
            "bytes",
        )?;
        let timeout_ms = r.number(
            &args.backend_timeout_ms,
            "DKN_AUTH_BACKEND_TIMEOUT_MS",
            1000u64,
            10,
            60_000,
            "milliseconds",
        )?;
        let redis_uri = r
            .pick(&args.redis_uri, "DKN_AUTH_REDIS_URI")
            .unwrap_or_else(|| "redis://localhost:6379/1".into());
        let redis_max_conn = r.number(
            &args.redis_max_conn,
            "DKN_AUTH_REDIS_MAX_CONN",
            64usize,
            1,
            10_000,
            "a connection count",
        )?;
        let redis_min_replicas = r.number(
            &args.redis_min_replicas,
            "DKN_AUTH_REDIS_MIN_REPLICAS",
            0u32,
            0,
            MAX_MIN_REPLICAS,
            "a replica count",
        )?;
        let mut db_uri = r.pick(&args.db_uri, "DKN_AUTH_DB_URI");
        let mut db_password = r.pick(&args.db_password, "DKN_AUTH_DB_PASSWORD");
        if driver == Driver::Db && db_uri.is_none() {
            if args.config.is_none() {
                return Err(ConfigError(format!(
                    "DKN_AUTH_DB_URI is required with DKN_AUTH_DRIVER=db ({}), or --config an odoo.conf whose db_host, db_port, db_user, db_password and db_name the sidecar then uses: expected postgresql://user@host:5432/dbname",
                    r.ways("DKN_AUTH_DB_URI")
                )));
            }
            let odoo = odoo_db_connection(&r, &args.driver)?;
            db_uri = Some(odoo.conninfo);
            if db_password.is_none() {
                db_password = odoo.password;
            }
        }
        let db_max_conn = r.number(
            &args.db_max_conn,
            "DKN_AUTH_DB_MAX_CONN",
            16usize,
            1,
            1000,
            "a connection count",
        )?;
        let db_table = r
            .pick(&args.db_table, "DKN_AUTH_DB_TABLE")
            .unwrap_or_else(|| "dkn_auth_sessions".into());
        if !valid_table_name(&db_table) {
            return Err(r.bad(
                &args.db_table,
                "DKN_AUTH_DB_TABLE",
                &db_table,
                "is invalid: expected 1 to 48 characters of [a-z0-9_], not starting with a digit",
            ));
        }
        let db_unlogged = r.boolean(&args.db_unlogged, "DKN_AUTH_DB_UNLOGGED", false)?;
        let db_synchronous_commit = match r
            .pick(
                &args.db_synchronous_commit,
                "DKN_AUTH_DB_SYNCHRONOUS_COMMIT",
            )
            .as_deref()
        {
            None | Some("on") => true,
            Some("off") => false,
            Some(other) => {
                return Err(r.bad(
                    &args.db_synchronous_commit,
                    "DKN_AUTH_DB_SYNCHRONOUS_COMMIT",
                    other,
                    "is invalid: expected on or off",
                ))
            }
        };
        let gc = r.number(
            &args.db_gc_interval,
            "DKN_AUTH_DB_GC_INTERVAL",
            60u64,
            1,
            86_400,
            "seconds",
        )?;
        let drain = r.number(
            &args.drain_seconds,
            "DKN_AUTH_DRAIN_SECONDS",
            0u64,
            0,
            MAX_DRAIN_SECS,
            "seconds",
        )?;
        let log_format = match r.pick(&args.log_format, "DKN_AUTH_LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(r.bad(
                    &args.log_format,
                    "DKN_AUTH_LOG_FORMAT",
                    other,
                    "is invalid: expected text or json",
                ))
            }
        };
        Ok(Settings {
            driver,
            prefix,
            expiry: Duration::from_secs(expiry),
            tombstone_ttl: Duration::from_secs(tombstone),
            listen,
            health_listen,
            max_body_bytes,
            backend_timeout: Duration::from_millis(timeout_ms),
            redis_uri,
            redis_password: r.pick(&args.redis_password, "DKN_AUTH_REDIS_PASSWORD"),
            redis_ca_file: r.pick(&args.redis_ca_file, "DKN_AUTH_REDIS_CA_FILE"),
            redis_max_conn,
            redis_min_replicas,
            db_uri,
            db_password,
            db_max_conn,
            db_table,
            db_unlogged,
            db_synchronous_commit,
            db_gc_interval: Duration::from_secs(gc),
            db_ca_file: r.pick(&args.db_ca_file, "DKN_AUTH_DB_CA_FILE"),
            drain: Duration::from_secs(drain),
            log_format,
            log_level: r
                .pick(&args.log_level, "DKN_AUTH_LOG_LEVEL")
                .unwrap_or_else(|| "info".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, &str)]) -> Args {
        let mut argv = vec!["odoo-session-sidecar".to_string()];
        for (k, v) in pairs {
            argv.push(format!("--{k}={v}"));
        }
        Args::parse_from(argv)
    }

    #[test]
    fn driver_required_and_named() {
        let e = Settings::from_args(&Args::default()).unwrap_err();
        assert!(e.0.starts_with("DKN_AUTH_DRIVER is required"), "{e}");
        let e = Settings::from_args(&args(&[("driver", "mongo")])).unwrap_err();
        assert!(e.0.contains("redis, db or memory"), "{e}");
    }

    #[test]
    fn defaults() {
        let s = Settings::from_args(&args(&[("driver", "memory")])).unwrap();
        assert_eq!(s.prefix, "session:");
        assert_eq!(s.expiry, Duration::from_secs(604_800));
        assert_eq!(s.listen, Listen::Tcp("127.0.0.1:7070".parse().unwrap()));
        assert_eq!(s.redis_max_conn, 64);
        assert_eq!(s.max_body_bytes, 1 << 20);
        assert_eq!(s.redis_min_replicas, 0);
        assert_eq!(s.drain, Duration::ZERO);
    }

    #[test]
    fn replica_count_and_drain_are_bounded() {
        let s = Settings::from_args(&args(&[
            ("driver", "redis"),
            ("redis-min-replicas", "2"),
            ("drain-seconds", "25"),
        ]))
        .unwrap();
        assert_eq!(s.redis_min_replicas, 2);
        assert_eq!(s.drain, Duration::from_secs(25));
        let e = Settings::from_args(&args(&[("driver", "redis"), ("redis-min-replicas", "17")]))
            .unwrap_err();
        assert!(
            e.0.starts_with("--redis-min-replicas=\"17\" is invalid"),
            "{e}"
        );
        assert!(e.0.ends_with("(DKN_AUTH_REDIS_MIN_REPLICAS)"), "{e}");
        let e = Settings::from_args(&args(&[("driver", "memory"), ("drain-seconds", "-1")]))
            .unwrap_err();
        assert!(
            e.0.starts_with("--drain-seconds=") && e.0.contains("DKN_AUTH_DRAIN_SECONDS"),
            "{e}"
        );
    }

    #[test]
    fn non_loopback_refused_unless_allowed() {
        let e = Settings::from_args(&args(&[("driver", "memory"), ("listen", "0.0.0.0:7070")]))
            .unwrap_err();
        assert!(e.0.contains("DKN_AUTH_LISTEN"), "{e}");
        assert!(Settings::from_args(&args(&[
            ("driver", "memory"),
            ("listen", "0.0.0.0:7070"),
            ("allow-remote", "true")
        ]))
        .is_ok());
    }

    #[test]
    fn bad_numbers_name_the_setting() {
        let e =
            Settings::from_args(&args(&[("driver", "memory"), ("expiry", "soon")])).unwrap_err();
        assert_eq!(
            e.0,
            "--expiry=\"soon\" is invalid: expected seconds from 60 to 31536000 (DKN_AUTH_EXPIRY)"
        );
        let e = Settings::from_args(&args(&[("driver", "memory"), ("expiry", "0")])).unwrap_err();
        assert!(e.0.contains("DKN_AUTH_EXPIRY"), "{e}");
    }

    #[test]
    fn db_needs_uri() {
        let e = Settings::from_args(&args(&[("driver", "db")])).unwrap_err();
        assert!(e.0.starts_with("DKN_AUTH_DB_URI is required"), "{e}");
    }

    #[test]
    fn odoo_conf_is_below_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odoo.conf");
        std::fs::write(
            &path,
            "[options]\nadmin_passwd = x\ndkn_auth_driver = memory\ndkn_auth_expiry = 3600\n\
             dkn_auth_prefix = False\n; comment\n[other]\ndkn_auth_redis_max_conn = 3\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s = Settings::from_args(&args(&[("config", p)])).unwrap();
        assert_eq!(s.driver, Driver::Memory);
        assert_eq!(s.expiry, Duration::from_secs(3600));
        assert_eq!(s.prefix, "session:", "False means unset in odoo.conf");
        assert_eq!(s.redis_max_conn, 64, "only [options] is read");
        let s = Settings::from_args(&args(&[("config", p), ("expiry", "60")])).unwrap();
        assert_eq!(s.expiry, Duration::from_secs(60));
    }

    #[test]
    fn prefix_rejects_wildcards() {
        let e = Settings::from_args(&args(&[("driver", "memory"), ("prefix", "s*")])).unwrap_err();
        assert!(e.0.starts_with("--prefix=\"s*\" is invalid"), "{e}");
        assert!(e.0.contains("DKN_AUTH_PREFIX"), "{e}");
    }

    fn conf(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odoo.conf");
        std::fs::write(&path, text).unwrap();
        let p = path.to_str().unwrap().to_owned();
        (dir, p)
    }

    #[test]
    fn file_errors_name_the_file_key_and_the_file() {
        let (_d, p) = conf("[options]\ndkn_auth_driver = memory\ndkn_auth_expiry = a week\n");
        let e = Settings::from_args(&args(&[("config", &p)])).unwrap_err();
        assert_eq!(
            e.0,
            format!("dkn_auth_expiry = \"a week\" in {p} is invalid: expected seconds from 60 to 31536000 (DKN_AUTH_EXPIRY)")
        );
        let (_d, p) = conf("[options]\ndkn_auth_driver = mongo\n");
        let e = Settings::from_args(&args(&[("config", &p)])).unwrap_err();
        assert!(
            e.0.starts_with(&format!("dkn_auth_driver = \"mongo\" in {p} is invalid")),
            "{e}"
        );
        let (_d, p) =
            conf("[options]\ndkn_auth_driver = memory\ndkn_auth_listen = 10.0.0.1:7070\n");
        let e = Settings::from_args(&args(&[("config", &p)])).unwrap_err();
        assert!(
            e.0.starts_with(&format!(
                "dkn_auth_listen = \"10.0.0.1:7070\" in {p} is not a loopback"
            )),
            "{e}"
        );
        let e = Settings::from_args(&args(&[("config", "/nonexistent/odoo.conf")])).unwrap_err();
        assert!(
            e.0.starts_with("--config=\"/nonexistent/odoo.conf\" cannot be read"),
            "{e}"
        );
        assert!(e.0.ends_with("(DKN_AUTH_CONFIG)"), "{e}");
        let (_d, p) = conf("[options]\n");
        let e = Settings::from_args(&args(&[("config", &p)])).unwrap_err();
        assert!(
            e.0.starts_with(
                "DKN_AUTH_DRIVER is required (--driver, DKN_AUTH_DRIVER or dkn_auth_driver in "
            ),
            "{e}"
        );
    }

    /// The seed module's keys keep their meaning.
    #[test]
    fn seed_keys_keep_their_meaning() {
        let (_d, p) = conf(
            "[options]\nserver_wide_modules = base,web,dkn_auth\ndkn_auth_driver = redis\n\
             dkn_auth_prefix = odoo:session:\ndkn_auth_expiry = 86400\n\
             dkn_auth_redis_uri = redis://10.0.0.5:6379/2\ndkn_auth_redis_max_conn = 12\n",
        );
        let s = Settings::from_args(&args(&[("config", &p)])).unwrap();
        assert_eq!(s.driver, Driver::Redis);
        assert_eq!(s.prefix, "odoo:session:");
        assert_eq!(s.expiry, Duration::from_secs(86_400));
        assert_eq!(s.redis_uri, "redis://10.0.0.5:6379/2");
        assert_eq!(s.redis_max_conn, 12);
    }

    fn pg(conninfo: &str) -> tokio_postgres::Config {
        tokio_postgres::Config::from_str(conninfo).unwrap()
    }

    #[test]
    fn db_without_uri_uses_odoos_connection_settings() {
        let (_d, p) = conf(
            "[options]\ndb_host = pg.internal\ndb_port = 5433\ndb_user = odoo\n\
             db_password = it's a \\ secret\ndb_name = prod\ndb_sslmode = require\n\
             dkn_auth_driver = db\n",
        );
        let s = Settings::from_args(&args(&[("config", &p)])).unwrap();
        let c = pg(s.db_uri.as_deref().unwrap());
        assert_eq!(
            c.get_hosts(),
            &[tokio_postgres::config::Host::Tcp("pg.internal".into())]
        );
        assert_eq!(c.get_ports(), &[5433]);
        assert_eq!(c.get_user(), Some("odoo"));
        assert_eq!(c.get_dbname(), Some("prod"));
        assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        assert_eq!(c.get_password(), None, "the password stays out of the URI");
        assert_eq!(s.db_password.as_deref(), Some("it's a \\ secret"));
        // DKN_AUTH_DB_PASSWORD (a secret kept out of odoo.conf) wins over db_password.
        let s = Settings::from_args(&args(&[("config", &p), ("db-password", "other")])).unwrap();
        assert_eq!(s.db_password.as_deref(), Some("other"));
        // An explicit URI wins over Odoo's settings.
        let s = Settings::from_args(&args(&[("config", &p), ("db-uri", "postgresql://a@b/c")]))
            .unwrap();
        assert_eq!(s.db_uri.as_deref(), Some("postgresql://a@b/c"));
    }

    #[test]
    fn db_defaults_are_odoos() {
        // Odoo writes unset options as False: Unix socket, 5432, the OS user, prefer.
        let (_d, p) = conf(
            "[options]\ndb_host = False\ndb_port = False\ndb_user = False\ndb_password = False\n\
             db_name = prod\ndkn_auth_driver = db\n",
        );
        let s = Settings::from_args(&args(&[("config", &p)])).unwrap();
        let c = pg(s.db_uri.as_deref().unwrap());
        assert_eq!(
            c.get_hosts(),
            &[tokio_postgres::config::Host::Unix(
                DEFAULT_PG_SOCKET_DIR.into()
            )]
        );
        assert_eq!(c.get_ports(), &[5432]);
        assert_eq!(c.get_user(), os_user_name().as_deref());
        assert!(c.get_user().is_some());
        assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Prefer);
        assert_eq!(s.db_password, None);
    }

    #[test]
    fn db_name_choice() {
        let (_d, p) =
            conf("[options]\ndb_name = a,b\ndkn_auth_db_name = sessions\ndkn_auth_driver = db\n");
        let s = Settings::from_args(&args(&[("config", &p)])).unwrap();
        assert_eq!(
            pg(s.db_uri.as_deref().unwrap()).get_dbname(),
            Some("sessions")
        );
        let (_d, p) = conf("[options]\ndb_name = a,b\ndkn_auth_driver = db\n");
        let e = Settings::from_args(&args(&[("config", &p)])).unwrap_err();
        assert!(
            e.0.starts_with(&format!("db_name = \"a,b\" in {p} names several databases")),
            "{e}"
        );
        assert!(e.0.contains(&format!("dkn_auth_driver in {p} = db")), "{e}");
        let (_d, p) = conf("[options]\ndb_name = False\ndkn_auth_driver = db\n");
        let e = Settings::from_args(&args(&[("config", &p)])).unwrap_err();
        assert!(e.0.contains("dkn_auth_db_name"), "{e}");
        let e = Settings::from_args(&args(&[("config", &p), ("driver", "db")])).unwrap_err();
        assert!(
            e.0.starts_with("--driver=db without dkn_auth_db_uri"),
            "{e}"
        );
    }

    #[test]
    fn bad_odoo_db_values_name_odoos_key() {
        let (_d, p) = conf("[options]\ndb_name = x\ndb_port = fivefour\ndkn_auth_driver = db\n");
        let e = Settings::from_args(&args(&[("config", &p)])).unwrap_err();
        assert!(
            e.0.starts_with(&format!("db_port = \"fivefour\" in {p} is invalid")),
            "{e}"
        );
        let (_d, p) =
            conf("[options]\ndb_name = x\ndb_sslmode = sometimes\ndkn_auth_driver = db\n");
        let e = Settings::from_args(&args(&[("config", &p)])).unwrap_err();
        assert!(
            e.0.starts_with(&format!("db_sslmode = \"sometimes\" in {p} is invalid")),
            "{e}"
        );
    }
}

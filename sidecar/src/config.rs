//! Settings: command-line flag > `DKN_AUTH_*` environment variable > `odoo.conf` `[options]`
//! key of the same name in lower case > default. Every problem is reported as one line that
//! names the setting and what it accepts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// redis://, rediss:// (TLS) or redis+sentinel://host:port,host:port/master[/db].
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
}

impl Resolver<'_> {
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
                _ => Err(ConfigError(format!(
                    "{var}={v:?} is invalid: expected {what} from {min} to {max}"
                ))),
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
            Some(v) => Err(ConfigError(format!(
                "{var}={v:?} is invalid: expected true or false"
            ))),
        }
    }
}

impl Settings {
    pub fn from_args(args: &Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(p) => read_odoo_conf(p)?,
            None => HashMap::new(),
        };
        let r = Resolver { file: &file };
        let driver = match r.pick(&args.driver, "DKN_AUTH_DRIVER").as_deref() {
            Some("memory") => Driver::Memory,
            Some("redis") => Driver::Redis,
            Some("db") => Driver::Db,
            Some(other) => {
                return Err(ConfigError(format!(
                    "DKN_AUTH_DRIVER={other:?} is invalid: expected redis, db or memory"
                )))
            }
            None => {
                return Err(ConfigError(
                    "DKN_AUTH_DRIVER is required: expected redis, db or memory".into(),
                ))
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
            return Err(ConfigError(format!(
                "DKN_AUTH_PREFIX={prefix:?} is invalid: expected up to 64 characters without spaces, braces, wildcards or control characters"
            )));
        }
        let expiry = r.number(
            &args.expiry,
            "DKN_AUTH_EXPIRY",
            604_800u64,
            1,
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
                    ConfigError(format!(
                        "DKN_AUTH_LISTEN={text:?} is invalid: expected an address like 127.0.0.1:7070"
                    ))
                })?;
                if !addr.ip().is_loopback() && !allow_remote {
                    return Err(ConfigError(format!(
                        "DKN_AUTH_LISTEN={text:?} is not a loopback address: the sidecar serves its own pod only; set DKN_AUTH_ALLOW_REMOTE=true to override"
                    )));
                }
                Listen::Tcp(addr)
            }
        };
        let health_listen = match r.pick(&args.health_listen, "DKN_AUTH_HEALTH_LISTEN") {
            None => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                ConfigError(format!(
                    "DKN_AUTH_HEALTH_LISTEN={text:?} is invalid: expected an address like 0.0.0.0:7071"
                ))
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
        let db_uri = r.pick(&args.db_uri, "DKN_AUTH_DB_URI");
        if driver == Driver::Db && db_uri.is_none() {
            return Err(ConfigError(
                "DKN_AUTH_DB_URI is required with DKN_AUTH_DRIVER=db: expected postgresql://user@host:5432/dbname".into(),
            ));
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
        if !crate::store::postgres::valid_table_name(&db_table) {
            return Err(ConfigError(format!(
                "DKN_AUTH_DB_TABLE={db_table:?} is invalid: expected 1 to 48 characters of [a-z0-9_], not starting with a digit"
            )));
        }
        let db_unlogged = r.boolean(&args.db_unlogged, "DKN_AUTH_DB_UNLOGGED", false)?;
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
                return Err(ConfigError(format!(
                    "DKN_AUTH_LOG_FORMAT={other:?} is invalid: expected text or json"
                )))
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
            db_password: r.pick(&args.db_password, "DKN_AUTH_DB_PASSWORD"),
            db_max_conn,
            db_table,
            db_unlogged,
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
            e.0.starts_with("DKN_AUTH_REDIS_MIN_REPLICAS=\"17\" is invalid"),
            "{e}"
        );
        let e = Settings::from_args(&args(&[("driver", "memory"), ("drain-seconds", "-1")]))
            .unwrap_err();
        assert!(e.0.starts_with("DKN_AUTH_DRAIN_SECONDS"), "{e}");
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
        assert!(
            e.0.starts_with("DKN_AUTH_EXPIRY=\"soon\" is invalid"),
            "{e}"
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
        assert!(e.0.starts_with("DKN_AUTH_PREFIX"), "{e}");
    }
}

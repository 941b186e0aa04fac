//! The settings contract of odoo-ha-session: every `DKN_AUTH_*` setting, with its
//! `odoo.conf` key, who reads it, its default, its bounds or format, and the
//! `OdooSessionStore` field that sets it, in one table ([`SETTINGS`]).
//!
//! Used by the operator (CRD schema bounds and patterns, validation) and exported as
//! `docs/settings-contract.json` (`cargo run -p odoo-ha-contract --bin contractgen`), which
//! the addon's tests check their own settings against. The tests of this crate check that
//! the sidecar's parser accepts and refuses what the table says, and that the sidecar reads
//! no setting the table does not list.
//!
//! Where the sidecar and the addon both read a setting, the table holds what **both**
//! accept, so a value the operator lets through never crash-loops either of them.

use serde_json::{json, Value};

/// Who reads a setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// The session sidecar (`odoo-session-sidecar`).
    Sidecar,
    /// The Odoo addon `dkn_auth`.
    Addon,
}

impl Reader {
    pub fn as_str(self) -> &'static str {
        match self {
            Reader::Sidecar => "sidecar",
            Reader::Addon => "addon",
        }
    }
}

/// Inclusive character ranges.
pub type Chars = &'static [(char, char)];

/// What a setting's value may be.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Format {
    /// A whole number from `min` to `max`, both included.
    Integer { min: i64, max: i64 },
    /// A decimal number from `min` to `max`, both included.
    Decimal { min: f64, max: f64 },
    /// `min_len` to `max_len` characters, the first from `first`, the others from `rest`.
    Text {
        min_len: usize,
        max_len: usize,
        first: Chars,
        rest: Chars,
        /// The rule in words, for messages and the JSON.
        rule: &'static str,
    },
    /// One of the words.
    Choice(&'static [&'static str]),
    /// `true`/`false` (the sidecar also takes 1/0, yes/no, on/off).
    Boolean,
    /// A URI, address, path, password or filter the reader checks itself.
    Free(&'static str),
}

/// One `DKN_AUTH_*` setting.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Setting {
    /// The environment variable.
    pub env: &'static str,
    /// What the setting is for.
    pub description: &'static str,
    /// The default as the reader's text, `None` when there is none (required or unset).
    pub default: Option<&'static str>,
    pub format: Format,
    pub readers: &'static [Reader],
    /// The `OdooSessionStore` field the operator sets it from, if any.
    pub crd_field: Option<&'static str>,
}

const PRINTABLE_NO_BRACES_NO_WILDCARDS: Chars = &[
    ('!', ')'),
    ('+', '>'),
    ('@', 'Z'),
    ('\\', '\\'),
    ('^', 'z'),
    ('|', '|'),
    ('~', '~'),
];
const LOWER_UNDERSCORE: Chars = &[('a', 'z'), ('_', '_')];
const LOWER_DIGIT_UNDERSCORE: Chars = &[('a', 'z'), ('0', '9'), ('_', '_')];

/// One year: the longest session life (the sidecar's `MAX_TTL_SECS`).
pub const MAX_TTL_SECS: i64 = 31_536_000;

const S: &[Reader] = &[Reader::Sidecar];
const A: &[Reader] = &[Reader::Addon];
const SA: &[Reader] = &[Reader::Sidecar, Reader::Addon];

pub const DRIVER: Setting = Setting {
    env: "DKN_AUTH_DRIVER",
    description: "Session backend: redis, db (PostgreSQL) or memory (one process).",
    default: None,
    format: Format::Choice(&["redis", "db", "memory"]),
    readers: S,
    crd_field: Some("spec.driver"),
};

pub const PREFIX: Setting = Setting {
    env: "DKN_AUTH_PREFIX",
    description: "Key (Redis) or namespace (PostgreSQL) prefix of the sessions.",
    default: Some("session:"),
    format: Format::Text {
        min_len: 1,
        max_len: 64,
        first: PRINTABLE_NO_BRACES_NO_WILDCARDS,
        rest: PRINTABLE_NO_BRACES_NO_WILDCARDS,
        rule: "1 to 64 printable ASCII characters, without spaces, braces or the wildcards * ? [ ]",
    },
    readers: S,
    crd_field: Some("spec.prefix"),
};

pub const EXPIRY: Setting = Setting {
    env: "DKN_AUTH_EXPIRY",
    description: "Seconds of inactivity before a logged-in session expires.",
    default: Some("604800"),
    format: Format::Integer {
        min: 60,
        max: MAX_TTL_SECS,
    },
    readers: SA,
    crd_field: Some("spec.expirySeconds"),
};

pub const ANONYMOUS_EXPIRY: Setting = Setting {
    env: "DKN_AUTH_ANONYMOUS_EXPIRY",
    description: "Seconds of inactivity before an anonymous (not logged-in) session expires.",
    default: Some("10800"),
    format: Format::Integer {
        min: 60,
        max: MAX_TTL_SECS,
    },
    readers: A,
    crd_field: Some("spec.anonymousExpirySeconds"),
};

pub const REDIS_MAX_CONN: Setting = Setting {
    env: "DKN_AUTH_REDIS_MAX_CONN",
    description: "Redis connections of one sidecar at most.",
    default: Some("64"),
    format: Format::Integer {
        min: 1,
        max: 10_000,
    },
    readers: S,
    crd_field: Some("spec.redisPoolSize"),
};

pub const DB_SYNCHRONOUS_COMMIT: Setting = Setting {
    env: "DKN_AUTH_DB_SYNCHRONOUS_COMMIT",
    description: "off: data-only writes (puts, patches, TTL refreshes) commit without waiting for the WAL flush, so a PostgreSQL crash can undo the last of them (about 3 x wal_writer_delay); endings (logout, rotation, identifier revoke) always wait.",
    default: Some("on"),
    format: Format::Choice(&["on", "off"]),
    readers: S,
    crd_field: Some("spec.dbSynchronousCommit"),
};

/// Set, like [`REDIS_CA_FILE`], from one field: the operator mounts the Secret's key as a
/// file in the sidecar and points the driver's variable at it.
pub const DB_CA_FILE: Setting = Setting {
    env: "DKN_AUTH_DB_CA_FILE",
    description: "PEM file of CA certificates for PostgreSQL TLS.",
    default: None,
    format: Format::Free("a file path"),
    readers: S,
    crd_field: Some("spec.backend.external.caSecretRef"),
};

pub const REDIS_CA_FILE: Setting = Setting {
    env: "DKN_AUTH_REDIS_CA_FILE",
    description: "PEM file of the CA of the Redis server certificate (rediss://).",
    default: None,
    format: Format::Free("a file path"),
    readers: S,
    crd_field: Some("spec.backend.external.caSecretRef"),
};

pub const REDIS_MIN_REPLICAS: Setting = Setting {
    env: "DKN_AUTH_REDIS_MIN_REPLICAS",
    description: "Redis replicas that must hold an ending write (WAIT) before it is acknowledged.",
    default: Some("0"),
    format: Format::Integer { min: 0, max: 16 },
    readers: S,
    crd_field: Some("spec.backend.external.minReplicas"),
};

const fn int(
    env: &'static str,
    description: &'static str,
    default: &'static str,
    min: i64,
    max: i64,
    readers: &'static [Reader],
) -> Setting {
    Setting {
        env,
        description,
        default: Some(default),
        format: Format::Integer { min, max },
        readers,
        crd_field: None,
    }
}

const fn free(
    env: &'static str,
    description: &'static str,
    default: Option<&'static str>,
    what: &'static str,
    readers: &'static [Reader],
) -> Setting {
    Setting {
        env,
        description,
        default,
        format: Format::Free(what),
        readers,
        crd_field: None,
    }
}

/// Every `DKN_AUTH_*` setting, sorted by name.
pub const SETTINGS: &[Setting] = &[
    free(
        "DKN_AUTH_ALLOW_REMOTE",
        "Accept a non-loopback DKN_AUTH_LISTEN address.",
        Some("false"),
        "",
        S,
    )
    .with_format(Format::Boolean),
    ANONYMOUS_EXPIRY,
    int(
        "DKN_AUTH_BACKEND_TIMEOUT_MS",
        "Time limit of one backend operation in milliseconds before answering 503.",
        "1000",
        10,
        60_000,
        S,
    ),
    free(
        "DKN_AUTH_CONFIG",
        "odoo.conf file whose [options] dkn_auth_* keys are read.",
        None,
        "a file path",
        S,
    ),
    DB_CA_FILE,
    int(
        "DKN_AUTH_DB_GC_INTERVAL",
        "Seconds between clean-ups of expired rows (PostgreSQL).",
        "60",
        1,
        86_400,
        S,
    ),
    int(
        "DKN_AUTH_DB_MAX_CONN",
        "PostgreSQL connections of one sidecar at most.",
        "16",
        1,
        1000,
        S,
    ),
    free(
        "DKN_AUTH_DB_PASSWORD",
        "PostgreSQL password, used when the URI carries none.",
        None,
        "a secret",
        S,
    ),
    DB_SYNCHRONOUS_COMMIT,
    Setting {
        env: "DKN_AUTH_DB_TABLE",
        description: "Session table name (PostgreSQL).",
        default: Some("dkn_auth_sessions"),
        format: Format::Text {
            min_len: 1,
            max_len: 48,
            first: LOWER_UNDERSCORE,
            rest: LOWER_DIGIT_UNDERSCORE,
            rule: "1 to 48 characters of [a-z0-9_], not starting with a digit",
        },
        readers: S,
        crd_field: None,
    },
    free(
        "DKN_AUTH_DB_UNLOGGED",
        "Create the session table UNLOGGED (emptied after a PostgreSQL crash).",
        Some("false"),
        "",
        S,
    )
    .with_format(Format::Boolean),
    free(
        "DKN_AUTH_DB_URI",
        "PostgreSQL URI; required with DKN_AUTH_DRIVER=db.",
        None,
        "postgresql://user@host:5432/dbname",
        S,
    ),
    int(
        "DKN_AUTH_DRAIN_SECONDS",
        "Seconds the sidecar keeps serving after SIGTERM while its clients are connected.",
        "0",
        0,
        3600,
        S,
    ),
    DRIVER,
    EXPIRY,
    free(
        "DKN_AUTH_HEALTH_LISTEN",
        "Second TCP listener for /healthz, /readyz and /metrics.",
        None,
        "an address like 0.0.0.0:7071",
        S,
    ),
    free(
        "DKN_AUTH_LISTEN",
        "TCP listen address of the sidecar (loopback unless DKN_AUTH_ALLOW_REMOTE); the addon derives its address from it when DKN_AUTH_URL is unset.",
        Some("127.0.0.1:7070"),
        "an address like 127.0.0.1:7070",
        SA,
    ),
    Setting {
        env: "DKN_AUTH_LOG_FORMAT",
        description: "Log format of the sidecar.",
        default: Some("text"),
        format: Format::Choice(&["text", "json"]),
        readers: S,
        crd_field: None,
    },
    free(
        "DKN_AUTH_LOG_LEVEL",
        "Log filter of the sidecar (tracing syntax).",
        Some("info"),
        "a tracing filter",
        S,
    ),
    int(
        "DKN_AUTH_MAX_BODY_BYTES",
        "Largest request body in bytes.",
        "1048576",
        1024,
        64 << 20,
        S,
    ),
    PREFIX,
    REDIS_CA_FILE,
    REDIS_MAX_CONN,
    REDIS_MIN_REPLICAS,
    free(
        "DKN_AUTH_REDIS_PASSWORD",
        "Redis password, used when the URI carries none.",
        None,
        "a secret",
        S,
    ),
    free(
        "DKN_AUTH_REDIS_URI",
        "redis://, rediss://, redis+sentinel://host:port,host:port/master[/db] or redis+cluster://host:port,host:port/ (rediss+cluster:// for TLS).",
        Some("redis://localhost:6379/1"),
        "a Redis URI",
        S,
    ),
    int(
        "DKN_AUTH_REFRESH_INTERVAL",
        "Seconds between refreshes of a session's expiry by the addon (0: every request).",
        "3600",
        0,
        MAX_TTL_SECS,
        A,
    ),
    free(
        "DKN_AUTH_SOCKET",
        "Unix socket path: the sidecar listens on it instead of TCP, the addon connects to it.",
        None,
        "an absolute path",
        SA,
    ),
    Setting {
        env: "DKN_AUTH_TIMEOUT",
        description: "Seconds the addon waits for one answer of the sidecar.",
        default: Some("2.0"),
        format: Format::Decimal {
            min: 0.01,
            max: 60.0,
        },
        readers: A,
        crd_field: None,
    },
    int(
        "DKN_AUTH_TOMBSTONE_TTL",
        "Seconds a deleted session id refuses writes.",
        "300",
        1,
        86_400,
        S,
    ),
    free(
        "DKN_AUTH_URL",
        "The sidecar's address as the addon reaches it.",
        Some("http://127.0.0.1:7070"),
        "http://host:port, no path",
        A,
    ),
];

impl Setting {
    const fn with_format(mut self, format: Format) -> Setting {
        self.format = format;
        self
    }

    /// The `odoo.conf` `[options]` key: the variable's name in lower case.
    pub fn odoo_conf_key(&self) -> String {
        self.env.to_ascii_lowercase()
    }

    pub fn read_by(&self, reader: Reader) -> bool {
        self.readers.contains(&reader)
    }

    /// Bounds of an integer setting.
    pub fn int_bounds(&self) -> Option<(i64, i64)> {
        match self.format {
            Format::Integer { min, max } => Some((min, max)),
            _ => None,
        }
    }

    /// The anchored regular expression of a text setting (RE2 and ECMAScript alike: what a
    /// CRD's `pattern` takes).
    pub fn pattern(&self) -> Option<String> {
        match self.format {
            Format::Text {
                min_len,
                max_len,
                first,
                rest,
                ..
            } => {
                let class = |c: Chars| {
                    let mut s = String::from("[");
                    for &(a, b) in c {
                        push_escaped(&mut s, a);
                        if a != b {
                            s.push('-');
                            push_escaped(&mut s, b);
                        }
                    }
                    s.push(']');
                    s
                };
                let more = format!("{{{},{}}}", min_len.saturating_sub(1), max_len - 1);
                Some(if first == rest {
                    format!("^{}{{{min_len},{max_len}}}$", class(first))
                } else {
                    format!("^{}{}{more}$", class(first), class(rest))
                })
            }
            _ => None,
        }
    }

    /// Checks an integer value; the error names the variable and the bounds.
    pub fn check_int(&self, value: i64) -> Result<(), String> {
        match self.format {
            Format::Integer { min, max } if (min..=max).contains(&value) => Ok(()),
            Format::Integer { min, max } => Err(format!(
                "{} must be from {min} to {max}, got {value}",
                self.env
            )),
            _ => Err(format!("{} is not a whole number setting", self.env)),
        }
    }

    /// Checks a `Choice` value; the error names the variable and the words.
    pub fn check_choice(&self, value: &str) -> Result<(), String> {
        match self.format {
            Format::Choice(words) if words.contains(&value) => Ok(()),
            Format::Choice(words) => Err(format!(
                "{} must be one of {}, got {value:?}",
                self.env,
                words.join(", ")
            )),
            _ => Err(format!("{} is not a choice", self.env)),
        }
    }

    /// Checks a text value against the table's characters and lengths.
    pub fn check_text(&self, value: &str) -> Result<(), String> {
        let Format::Text {
            min_len,
            max_len,
            first,
            rest,
            rule,
        } = self.format
        else {
            return Err(format!("{} is not a text setting", self.env));
        };
        let within = |c: char, set: Chars| set.iter().any(|&(a, b)| a <= c && c <= b);
        let n = value.chars().count();
        let ok = (min_len..=max_len).contains(&n)
            && value
                .chars()
                .enumerate()
                .all(|(i, c)| within(c, if i == 0 { first } else { rest }));
        if ok {
            Ok(())
        } else {
            Err(format!("{} must be {rule}, got {value:?}", self.env))
        }
    }

    /// The setting as the JSON export writes it.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "env": self.env,
            "odooConfKey": self.odoo_conf_key(),
            "description": self.description,
            "readers": self.readers.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
            "default": self.default,
            "crdField": self.crd_field,
        });
        let o = v.as_object_mut().expect("object");
        match self.format {
            Format::Integer { min, max } => {
                o.insert("type".into(), json!("integer"));
                o.insert("minimum".into(), json!(min));
                o.insert("maximum".into(), json!(max));
            }
            Format::Decimal { min, max } => {
                o.insert("type".into(), json!("number"));
                o.insert("minimum".into(), json!(min));
                o.insert("maximum".into(), json!(max));
            }
            Format::Text {
                min_len,
                max_len,
                rule,
                ..
            } => {
                o.insert("type".into(), json!("string"));
                o.insert("minLength".into(), json!(min_len));
                o.insert("maxLength".into(), json!(max_len));
                o.insert("pattern".into(), json!(self.pattern()));
                o.insert("rule".into(), json!(rule));
            }
            Format::Choice(words) => {
                o.insert("type".into(), json!("string"));
                o.insert("enum".into(), json!(words));
            }
            Format::Boolean => {
                o.insert("type".into(), json!("boolean"));
            }
            Format::Free(what) => {
                o.insert("type".into(), json!("string"));
                o.insert("format".into(), json!(what));
            }
        }
        v
    }
}

fn push_escaped(s: &mut String, c: char) {
    if matches!(c, '\\' | ']' | '[' | '^' | '-') {
        s.push('\\');
    }
    s.push(c);
}

/// The setting named `env`.
pub fn setting(env: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.env == env)
}

/// The whole contract as `docs/settings-contract.json` holds it.
pub fn contract_json() -> Value {
    json!({
        "description": "Settings contract of odoo-ha-session, generated from contract/src/lib.rs by `cargo run -p odoo-ha-contract --bin contractgen`; do not edit.",
        "precedence": "command-line flag (sidecar) > environment variable > odoo.conf [options] key (the variable's name in lower case) > default; an empty value or Odoo's False counts as unset",
        "settings": SETTINGS.iter().map(Setting::to_json).collect::<Vec<_>>(),
    })
}

/// [`contract_json`] as pretty text with a final newline.
pub fn contract_text() -> String {
    let mut s = serde_json::to_string_pretty(&contract_json()).expect("JSON");
    s.push('\n');
    s
}

/// The contract as a Markdown table (setting, odoo.conf key, read by, default, accepted
/// values), for the README and the docs: `contractgen --markdown`.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| setting | odoo.conf key | read by | default | accepted |\n|---|---|---|---|---|\n",
    );
    for s in SETTINGS {
        let accepted = match s.format {
            Format::Integer { min, max } => format!("{min} to {max}"),
            Format::Decimal { min, max } => format!("{min} to {max}"),
            Format::Text { rule, .. } => rule.to_string(),
            Format::Choice(w) => w
                .iter()
                .map(|w| format!("`{w}`"))
                .collect::<Vec<_>>()
                .join(", "),
            Format::Boolean => "`true` or `false`".to_string(),
            Format::Free(what) => what.to_string(),
        };
        let readers: Vec<&str> = s.readers.iter().map(|r| r.as_str()).collect();
        let crd = s
            .crd_field
            .map(|f| format!(" (operator: `{f}`)"))
            .unwrap_or_default();
        out.push_str(&format!(
            "| `{}` | `{}` | {}{crd} | {} | {} |\n",
            s.env,
            s.odoo_conf_key(),
            readers.join(", "),
            s.default.map_or("none".to_string(), |d| format!("`{d}`")),
            accepted.replace('|', "\\|"),
        ));
    }
    out
}

/// Where the generated file lives, relative to the workspace root.
pub const JSON_PATH: &str = "docs/settings-contract.json";

/// A path in the repository, from the package directory cargo gives a binary or a test when
/// it runs it (every package is one level below the repository's root); `built_in`, the
/// caller's `env!("CARGO_MANIFEST_DIR")`, only when run outside cargo. A build cached from
/// another checkout would otherwise read, or write, that checkout's files.
pub fn repo_path(built_in: &str, rel: &str) -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| built_in.into())
        .join("..")
        .join(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_file(rel: &str) -> std::path::PathBuf {
        repo_path(env!("CARGO_MANIFEST_DIR"), rel)
    }

    #[test]
    fn names_are_sorted_unique_and_dkn_auth() {
        let names: Vec<&str> = SETTINGS.iter().map(|s| s.env).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
        assert!(names.iter().all(|n| n.starts_with("DKN_AUTH_")));
    }

    #[test]
    fn defaults_satisfy_their_own_format() {
        for s in SETTINGS {
            let Some(d) = s.default else { continue };
            match s.format {
                Format::Integer { .. } => s.check_int(d.parse().expect("integer default")).unwrap(),
                Format::Decimal { min, max } => {
                    let v: f64 = d.parse().expect("decimal default");
                    assert!(min <= v && v <= max, "{}", s.env);
                }
                Format::Text { .. } => s.check_text(d).unwrap(),
                Format::Choice(w) => assert!(w.contains(&d), "{}", s.env),
                Format::Boolean => assert!(matches!(d, "true" | "false"), "{}", s.env),
                Format::Free(_) => {}
            }
        }
    }

    #[test]
    fn patterns_agree_with_the_rust_check() {
        let samples = [
            "session:",
            "a{b",
            "a}b",
            "a b",
            "a*",
            "a?",
            "[x]",
            "tab\there",
            "é",
            "",
            "dkn_auth_sessions",
            "9table",
            "_t9",
            "UPPER",
            "back\\slash",
            "caret^",
            "dash-",
            "pipe|tilde~",
            "a\u{7f}",
        ];
        let long = "x".repeat(64);
        let longer = "x".repeat(65);
        for s in SETTINGS {
            let Some(p) = s.pattern() else { continue };
            let re = regex::Regex::new(&p).expect("pattern compiles");
            for v in samples
                .iter()
                .copied()
                .chain([long.as_str(), longer.as_str()])
            {
                assert_eq!(
                    re.is_match(v),
                    s.check_text(v).is_ok(),
                    "{} pattern {p} and check disagree on {v:?}",
                    s.env
                );
            }
        }
        assert_eq!(
            PREFIX.pattern().as_deref(),
            Some(r"^[!-)+->@-Z\\\^-z|~]{1,64}$")
        );
    }

    #[test]
    fn prefix_refuses_what_the_issue_found() {
        assert!(PREFIX.check_text("a{b").is_err());
        assert!(EXPIRY.check_int(40_000_000).is_err());
        assert!(ANONYMOUS_EXPIRY.check_int(40_000_000).is_err());
        assert!(EXPIRY.check_int(MAX_TTL_SECS).is_ok());
    }

    /// The README's settings table is written by hand: every row it has must name a
    /// setting of the contract and give the contract's default (or none / required).
    #[test]
    fn readme_rows_agree_with_the_contract() {
        let path = repo_file("README.md");
        let readme =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut rows = 0;
        for line in readme.lines() {
            let Some(rest) = line.strip_prefix("| `DKN_AUTH_") else {
                continue;
            };
            let Some((name, _)) = rest.split_once('`') else {
                continue;
            };
            let env = format!("DKN_AUTH_{name}");
            let s = setting(&env)
                .unwrap_or_else(|| panic!("README.md lists {env}, the contract does not"));
            let default_col = line
                .trim_end_matches('|')
                .rsplit('|')
                .next()
                .unwrap_or("")
                .trim();
            match s.default {
                Some(d) => assert!(
                    default_col.starts_with(&format!("`{d}`")),
                    "README.md gives {env} the default {default_col:?}, the contract `{d}`"
                ),
                None => assert!(
                    !default_col.starts_with('`'),
                    "README.md gives {env} a default {default_col:?}, the contract none"
                ),
            }
            rows += 1;
        }
        assert!(rows >= 10, "{rows} rows read from README.md");
    }

    /// Issue 9 item 3: the external backend's CA Secret sets the CA file of either driver,
    /// and its minReplicas the Redis WAIT count.
    #[test]
    fn external_backend_fields_name_their_settings() {
        for env in ["DKN_AUTH_REDIS_CA_FILE", "DKN_AUTH_DB_CA_FILE"] {
            assert_eq!(
                setting(env).and_then(|s| s.crd_field),
                Some("spec.backend.external.caSecretRef"),
                "{env}"
            );
        }
        let min = setting("DKN_AUTH_REDIS_MIN_REPLICAS").expect("listed");
        assert_eq!(min, &REDIS_MIN_REPLICAS);
        assert_eq!(min.crd_field, Some("spec.backend.external.minReplicas"));
        assert_eq!(min.int_bounds(), Some((0, 16)));
        assert!(min.check_int(17).is_err());
    }

    #[test]
    fn markdown_lists_every_setting() {
        let t = markdown_table();
        assert_eq!(t.lines().count(), SETTINGS.len() + 2);
        assert!(t.contains("| `DKN_AUTH_EXPIRY` | `dkn_auth_expiry` | sidecar, addon (operator: `spec.expirySeconds`) | `604800` | 60 to 31536000 |"), "{t}");
    }

    #[test]
    fn the_checked_in_json_is_current() {
        let path = repo_file("docs/settings-contract.json");
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == contract_text(),
            "{} differs from contract/src/lib.rs: run `cargo run -p odoo-ha-contract --bin contractgen`",
            path.display()
        );
    }
}

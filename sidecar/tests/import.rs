//! `odoo-session-sidecar import`: the binary run against real Redis and PostgreSQL servers,
//! with session files written by Python the way each Odoo version writes them, a
//! camptocamp-style `session_redis` database and an OCA-style `session_db` table.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use odoo_ha_testkit::{PostgresServer, RedisServer};
use odoo_session_sidecar::config::{Args, Settings};
use odoo_session_sidecar::model::{Condition, Fields, Sid};
use odoo_session_sidecar::store::{self, Store};

static REDIS: OnceLock<RedisServer> = OnceLock::new();
static POSTGRES: OnceLock<PostgresServer> = OnceLock::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

const WEEK: u64 = 7 * 24 * 3600;

fn redis() -> &'static RedisServer {
    REDIS.get_or_init(RedisServer::start)
}

fn postgres() -> &'static PostgresServer {
    POSTGRES.get_or_init(PostgresServer::start)
}

fn unique() -> String {
    format!(
        "t{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[derive(Clone, Copy, Debug)]
enum Target {
    Redis,
    Postgres,
}

/// The target store's settings: a prefix of its own on the shared server.
fn target_flags(target: Target) -> Vec<String> {
    let mut flags = vec![format!("--prefix={}:", unique())];
    match target {
        Target::Redis => {
            flags.push("--driver=redis".into());
            flags.push(format!("--redis-uri={}", redis().url()));
        }
        Target::Postgres => {
            flags.push("--driver=db".into());
            flags.push(format!("--db-uri={}", postgres().url()));
        }
    }
    flags
}

async fn open(flags: &[String]) -> Store {
    let mut argv = vec!["odoo-session-sidecar".to_string()];
    argv.extend(flags.iter().cloned());
    let settings = Settings::from_args(&Args::parse_from(argv)).expect("settings");
    let store = store::open(&settings).expect("store");
    for _ in 0..100 {
        if store.ping().await.is_ok() {
            return store;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("target store not ready");
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The `key=value` counts of the summary line.
    fn counts(&self) -> HashMap<String, u64> {
        let line = self.stdout.lines().last().unwrap_or("");
        line.split([' ', '(', ')', ','])
            .filter_map(|t| t.split_once('='))
            .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
            .collect()
    }

    fn count(&self, key: &str) -> u64 {
        self.counts().get(key).copied().unwrap_or(0)
    }
}

fn import(args: &[String]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_odoo-session-sidecar"))
        .arg("import")
        .args(args)
        .env_remove("DKN_AUTH_DRIVER")
        .env_remove("DKN_AUTH_PREFIX")
        .output()
        .expect("run the binary");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn python(script: &str, args: &[&str]) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sid(head: &str, fill: char, len: usize) -> String {
    format!("{head}{}", fill.to_string().repeat(len - head.len()))
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Asserts the stored TTL is `expected_end` (Unix seconds) minus now, within a second.
fn assert_ttl(ttl: Duration, expected_end: f64, what: &str) {
    let expected = expected_end - now_unix();
    let got = ttl.as_secs_f64();
    assert!(
        (got - expected).abs() <= 1.0,
        "{what}: ttl {got:.3} s, expected {expected:.3} s"
    );
}

async fn fields(store: &Store, sid: &str) -> Option<(Fields, Duration)> {
    store
        .get(&Sid::parse(sid).unwrap())
        .await
        .expect("get")
        .map(|s| (s.fields, s.ttl))
}

fn one(k: &str, v: &str) -> Fields {
    [(k.to_string(), v.to_string())].into()
}

// ---------------------------------------------------------------------------------------
// Odoo's session files

/// Writes a session directory as Odoo 14 to 19 do: `werkzeug_<sid>.sess` pickles (14/15,
/// protocol 4 as on Python 3.6/3.7 and HIGHEST_PROTOCOL), `<sid[:2]>/<sid>` pickles (16/17,
/// HIGHEST_PROTOCOL) and JSON (18/19, 84-character sids), plus an expired one, a
/// malicious pickle, a datetime, a bad name and a save in progress. Ages in seconds.
const WRITE_FILES: &str = r#"
import json, os, pickle, sys, time, datetime
d, marker = sys.argv[1], sys.argv[2]
sids = json.loads(sys.argv[3])
now = time.time()
def put(rel, data, age):
    p = os.path.join(d, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, 'wb') as f:
        f.write(data)
    os.utime(p, (now - age, now - age))
base = {'db': 'odoo', 'login': 'admin', 'uid': 2, 'debug': '', 'session_token': 'tok',
        'context': {'lang': 'en_US', 'tz': 'Europe/Brussels', 'uid': 2}}
def legacy(version):
    s = dict(base)
    s['viewed_slides'] = {3: True, 1: False}
    s['website_sale_stock_ids'] = {3, 1, 2}
    s['pair'] = ('a', 1)
    s['ratio'] = 1.5
    s['version'] = version
    return s
put('werkzeug_%s.sess' % sids['14'], pickle.dumps(legacy(14), 4), 86400)
put('werkzeug_%s.sess' % sids['15'], pickle.dumps(legacy(15), pickle.HIGHEST_PROTOCOL), 3600)
for v in ('16', '17'):
    put('%s/%s' % (sids[v][:2], sids[v]), pickle.dumps(legacy(int(v)), pickle.HIGHEST_PROTOCOL), 7200)
for v in ('18', '19'):
    s = dict(base, _trace=[], version=int(v))
    if v == '19':
        s['create_time'] = now
    put('%s/%s' % (sids[v][:2], sids[v]), json.dumps(s).encode(), 600)
put('%s/%s' % (sids['expired'][:2], sids['expired']), pickle.dumps(base, pickle.HIGHEST_PROTOCOL), 8 * 86400)
put('%s/%s' % (sids['present'][:2], sids['present']), pickle.dumps(base, pickle.HIGHEST_PROTOCOL), 60)
class Evil:
    def __reduce__(self):
        return (os.system, ('touch ' + marker,))
put('%s/%s' % (sids['evil'][:2], sids['evil']), pickle.dumps(dict(base, x=Evil()), pickle.HIGHEST_PROTOCOL), 60)
put('werkzeug_%s.sess' % sids['datetime'], pickle.dumps(dict(base, when=datetime.datetime(2024, 1, 2, 3, 4, 5)), 4), 60)
put('werkzeug_NOT-A-SID.sess', pickle.dumps(base, 4), 60)
put('werkzeug_x.sess.__wz_sess', b'partial', 60)
"#;

/// Decodes a stored 16/17 session with the addon's own codec, as dkn_auth would read it.
const ADDON_DECODE: &str = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
import codec
data = codec.decode(json.loads(sys.argv[2]))
assert data['website_sale_stock_ids'] == {1, 2, 3}, data
assert data['viewed_slides'] == {'1': False, '3': True}, data
assert data['pair'] == ['a', 1] and data['ratio'] == 1.5 and data['uid'] == 2, data
"#;

struct FileSids {
    map: HashMap<&'static str, String>,
}

impl FileSids {
    fn new() -> Self {
        let map: HashMap<&str, String> = [
            ("14", sid("14", 'a', 40)),
            ("15", sid("15", 'b', 40)),
            ("16", sid("16", 'c', 40)),
            ("17", sid("17", 'd', 40)),
            ("18", sid("18A-", 'x', 84)),
            ("19", sid("19B_", 'y', 84)),
            ("expired", sid("e0", 'e', 40)),
            ("present", sid("ee", 'f', 40)),
            ("evil", sid("ba", 'd', 40)),
            ("datetime", sid("da", '7', 40)),
        ]
        .into();
        FileSids { map }
    }

    fn json(&self) -> String {
        serde_json::to_string(&self.map).unwrap()
    }
}

fn mtime(path: &Path) -> f64 {
    std::fs::metadata(path)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

async fn files_into(target: Target) {
    let dir = tempfile::tempdir().unwrap();
    let sessions = dir.path().join("sessions");
    std::fs::create_dir(&sessions).unwrap();
    let marker = dir.path().join("pwned");
    let sids = FileSids::new();
    python(
        WRITE_FILES,
        &[
            sessions.to_str().unwrap(),
            marker.to_str().unwrap(),
            &sids.json(),
        ],
    );
    let flags = target_flags(target);
    let store = open(&flags).await;
    // A newer session already in the store (written by dkn_auth after the switch).
    store
        .put(
            &Sid::parse(&sids.map["present"]).unwrap(),
            one("newer", "true"),
            Duration::from_secs(3600),
            Condition::CreateOnly,
        )
        .await
        .unwrap();

    let mut args = vec!["files".to_string(), sessions.display().to_string()];
    args.extend(flags.iter().cloned());
    let dry = import(&[args.clone(), vec!["--dry-run".into()]].concat());
    assert_eq!(dry.code, 0, "{} {}", dry.stdout, dry.stderr);
    assert!(dry.stdout.contains("dry run"), "{}", dry.stdout);
    assert_eq!(dry.count("would_import"), 6, "{}", dry.stdout);
    assert!(
        fields(&store, &sids.map["16"]).await.is_none(),
        "dry run wrote"
    );

    let first = import(&args);
    assert_eq!(first.code, 0, "{} {}", first.stdout, first.stderr);
    assert_eq!(
        first.stdout.lines().count(),
        1,
        "one summary line: {}",
        first.stdout
    );
    assert_eq!(first.count("imported"), 6, "{}", first.stdout);
    assert_eq!(first.count("already_present"), 1, "{}", first.stdout);
    assert_eq!(first.count("expired"), 1, "{}", first.stdout);
    assert_eq!(first.count("skipped"), 3, "{}", first.stdout);
    assert_eq!(first.count("pickle_global"), 2, "{}", first.stdout);
    assert_eq!(first.count("invalid_sid"), 1, "{}", first.stdout);
    assert!(
        first.stderr.contains("os.system") || first.stderr.contains("posix.system"),
        "the reason names the global: {}",
        first.stderr
    );
    assert!(
        first.stderr.contains("datetime.datetime"),
        "{}",
        first.stderr
    );
    assert!(!marker.exists(), "the malicious pickle ran");

    // Values as dkn_auth stores them on 14-17, and read back by the addon's codec.
    for v in ["14", "15", "16", "17"] {
        let (f, ttl) = fields(&store, &sids.map[v]).await.expect(v);
        assert_eq!(
            f["website_sale_stock_ids"],
            r#"{"_type":"set","value":[1,2,3]}"#
        );
        assert_eq!(f["viewed_slides"], r#"{"1":false,"3":true}"#);
        assert_eq!(f["pair"], r#"["a",1]"#);
        assert_eq!(f["version"], v);
        let file = if v == "14" || v == "15" {
            sessions.join(format!("werkzeug_{}.sess", sids.map[v]))
        } else {
            sessions.join(&sids.map[v][..2]).join(&sids.map[v])
        };
        assert_ttl(ttl, mtime(&file) + WEEK as f64, v);
        let mut text = String::new();
        odoo_session_sidecar::model::write_object(&f, &mut text);
        let client =
            odoo_ha_contract::repo_path(env!("CARGO_MANIFEST_DIR"), "addons/dkn_auth/client");
        python(ADDON_DECODE, &[&client.to_string_lossy(), &text]);
    }
    for v in ["18", "19"] {
        let (f, ttl) = fields(&store, &sids.map[v]).await.expect(v);
        assert_eq!(f["_trace"], "[]");
        assert_eq!(
            f["context"],
            r#"{"lang":"en_US","tz":"Europe/Brussels","uid":2}"#
        );
        let file = sessions.join(&sids.map[v][..2]).join(&sids.map[v]);
        assert_ttl(ttl, mtime(&file) + WEEK as f64, v);
    }
    let (present, _) = fields(&store, &sids.map["present"]).await.unwrap();
    assert_eq!(
        present,
        one("newer", "true"),
        "a newer session was overwritten"
    );
    assert!(fields(&store, &sids.map["expired"]).await.is_none());

    let second = import(&args);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(second.count("imported"), 0, "{}", second.stdout);
    assert_eq!(second.count("already_present"), 7, "{}", second.stdout);

    // --since the first run's start: nothing was written since.
    let started = first.count("started").to_string();
    let third = import(&[args.clone(), vec!["--since".into(), started]].concat());
    assert_eq!(third.count("unchanged_since"), 10, "{}", third.stdout);
    assert_eq!(third.count("imported"), 0, "{}", third.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_into_redis() {
    files_into(Target::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_into_postgres() {
    files_into(Target::Postgres).await;
}

// ---------------------------------------------------------------------------------------
// camptocamp session_redis

async fn session_redis_into(target: Target) {
    // camptocamp's keys with ODOO_SESSION_REDIS_PREFIX set: session::<prefix>:<sid>, in a
    // database of their own.
    let source_uri = redis().url().replace("/0", "/5");
    let prefix = format!("session::{}:", unique());
    let client = redis::Client::open(source_uri.as_str()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let legacy = sid("16", '0', 40);
    let modern = sid("18-_", 'Z', 84);
    let no_ttl = sid("17", '1', 40);
    let present = sid("ee", '2', 40);
    let tagged = r#"{"uid": 2, "login": "admin", "db": "odoo", "context": {"lang": "en_US"}, "ids": {"_type": "set", "value": [2, 1]}, "day": {"_type": "date_isoformat", "value": "2024-05-01"}}"#;
    let plain = r#"{"uid": 2, "login": "admin", "db": "odoo", "_trace": [], "context": {}}"#;
    let set = |key: String, value: &str, ttl_ms: Option<u64>| {
        let mut p = redis::pipe();
        p.cmd("SET").arg(&key).arg(value);
        if let Some(ms) = ttl_ms {
            p.cmd("PEXPIRE").arg(&key).arg(ms);
        }
        p
    };
    for p in [
        set(format!("{prefix}{legacy}"), tagged, Some(3_600_000)),
        set(format!("{prefix}{modern}"), plain, Some(7_200_000)),
        set(format!("{prefix}{no_ttl}"), plain, None),
        set(format!("{prefix}{present}"), plain, Some(3_600_000)),
        set(format!("{prefix}not-a-sid"), plain, Some(3_600_000)),
        set(
            format!("{prefix}{}", sid("ab", '3', 40)),
            "not json",
            Some(3_600_000),
        ),
        set(
            format!("other:{}", sid("cd", '4', 40)),
            plain,
            Some(3_600_000),
        ),
    ] {
        let _: () = p.query_async(&mut c).await.unwrap();
    }
    let set_at = now_unix();

    let flags = target_flags(target);
    let store = open(&flags).await;
    store
        .put(
            &Sid::parse(&present).unwrap(),
            one("newer", "true"),
            Duration::from_secs(600),
            Condition::CreateOnly,
        )
        .await
        .unwrap();
    let mut args = vec![
        "session_redis".to_string(),
        "--from".into(),
        source_uri.clone(),
        "--from-prefix".into(),
        prefix.clone(),
        "--max-age".into(),
        "1000".into(),
    ];
    args.extend(flags.iter().cloned());
    let first = import(&args);
    assert_eq!(first.code, 0, "{} {}", first.stdout, first.stderr);
    assert_eq!(first.count("imported"), 3, "{}", first.stdout);
    assert_eq!(first.count("already_present"), 1, "{}", first.stdout);
    assert_eq!(first.count("invalid_sid"), 1, "{}", first.stdout);
    assert_eq!(first.count("unreadable"), 1, "{}", first.stdout);
    assert_eq!(first.count("skipped"), 2, "{}", first.stdout);

    let (f, ttl) = fields(&store, &legacy).await.unwrap();
    assert_eq!(
        f["ids"], r#"{"_type":"set","value":[2,1]}"#,
        "tags copied as they are"
    );
    assert_eq!(
        f["day"],
        r#"{"_type":"date_isoformat","value":"2024-05-01"}"#
    );
    assert_ttl(ttl, set_at + 3600.0, "PTTL kept");
    let (_, ttl) = fields(&store, &modern).await.unwrap();
    assert_ttl(ttl, set_at + 7200.0, "PTTL kept (84-character sid)");
    let (_, ttl) = fields(&store, &no_ttl).await.unwrap();
    assert_ttl(ttl, set_at + 1000.0, "a key without a TTL gets --max-age");
    assert_eq!(
        fields(&store, &present).await.unwrap().0,
        one("newer", "true")
    );

    let second = import(&args);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(second.count("imported"), 0, "{}", second.stdout);
    assert_eq!(second.count("already_present"), 4, "{}", second.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_redis_into_redis() {
    session_redis_into(Target::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_redis_into_postgres() {
    session_redis_into(Target::Postgres).await;
}

// ---------------------------------------------------------------------------------------
// OCA session_db

async fn session_db_into(target: Target) {
    let table = format!("http_sessions_{}", unique());
    let (pg, conn) = tokio_postgres::connect(&postgres().url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // session_db's own table definition and upsert (write_date in UTC, now() at time zone).
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (sid varchar PRIMARY KEY, write_date timestamp without time zone NOT NULL, payload text NOT NULL)"
    ))
    .await
    .unwrap();
    let legacy = sid("16", '5', 40);
    let modern = sid("18__", 'Q', 84);
    let expired = sid("e1", '6', 40);
    let present = sid("ef", '7', 40);
    let rows: [(&str, i64, &str); 6] = [
        (
            &legacy,
            3600,
            r#"{"uid": 2, "db": "odoo", "context": {"lang": "fr_BE"}}"#,
        ),
        (
            &modern,
            2 * 86400,
            r#"{"uid": 2, "db": "odoo", "_trace": []}"#,
        ),
        (&expired, 8 * 86400, r#"{"uid": 2}"#),
        (&present, 60, r#"{"uid": 2}"#),
        ("short", 60, r#"{"uid": 2}"#),
        (
            &sid("ac", '8', 40),
            60,
            "{\"uid\": 99999999999999999999999}",
        ),
    ];
    for (sid, age, payload) in rows {
        pg.execute(
            &format!("INSERT INTO {table} VALUES ($1, (now() AT TIME ZONE 'UTC') - make_interval(secs => $2), $3)"),
            &[&sid, &(age as f64), &payload],
        )
        .await
        .unwrap();
    }
    let inserted_at = now_unix();

    let flags = target_flags(target);
    let store = open(&flags).await;
    store
        .put(
            &Sid::parse(&present).unwrap(),
            one("newer", "true"),
            Duration::from_secs(600),
            Condition::CreateOnly,
        )
        .await
        .unwrap();
    let mut args = vec![
        "session_db".to_string(),
        "--from".into(),
        postgres().url(),
        "--from-table".into(),
        table.clone(),
    ];
    args.extend(flags.iter().cloned());
    let first = import(&args);
    assert_eq!(first.code, 0, "{} {}", first.stdout, first.stderr);
    assert_eq!(first.count("imported"), 2, "{}", first.stdout);
    assert_eq!(first.count("already_present"), 1, "{}", first.stdout);
    assert_eq!(first.count("expired"), 1, "{}", first.stdout);
    assert_eq!(first.count("invalid_sid"), 1, "{}", first.stdout);
    assert_eq!(first.count("not_storable"), 1, "{}", first.stdout);

    let (f, ttl) = fields(&store, &legacy).await.unwrap();
    assert_eq!(f["context"], r#"{"lang":"fr_BE"}"#);
    assert_ttl(
        ttl,
        inserted_at - 3600.0 + WEEK as f64,
        "write_date + 7 days",
    );
    let (_, ttl) = fields(&store, &modern).await.unwrap();
    assert_ttl(
        ttl,
        inserted_at - 2.0 * 86400.0 + WEEK as f64,
        "write_date + 7 days",
    );
    assert!(fields(&store, &expired).await.is_none());
    assert_eq!(
        fields(&store, &present).await.unwrap().0,
        one("newer", "true")
    );

    let second = import(&args);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(second.count("imported"), 0, "{}", second.stdout);
    assert_eq!(second.count("already_present"), 3, "{}", second.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_db_into_redis() {
    session_db_into(Target::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_db_into_postgres() {
    session_db_into(Target::Postgres).await;
}

// ---------------------------------------------------------------------------------------
// Arguments and an unreachable target

#[test]
fn bad_arguments_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    for (args, says) in [
        (vec!["mongo", "--driver=redis"], "unknown source"),
        (vec!["files", "--driver=redis"], "session directory"),
        (
            vec!["files", "/nonexistent/x", "--driver=redis"],
            "not a directory",
        ),
        (vec!["session_redis", "--driver=redis"], "--from"),
        (
            vec![
                "session_db",
                "--from=redis://h",
                "--driver=db",
                "--db-uri=postgresql://h/x",
            ],
            "postgresql://",
        ),
        (
            vec!["files", &d, "--driver=memory"],
            "DKN_AUTH_DRIVER=memory",
        ),
        (vec!["files", &d], "DKN_AUTH_DRIVER is required"),
        (
            vec!["files", &d, "--driver=redis", "--since=yesterday"],
            "--since",
        ),
        (
            vec!["files", &d, "--driver=redis", "--max-age=0"],
            "--max-age",
        ),
        (vec!["files", &d, "--driver=redis", "--bogus"], "--bogus"),
    ] {
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        let run = import(&args);
        assert_eq!(run.code, 2, "{args:?}: {} {}", run.stdout, run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
    }
}

#[test]
fn unreachable_target_fails() {
    let dir = tempfile::tempdir().unwrap();
    let port = odoo_ha_testkit::free_port();
    let run = import(&[
        "files".into(),
        dir.path().display().to_string(),
        "--driver=redis".into(),
        format!("--redis-uri=redis://127.0.0.1:{port}/0"),
        "--backend-timeout-ms=200".into(),
    ]);
    assert_ne!(run.code, 0);
    assert_ne!(run.code, 2, "not an argument error");
    assert!(run.stderr.contains("unreachable"), "{}", run.stderr);
}

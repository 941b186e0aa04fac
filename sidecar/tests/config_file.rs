//! The seed module's configuration, unchanged: one odoo.conf with only the original
//! `dkn_auth_*` keys and Odoo's own `db_*` settings, read by the real binary against a real
//! PostgreSQL (a role with a password, TCP on loopback, and Odoo's Unix socket form), and
//! errors that name each setting as the user wrote it (file key, variable or flag).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::Method;
use odoo_ha_testkit::{free_port, Client, PostgresServer};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_odoo-session-sidecar");

/// Odoo's usual role: a login with a password and its own database.
const ROLE: &str = "odoo_seed";
const PASSWORD: &str = "s3cret 'pw' \\ with spaces";
const DB: &str = "odoo_prod";

fn command() -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("DKN_AUTH_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pg_bin(name: &str) -> PathBuf {
    let mut dirs: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} not found (apt-get install postgresql)"))
}

/// One statement as the superuser (trusted on loopback); its output.
fn psql(pg: &PostgresServer, db: &str, sql: &str) -> String {
    let out = Command::new(pg_bin("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(["-d", db, "-v", "ON_ERROR_STOP=1", "-Atc", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A PostgreSQL where `ROLE` must give its password over TCP (scram-sha-256), the superuser
/// stays trusted on loopback (for psql and the testkit), and the Unix socket trusts everyone.
fn postgres_with_password_role() -> PostgresServer {
    let pg = PostgresServer::start();
    let quoted = PASSWORD.replace('\'', "''");
    psql(
        &pg,
        "postgres",
        &format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{quoted}'"),
    );
    psql(
        &pg,
        "postgres",
        &format!("CREATE DATABASE {DB} OWNER {ROLE}"),
    );
    let hba = psql(&pg, "postgres", "SHOW hba_file");
    std::fs::write(
        &hba,
        "local all all trust\n\
         host all postgres 127.0.0.1/32 trust\n\
         host all all 127.0.0.1/32 scram-sha-256\n",
    )
    .expect("write pg_hba.conf");
    psql(&pg, "postgres", "SELECT pg_reload_conf()");
    pg
}

fn write_conf(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write odoo.conf");
    path
}

/// The seed user's odoo.conf: Odoo's keys, Odoo's database settings, the original module's
/// keys, and nothing of this project's.
fn seed_conf(pg: &PostgresServer, password: &str) -> String {
    format!(
        "[options]\n\
         admin_passwd = admin\n\
         addons_path = /opt/odoo/addons,/mnt/extra-addons\n\
         data_dir = /var/lib/odoo\n\
         db_host = 127.0.0.1\n\
         db_port = {port}\n\
         db_user = {ROLE}\n\
         db_password = {password}\n\
         db_name = {DB}\n\
         dbfilter = ^{DB}$\n\
         list_db = False\n\
         proxy_mode = True\n\
         workers = 2\n\
         server_wide_modules = base,web,dkn_auth\n\
         dkn_auth_driver = db\n\
         dkn_auth_prefix = seed:\n\
         dkn_auth_expiry = 3600\n\
         dkn_auth_redis_uri = redis://localhost:6379/1\n\
         dkn_auth_redis_max_conn = 8\n",
        port = pg.port
    )
}

fn start(conf: &Path) -> (Killed, String, std::sync::Arc<parking_lot::Mutex<String>>) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = command()
        .arg(format!("--config={}", conf.display()))
        .arg(format!("--listen={addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the sidecar");
    let log = std::sync::Arc::new(parking_lot::Mutex::new(String::new()));
    if let Some(err) = child.stderr.take() {
        let log = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut l = log.lock();
                l.push_str(&line);
                l.push('\n');
            }
        });
    }
    (Killed(child), addr, log)
}

/// Waits for `/readyz?backend=1` to answer 200 (the session table is ready); false after
/// `limit`.
async fn backend_ready(addr: &str, limit: Duration) -> bool {
    let mut c = Client::new(addr.to_owned());
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if matches!(c.get("/readyz?backend=1").await, Ok(r) if r.status == 200) {
            return true;
        }
        c = Client::new(addr.to_owned());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn round_trip(addr: &str, sid: &str) {
    let mut c = Client::new(addr.to_owned());
    let put = c
        .json(
            Method::PUT,
            &format!("/v1/sessions/{sid}"),
            &[("If-None-Match", "*")],
            &json!({"data": {"uid": 2, "login": "admin"}}),
        )
        .await
        .expect("PUT");
    assert_eq!(put.status, 201, "{:?}", put.body);
    let got = c.get(&format!("/v1/sessions/{sid}")).await.expect("GET");
    assert_eq!(got.status, 200);
    let body = got.json();
    assert_eq!(body["data"], json!({"uid": 2, "login": "admin"}));
    // dkn_auth_expiry = 3600 is the TTL of a write that names none.
    let ttl = body["ttl"].as_u64().expect("ttl");
    assert!((3590..=3600).contains(&ttl), "ttl {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_odoo_conf_uses_odoos_database_settings_on_real_postgres() {
    let pg = postgres_with_password_role();
    let dir = tempfile::tempdir().expect("tempdir");

    // TCP on loopback, the role's password from db_password, Odoo's default sslmode.
    let conf = write_conf(dir.path(), "odoo.conf", &seed_conf(&pg, PASSWORD));
    let (_sidecar, addr, log) = start(&conf);
    assert!(
        backend_ready(&addr, Duration::from_secs(20)).await,
        "the sidecar never reached PostgreSQL:\n{}",
        log.lock()
    );
    let sid = "0123456789abcdef0123456789abcdef01234567";
    round_trip(&addr, sid).await;
    // In db_name's database, owned by db_user, under dkn_auth_prefix.
    let row = psql(
        &pg,
        DB,
        &format!(
            "SELECT t.tableowner, s.ns, s.data->>'login' FROM dkn_auth_sessions s, pg_tables t \
             WHERE t.tablename = 'dkn_auth_sessions' AND s.sid = '{sid}'"
        ),
    );
    assert_eq!(row, format!("{ROLE}|seed:|admin"));

    // The same file with a wrong db_password: the password really is the one sent.
    let wrong = write_conf(
        dir.path(),
        "wrong.conf",
        &seed_conf(&pg, "not the password"),
    );
    let (_bad, bad_addr, bad_log) = start(&wrong);
    assert!(
        !backend_ready(&bad_addr, Duration::from_secs(3)).await,
        "a wrong db_password reached PostgreSQL"
    );
    // (The pool's log line says only "db error": the server's reason is not passed on.)
    let text = bad_log.lock().clone();
    assert!(text.contains("cannot prepare the session schema"), "{text}");

    // DKN_AUTH_DB_PASSWORD (a secret kept out of the file) wins over db_password.
    let mut cmd = command();
    let alt = format!("127.0.0.1:{}", free_port());
    let child = cmd
        .arg(format!("--config={}", wrong.display()))
        .arg(format!("--listen={alt}"))
        .env("DKN_AUTH_DB_PASSWORD", PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let _alt = Killed(child);
    assert!(backend_ready(&alt, Duration::from_secs(20)).await);
    round_trip(&alt, "89abcdef0123456789abcdef0123456789abcdef").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_host_as_a_socket_directory_and_dkn_auth_db_name() {
    let pg = postgres_with_password_role();
    psql(
        &pg,
        "postgres",
        &format!("CREATE DATABASE sessions OWNER {ROLE}"),
    );
    let socket_dir = psql(&pg, "postgres", "SHOW unix_socket_directories");
    let dir = tempfile::tempdir().expect("tempdir");
    // Odoo's db_host may name the socket directory; db_password False = none (trusted).
    let conf = write_conf(
        dir.path(),
        "odoo.conf",
        &format!(
            "[options]\ndb_host = {socket_dir}\ndb_port = {}\ndb_user = {ROLE}\n\
             db_password = False\ndb_name = {DB},other\ndkn_auth_db_name = sessions\n\
             server_wide_modules = base,web,dkn_auth\ndkn_auth_driver = db\n",
            pg.port
        ),
    );
    let (_sidecar, addr, log) = start(&conf);
    assert!(
        backend_ready(&addr, Duration::from_secs(20)).await,
        "{}",
        log.lock()
    );
    round_trip_default_ttl(&addr).await;
    assert_eq!(
        psql(&pg, "sessions", "SELECT count(*) FROM dkn_auth_sessions"),
        "1"
    );
}

async fn round_trip_default_ttl(addr: &str) {
    let mut c = Client::new(addr.to_owned());
    let sid = "fedcba9876543210fedcba9876543210fedcba98";
    let put = c
        .json(
            Method::PUT,
            &format!("/v1/sessions/{sid}"),
            &[("If-None-Match", "*")],
            &json!({"data": {"uid": 7}}),
        )
        .await
        .expect("PUT");
    assert_eq!(put.status, 201);
    let got = c.get(&format!("/v1/sessions/{sid}")).await.expect("GET");
    assert_eq!(got.json()["data"], json!({"uid": 7}));
}

/// One line on stderr, exit code 2.
fn error_of(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run the sidecar");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    err.trim_end()
        .strip_prefix("odoo-session-sidecar: ")
        .unwrap_or(&err)
        .to_owned()
}

#[test]
fn errors_name_the_setting_as_the_user_wrote_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = write_conf(
        dir.path(),
        "odoo.conf",
        "[options]\ndkn_auth_driver = redis\ndkn_auth_expiry = a week\n",
    );
    let c = conf.display();
    assert_eq!(
        error_of(command().arg(format!("--config={c}"))),
        format!(
            "dkn_auth_expiry = \"a week\" in {c} is invalid: expected seconds from 60 to 31536000 (DKN_AUTH_EXPIRY)"
        )
    );
    assert_eq!(
        error_of(
            command()
                .arg(format!("--config={c}"))
                .env("DKN_AUTH_EXPIRY", "soon")
        ),
        "DKN_AUTH_EXPIRY=\"soon\" is invalid: expected seconds from 60 to 31536000"
    );
    assert_eq!(
        error_of(
            command()
                .args([&format!("--config={c}"), "--expiry=later"])
                .env("DKN_AUTH_EXPIRY", "soon")
        ),
        "--expiry=\"later\" is invalid: expected seconds from 60 to 31536000 (DKN_AUTH_EXPIRY)"
    );
    let conf = write_conf(
        dir.path(),
        "redis.conf",
        "[options]\ndkn_auth_driver = redis\ndkn_auth_redis_max_conn = lots\n",
    );
    let err = error_of(command().env("DKN_AUTH_CONFIG", &conf));
    assert!(
        err.starts_with(&format!(
            "dkn_auth_redis_max_conn = \"lots\" in {} is invalid",
            conf.display()
        )),
        "{err}"
    );
    // db without a URI and without a database name: says which keys it looked for.
    let conf = write_conf(
        dir.path(),
        "db.conf",
        "[options]\ndb_host = 127.0.0.1\ndb_user = odoo\ndkn_auth_driver = db\n",
    );
    let err = error_of(command().arg(format!("--config={}", conf.display())));
    assert!(
        err.starts_with(&format!(
            "dkn_auth_driver in {} = db without dkn_auth_db_uri",
            conf.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("dkn_auth_db_name") && err.contains("db_name"),
        "{err}"
    );
    let conf = write_conf(
        dir.path(),
        "port.conf",
        "[options]\ndb_port = 54x\ndb_name = odoo\ndkn_auth_driver = db\n",
    );
    let err = error_of(command().arg(format!("--config={}", conf.display())));
    assert!(
        err.starts_with(&format!(
            "db_port = \"54x\" in {} is invalid",
            conf.display()
        )),
        "{err}"
    );
}

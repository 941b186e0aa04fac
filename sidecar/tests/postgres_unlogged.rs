//! `DKN_AUTH_DB_UNLOGGED=true` on a PostgreSQL that streams to a replica: the sidecar warns
//! once that a fail-over loses every session; without a replica it says nothing. Real
//! PostgreSQL, with `pg_receivewal` as the streaming client (it shows in
//! `pg_stat_replication` like a standby).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use odoo_ha_testkit::{free_port, PostgresServer};

const BIN: &str = env!("CARGO_BIN_EXE_odoo-session-sidecar");
const WARNING: &str = "an unlogged table is not replicated";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pg_bin(name: &str) -> std::path::PathBuf {
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

/// Runs a sidecar on `pg` until its schema is ready (plus a moment for the check after it);
/// its log lines.
fn sidecar_log(pg: &PostgresServer, table: &str) -> Vec<String> {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("DKN_AUTH_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .args([
            "--driver=db".to_string(),
            format!("--db-uri={}", pg.url()),
            "--db-unlogged=true".into(),
            format!("--db-table={table}"),
            format!("--listen=127.0.0.1:{}", free_port()),
            "--log-level=info".into(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sidecar");
    let mut child = Killed(child);
    let err = child.0.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let end = Instant::now() + Duration::from_secs(20);
    let mut ready_at = None;
    while Instant::now() < end {
        if ready_at.is_some_and(|t: Instant| t.elapsed() > Duration::from_millis(700)) {
            break;
        }
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(50)) {
            if l.contains("session schema ready") {
                ready_at = Some(Instant::now());
            }
            lines.push(l);
        }
    }
    assert!(ready_at.is_some(), "schema never ready: {lines:?}");
    lines
}

#[test]
fn unlogged_table_on_a_replicated_server_warns_once() {
    let pg = PostgresServer::start();
    let alone = sidecar_log(&pg, "unlogged_alone");
    assert!(
        !alone.iter().any(|l| l.contains(WARNING)),
        "no replica, no warning: {alone:?}"
    );

    let wal = tempfile::tempdir().unwrap();
    let receiver = Command::new(pg_bin("pg_receivewal"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
        ])
        .arg("-D")
        .arg(wal.path())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("pg_receivewal");
    let _receiver = Killed(receiver);
    // Wait until the server lists it as a streaming client.
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let out = Command::new(pg_bin("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-Atc", "SELECT count(*) FROM pg_stat_replication"])
            .output()
            .expect("psql");
        if String::from_utf8_lossy(&out.stdout).trim() == "1" {
            break;
        }
        assert!(Instant::now() < end, "pg_receivewal never streamed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let replicated = sidecar_log(&pg, "unlogged_replicated");
    let warnings: Vec<&String> = replicated.iter().filter(|l| l.contains(WARNING)).collect();
    assert_eq!(warnings.len(), 1, "one warning: {replicated:?}");
    assert!(
        warnings[0].contains("fail-over") && warnings[0].contains("DKN_AUTH_DB_UNLOGGED"),
        "says what is lost and which setting: {}",
        warnings[0]
    );
}

//! The binary itself: configuration errors (settings, log filter, socket path), --help,
//! Unix socket, logs, graceful shutdown on SIGTERM (drains: tests/drain.rs).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use odoo_ha_testkit::{free_port, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// This build's binary, or `SIDECAR_TEST_BIN` (another build).
fn bin() -> String {
    std::env::var("SIDECAR_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_odoo-session-sidecar").to_string())
}

fn clean_env(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("DKN_AUTH_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn fails_with(args: &[&str], env: &[(&str, &str)], setting: &str) {
    let mut cmd = Command::new(bin());
    clean_env(&mut cmd).args(args).envs(env.iter().copied());
    let out = cmd.output().expect("run sidecar");
    assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains(setting), "names {setting}: {err}");
}

#[test]
fn configuration_errors_are_one_line_naming_the_setting() {
    fails_with(&[], &[], "DKN_AUTH_DRIVER");
    fails_with(&["--driver=nosql"], &[], "DKN_AUTH_DRIVER");
    fails_with(
        &[],
        &[("DKN_AUTH_DRIVER", "memory"), ("DKN_AUTH_EXPIRY", "-1")],
        "DKN_AUTH_EXPIRY",
    );
    fails_with(&["--driver=db"], &[], "DKN_AUTH_DB_URI");
    fails_with(
        &["--driver=memory", "--listen=0.0.0.0:7070"],
        &[],
        "DKN_AUTH_LISTEN",
    );
    fails_with(
        &["--driver=redis", "--redis-uri=http://x"],
        &[],
        "DKN_AUTH_REDIS_URI",
    );
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("odoo.conf");
    std::fs::write(
        &conf,
        "[options]\ndkn_auth_driver = memory\ndkn_auth_redis_max_conn = lots\n",
    )
    .unwrap();
    fails_with(
        &[&format!("--config={}", conf.display())],
        &[],
        "DKN_AUTH_REDIS_MAX_CONN",
    );
    fails_with(&["--config=/nonexistent/odoo.conf"], &[], "DKN_AUTH_CONFIG");
}

/// Redis Cluster URIs: no reachable node, a database other than 0, no host, a prefix with
/// a hash tag (it would move a sid's keys out of their slot): exit 2, one line naming the
/// setting, no password shown.
#[test]
fn cluster_uri_errors_are_one_line_naming_the_setting() {
    let (p1, p2) = (free_port(), free_port());
    let unreachable = format!("redis+cluster://:hunter2@127.0.0.1:{p1},127.0.0.1:{p2}/");
    let mut cmd = Command::new(bin());
    clean_env(&mut cmd).args(["--driver=redis", &format!("--redis-uri={unreachable}")]);
    let t = Instant::now();
    let out = cmd.output().expect("run sidecar");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("DKN_AUTH_REDIS_URI"), "{err}");
    assert!(err.contains("no node of the Redis Cluster"), "{err}");
    assert!(
        err.contains(&p1.to_string()) && err.contains(&p2.to_string()),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "no password in the error: {err}");
    assert!(t.elapsed() < Duration::from_secs(5), "refused at once");
    for uri in [
        format!("redis+cluster://127.0.0.1:{p1}/3"),
        "redis+cluster:///".to_string(),
        "rediss+cluster://127.0.0.1/".to_string(),
    ] {
        fails_with(
            &["--driver=redis", &format!("--redis-uri={uri}")],
            &[],
            "DKN_AUTH_REDIS_URI",
        );
    }
    fails_with(
        &[
            "--driver=redis",
            &format!("--redis-uri=redis+cluster://127.0.0.1:{p1}/"),
        ],
        &[("DKN_AUTH_PREFIX", "odoo{x}:")],
        "DKN_AUTH_PREFIX",
    );
}

fn spawn(args: &[String]) -> std::process::Child {
    let mut cmd = Command::new(bin());
    clean_env(&mut cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sidecar")
}

async fn wait_ready(addr: &str) {
    let mut c = Client::new(addr.to_owned());
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if matches!(c.get("/healthz").await, Ok(r) if r.status == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    panic!("sidecar did not start");
}

/// A request in flight when SIGTERM arrives still gets its answer; then the process exits 0.
#[tokio::test]
async fn sigterm_drains_requests_in_flight() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = spawn(&["--driver=memory".into(), format!("--listen={addr}")]);
    wait_ready(&addr).await;
    // In flight across the stop: a PUT whose body is finished only after SIGTERM.
    let body = br#"{"data": {"uid": 2}}"#;
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(
        format!(
            "PUT /v1/sessions/{} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            "d".repeat(40),
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    slow.write_all(&body[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_sigterm(child.id());
    tokio::time::sleep(Duration::from_millis(500)).await;
    slow.write_all(&body[5..]).await.unwrap();
    let mut answer = Vec::new();
    slow.read_to_end(&mut answer)
        .await
        .expect("the request in flight is answered");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "clean exit after draining: {status:?}");
}

fn send_sigterm(pid: u32) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    assert!(status.is_ok_and(|s| s.success()), "kill -TERM {pid}");
}

#[tokio::test]
async fn serves_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sidecar.sock");
    let mut child = spawn(&[
        "--driver=memory".into(),
        format!("--socket={}", sock.display()),
    ]);
    let end = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let out = Command::new("curl")
        .args([
            "-s",
            "--unix-socket",
            sock.to_str().unwrap(),
            "http://localhost/healthz",
        ])
        .output();
    let _ = child.kill();
    let _ = child.wait();
    match out {
        Ok(o) => assert_eq!(String::from_utf8_lossy(&o.stdout), "ok\n"),
        Err(e) => panic!("curl is needed for this test (tests/install-deps.sh installs it): {e}"),
    }
}

#[tokio::test]
async fn json_logs_on_request() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(bin());
    let mut child = clean_env(&mut cmd)
        .args([
            "--driver=memory",
            &format!("--listen={addr}"),
            "--log-format=json",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sidecar");
    wait_ready(&addr).await;
    send_sigterm(child.id());
    let out = tokio::task::spawn_blocking(move || {
        let _ = child.wait();
        let mut s = String::new();
        use std::io::Read;
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    })
    .await
    .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() >= 2, "{out}");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
}

/// Probes reach a second listener; the session API is not on it.
#[tokio::test]
async fn health_listener_serves_probes_only() {
    let addr = format!("127.0.0.1:{}", free_port());
    let health = format!("127.0.0.1:{}", free_port());
    let mut child = spawn(&[
        "--driver=memory".into(),
        format!("--listen={addr}"),
        format!("--health-listen={health}"),
    ]);
    wait_ready(&addr).await;
    let mut c = Client::new(health.clone());
    assert_eq!(c.get("/readyz").await.unwrap().status, 200);
    assert_eq!(c.get("/metrics").await.unwrap().status, 200);
    let r = c
        .get(&format!("/v1/sessions/{}", "a".repeat(40)))
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "no_route");
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs the binary for at most 5 s (a setting wrongly accepted would make it serve
/// forever): exit code (None: still running, killed) and stderr.
fn run_bounded(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin());
    let mut child = clean_env(&mut cmd)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sidecar");
    let end = Instant::now() + Duration::from_secs(5);
    let code = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.code(),
            _ if Instant::now() >= end => {
                let _ = child.kill();
                break None;
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let out = child.wait_with_output().expect("output");
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    (code, text)
}

#[test]
fn a_log_level_that_does_not_parse_is_refused() {
    for level in [
        "verbose",
        "warning",
        "info,odoo_session_sidecar=loud",
        "info,",
    ] {
        let addr = format!("127.0.0.1:{}", free_port());
        let (code, err) = run_bounded(
            &["--driver=memory", &format!("--listen={addr}")],
            &[("DKN_AUTH_LOG_LEVEL", level)],
        );
        assert_eq!(code, Some(2), "{level:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains("DKN_AUTH_LOG_LEVEL"), "{err}");
        assert!(
            err.contains(&format!("{level:?}")),
            "names the value: {err}"
        );
    }
    // Levels and target=level directives still work.
    let addr = format!("127.0.0.1:{}", free_port());
    let (code, err) = run_bounded(
        &[
            "--driver=memory",
            &format!("--listen={addr}"),
            "--log-level=WARN,odoo_session_sidecar=debug,tower=off",
        ],
        &[],
    );
    assert_eq!(code, None, "a good filter is accepted: {err}");
}

#[test]
fn a_socket_path_on_a_regular_file_is_refused_and_the_file_kept() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("odoo.sock");
    std::fs::write(&file, "precious\n").unwrap();
    let (code, err) = run_bounded(
        &["--driver=memory"],
        &[("DKN_AUTH_SOCKET", file.to_str().unwrap())],
    );
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("DKN_AUTH_SOCKET") && err.contains("not a socket"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious\n");
    // A directory is not replaced either.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let (code, err) = run_bounded(
        &["--driver=memory", &format!("--socket={}", sub.display())],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(sub.is_dir());
}

#[test]
fn help_does_not_print_uris_or_passwords_from_the_environment() {
    let (code, out) = run_bounded(
        &["--help"],
        &[
            ("DKN_AUTH_REDIS_URI", "redis://:redis-secret-1@redis:6379/0"),
            ("DKN_AUTH_DB_URI", "postgresql://odoo:db-secret-2@pg/odoo"),
            ("DKN_AUTH_REDIS_PASSWORD", "redis-secret-3"),
            ("DKN_AUTH_DB_PASSWORD", "db-secret-4"),
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("DKN_AUTH_REDIS_URI"),
        "help lists the variable: {out}"
    );
    for secret in [
        "redis-secret-1",
        "db-secret-2",
        "redis-secret-3",
        "db-secret-4",
    ] {
        assert!(!out.contains(secret), "--help prints {secret}:\n{out}");
    }
}

/// Logs to a pipe or a file (a container's log) carry no terminal colour codes.
#[tokio::test]
async fn text_logs_to_a_pipe_have_no_colour_codes() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(bin());
    let mut child = clean_env(&mut cmd)
        .args(["--driver=memory", &format!("--listen={addr}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sidecar");
    wait_ready(&addr).await;
    send_sigterm(child.id());
    let out = tokio::task::spawn_blocking(move || {
        let _ = child.wait();
        let mut s = String::new();
        use std::io::Read;
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    })
    .await
    .unwrap();
    assert!(out.contains("serving"), "{out}");
    assert!(!out.contains('\u{1b}'), "ANSI escape in the log: {out:?}");
}

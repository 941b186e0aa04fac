//! The binary itself: configuration errors, Unix socket, graceful shutdown on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::Method;
use odoo_ha_testkit::{free_port, Client};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_odoo-session-sidecar");

fn clean_env(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("DKN_AUTH_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn fails_with(args: &[&str], env: &[(&str, &str)], setting: &str) {
    let mut cmd = Command::new(BIN);
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

fn spawn(args: &[String]) -> std::process::Child {
    let mut cmd = Command::new(BIN);
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
    let mut holder = Client::new(addr.clone());
    let r = holder
        .json(
            Method::POST,
            "/v1/leases/drain/acquire",
            &[],
            &json!({"owner": "a", "ttl_ms": 60000}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let waiter_addr = addr.clone();
    let waiter = tokio::spawn(async move {
        let mut c = Client::new(waiter_addr);
        c.json(
            Method::POST,
            "/v1/leases/drain/acquire",
            &[],
            &json!({"owner": "b", "ttl_ms": 1000, "wait_ms": 1500}),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_sigterm(child.id());
    let r = waiter
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(r.status, 409, "{r:?}");
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
    let mut cmd = Command::new(BIN);
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

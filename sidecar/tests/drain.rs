//! SIGTERM on the real binary: with `DKN_AUTH_DRAIN_SECONDS` the sidecar keeps serving its
//! Pod's app until the app has closed its connections (or the deadline), so a rolling
//! deploy drops no request; without, it finishes the requests in flight and exits; and a
//! client that never finishes its request cannot hold the exit.

mod common;

use std::time::{Duration, Instant};

use common::process::Process;
use common::{legacy_sid, s};
use http::Method;
use odoo_ha_testkit::{free_port, Client};
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// The sidecar's quiet period (`QUIET` in src/main.rs).
const QUIET: Duration = Duration::from_secs(2);
/// The sidecar's bound on requests in flight after the stop (`FINISH_LIMIT` in src/main.rs).
const FINISH_LIMIT: Duration = Duration::from_secs(5);

async fn put_session(c: &mut Client) -> String {
    let sid = legacy_sid();
    let r = c
        .json(Method::PUT, &s("", &sid), &[], &json!({"data": {"uid": 2}}))
        .await
        .expect("PUT");
    assert_eq!(r.status, 201, "{r:?}");
    sid
}

/// The app of the Pod keeps its keep-alive connection after SIGTERM: its requests, and a
/// new connection's, are served for as long as it stays; once it closes, the sidecar exits
/// after the quiet period.
#[tokio::test]
async fn drain_serves_connected_clients_then_exits_once_quiet() {
    let health = format!("127.0.0.1:{}", free_port());
    let mut p = Process::start(&[
        "--driver=memory".into(),
        "--drain-seconds=60".into(),
        format!("--health-listen={health}"),
    ]);
    p.wait_serving().await;
    let mut app = p.client();
    let sid = put_session(&mut app).await;

    p.sigterm();
    let start = Instant::now();
    let mut served = 0;
    let mut new_connection_served = false;
    while start.elapsed() < Duration::from_secs(4) {
        let r = app
            .get(&s("", &sid))
            .await
            .expect("served during the drain");
        assert_eq!(r.status, 200, "{r:?}");
        served += 1;
        if !new_connection_served && start.elapsed() > Duration::from_millis(1500) {
            // Another worker of the app connects late: still served.
            let mut late = p.client();
            let r = late.get(&s("", &sid)).await.expect("new connection served");
            assert_eq!(r.status, 200, "{r:?}");
            new_connection_served = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(new_connection_served);
    assert!(served >= 15, "{served} requests in 4 s");
    // Kubernetes takes the draining pod out of its Service; the probe listener still answers.
    let r = Client::new(health.clone()).get("/readyz").await.unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json()["error"], "draining", "{r:?}");
    assert!(p.running(), "still serving 4 s after SIGTERM:\n{}", p.log());

    drop(app);
    let closed = Instant::now();
    let status = p
        .exit_within(QUIET + Duration::from_secs(1))
        .await
        .unwrap_or_else(|| panic!("no exit within quiet + 1 s:\n{}", p.log()));
    let took = closed.elapsed();
    assert!(status.success(), "{status:?}\n{}", p.log());
    assert!(
        took >= QUIET - Duration::from_millis(300),
        "exited {took:?} after the last client left: the quiet period is {QUIET:?}"
    );
    let log = p.log();
    assert_eq!(p.lines_with("draining").len(), 1, "{log}");
    assert_eq!(p.lines_with("reason=\"quiet\"").len(), 1, "{log}");
}

/// A client that never closes cannot hold the sidecar past the deadline; it is served
/// until then.
#[tokio::test]
async fn drain_ends_at_the_deadline_when_a_client_never_leaves() {
    let mut p = Process::start(&["--driver=memory".into(), "--drain-seconds=3".into()]);
    p.wait_serving().await;
    let mut app = p.client();
    let sid = put_session(&mut app).await;
    p.sigterm();
    let start = Instant::now();
    let pinger = tokio::spawn(async move {
        let mut ok = 0u32;
        loop {
            match app.get(&s("", &sid)).await {
                Ok(r) if r.status == 200 => ok += 1,
                _ => return ok,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let status = p
        .exit_within(Duration::from_secs(6))
        .await
        .unwrap_or_else(|| panic!("no exit 6 s after SIGTERM with a 3 s drain:\n{}", p.log()));
    let took = start.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_millis(2800) && took <= Duration::from_millis(4500),
        "exited {took:?} after SIGTERM; the deadline is 3 s:\n{}",
        p.log()
    );
    let ok = pinger.await.unwrap();
    assert!(ok >= 9, "only {ok} requests served during the 3 s drain");
    assert_eq!(
        p.lines_with("reason=\"deadline\"").len(),
        1,
        "the log says why the drain ended:\n{}",
        p.log()
    );
}

/// Without a drain: the request in flight is answered, readiness says draining meanwhile,
/// an idle keep-alive client does not hold the exit, and the exit follows at once.
#[tokio::test]
async fn no_drain_finishes_in_flight_and_exits_promptly() {
    let health = format!("127.0.0.1:{}", free_port());
    let mut p = Process::start(&[
        "--driver=memory".into(),
        format!("--health-listen={health}"),
    ]);
    p.wait_serving().await;
    let mut idle = p.client();
    put_session(&mut idle).await;
    // In flight across the stop: a PUT whose body is finished only after SIGTERM.
    let body = br#"{"data": {"uid": 2}}"#;
    let mut slow = tokio::net::TcpStream::connect(&p.addr).await.unwrap();
    slow.write_all(
        format!(
            "PUT {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            s("", &legacy_sid()),
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    slow.write_all(&body[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.sigterm();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = Client::new(health).get("/readyz").await.unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json()["error"], "draining");
    tokio::time::sleep(Duration::from_millis(500)).await;
    slow.write_all(&body[5..]).await.unwrap();
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut slow, &mut answer)
        .await
        .expect("the request in flight is answered");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let answered = Instant::now();
    let status = p
        .exit_within(Duration::from_secs(1))
        .await
        .unwrap_or_else(|| panic!("no exit within 1 s of the last answer:\n{}", p.log()));
    assert!(status.success(), "{status:?}");
    assert!(answered.elapsed() < Duration::from_secs(1));
    drop(idle);
}

/// A client that sent half a request and went silent: the exit waits for it at most
/// `FINISH_LIMIT`, with and without a drain.
#[tokio::test]
async fn a_half_sent_request_cannot_hold_the_exit() {
    for drain in ["0", "1"] {
        let mut p = Process::start(&["--driver=memory".into(), format!("--drain-seconds={drain}")]);
        p.wait_serving().await;
        let mut stuck = tokio::net::TcpStream::connect(&p.addr).await.unwrap();
        stuck
            .write_all(b"PUT /v1/sessions/0123456789abcdef0123456789abcdef01234567 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"data\":")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        p.sigterm();
        let start = Instant::now();
        let limit = Duration::from_secs(drain.parse().unwrap()) + FINISH_LIMIT;
        let status = p
            .exit_within(limit + Duration::from_millis(1500))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "drain {drain}: still running {:?} after SIGTERM with a half-sent request:\n{}",
                    limit + Duration::from_millis(1500),
                    p.log()
                )
            });
        assert!(status.success(), "{status:?}");
        assert!(
            start.elapsed() >= FINISH_LIMIT - Duration::from_millis(500),
            "drain {drain}: the request in flight was given {:?}, less than {FINISH_LIMIT:?}",
            start.elapsed()
        );
        assert_eq!(
            p.lines_with("requests still unfinished").len(),
            1,
            "{}",
            p.log()
        );
        drop(stuck);
    }
}

/// The Unix socket listener is counted too: a client connected there keeps the drain going.
#[tokio::test]
async fn drain_counts_unix_socket_clients() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sidecar.sock");
    let health = format!("127.0.0.1:{}", free_port());
    let mut p = Process::start(&[
        "--driver=memory".into(),
        "--drain-seconds=60".into(),
        format!("--socket={}", sock.display()),
        format!("--health-listen={health}"),
    ]);
    let mut probe = Client::new(health);
    let end = Instant::now() + Duration::from_secs(10);
    while !matches!(probe.get("/healthz").await, Ok(r) if r.status == 200) {
        assert!(Instant::now() < end, "sidecar did not start:\n{}", p.log());
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut conn = tokio::net::UnixStream::connect(&sock).await.unwrap();
    p.sigterm();
    tokio::time::sleep(QUIET + Duration::from_secs(1)).await;
    assert!(
        p.running(),
        "exited while a Unix socket client was connected:\n{}",
        p.log()
    );
    // The connection still works: one request on it.
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::io::AsyncReadExt::read(&mut conn, &mut buf)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop(conn);
    let status = p
        .exit_within(QUIET + Duration::from_secs(1))
        .await
        .unwrap_or_else(|| panic!("no exit after the client left:\n{}", p.log()));
    assert!(status.success());
    assert!(!sock.exists(), "the socket is removed at exit");
}

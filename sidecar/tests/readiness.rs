//! Readiness and the backend state on the real binary: a backend outage leaves the pod
//! ready (the body, `dkn_auth_backend_up` and the log say the backend is down), and each
//! change of the backend's state is logged once.

mod common;

use std::time::{Duration, Instant};

use common::process::Process;
use common::{legacy_sid, s};
use http::Method;
use odoo_ha_testkit::{free_port, Client, RedisServer};
use serde_json::json;

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn metrics(c: &mut Client) -> String {
    let r = c.get("/metrics").await.expect("/metrics");
    assert_eq!(r.status, 200);
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Redis pointed at a closed port: `/readyz` answers 200 all along and says the backend is
/// down; the metric says 0; `/readyz?backend=1` and the session routes answer 503.
#[tokio::test]
async fn ready_with_the_backend_down_and_says_so() {
    let closed = free_port();
    let health = format!("127.0.0.1:{}", free_port());
    let mut p = Process::start(&[
        "--driver=redis".into(),
        format!("--redis-uri=redis://127.0.0.1:{closed}/0"),
        "--backend-timeout-ms=300".into(),
        format!("--health-listen={health}"),
    ]);
    p.wait_serving().await;
    let mut probe = Client::new(health);
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let r = probe.get("/readyz").await.unwrap();
        assert_eq!(r.status, 200, "ready whatever the backend: {r:?}");
        if r.json()["backend"] == "down" {
            assert_eq!(r.json()["status"], "ready");
            break;
        }
        assert!(Instant::now() < end, "the body never said down: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = metrics(&mut probe).await;
    assert_eq!(metric(&text, "dkn_auth_backend_up"), Some(0.0), "{text}");
    let r = probe.get("/readyz?backend=1").await.unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json()["error"], "backend_unavailable");
    let mut c = p.client();
    let r = c.get(&s("", &legacy_sid())).await.unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    // Once, however many requests failed.
    assert_eq!(p.lines_with("backend unreachable").len(), 1, "{}", p.log());
    assert!(p.lines_with("backend unreachable")[0].contains("WARN"));
}

/// A real Redis stopped and started under a running sidecar: one warning when it goes, one
/// info line with the outage's length when it is back, the metric following.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_changes_are_logged_once_each_way() {
    let mut redis = RedisServer::start();
    let mut p = Process::start(&[
        "--driver=redis".into(),
        format!("--redis-uri={}", redis.url()),
        "--backend-timeout-ms=300".into(),
    ]);
    p.wait_serving().await;
    assert!(
        p.wait_log("backend reachable", Duration::from_secs(5))
            .await,
        "{}",
        p.log()
    );
    let mut c = p.client();
    let sid = legacy_sid();
    let r = c
        .json(Method::PUT, &s("", &sid), &[], &json!({"data": {"uid": 2}}))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");

    tokio::task::block_in_place(|| redis.kill());
    // Requests fail meanwhile; none of them adds a line.
    for _ in 0..5 {
        let r = c.get(&s("", &sid)).await.unwrap();
        assert_eq!(r.status, 503, "{r:?}");
    }
    assert!(
        p.wait_log("backend unreachable", Duration::from_secs(5))
            .await,
        "no warning when Redis went away:\n{}",
        p.log()
    );
    // Two more background checks while it is down.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let text = metrics(&mut c).await;
    assert_eq!(metric(&text, "dkn_auth_backend_up"), Some(0.0), "{text}");

    tokio::task::block_in_place(|| redis.restart());
    assert!(
        p.wait_log("backend reachable again after", Duration::from_secs(8))
            .await,
        "no line when Redis came back:\n{}",
        p.log()
    );
    let r = c.get(&s("", &sid)).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;

    let log = p.log();
    let down = p.lines_with("backend unreachable");
    let back = p.lines_with("backend reachable again after");
    assert_eq!(down.len(), 1, "one warning:\n{log}");
    assert!(down[0].contains("WARN"), "{}", down[0]);
    assert_eq!(back.len(), 1, "one line on return:\n{log}");
    assert!(back[0].contains("INFO"), "{}", back[0]);
    let text = metrics(&mut c).await;
    assert_eq!(metric(&text, "dkn_auth_backend_up"), Some(1.0), "{text}");
    assert_eq!(
        metric(&text, "dkn_auth_backend_transitions_total"),
        Some(2.0),
        "{text}"
    );
}

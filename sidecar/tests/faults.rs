//! The backend killed and restarted under load: quick 503s while it is down, recovery
//! without restarting the sidecar, and no acknowledged write missing afterwards.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{legacy_sid, s, Harness};
use http::Method;
use odoo_ha_testkit::{PostgresServer, RedisServer};
use parking_lot::Mutex;
use serde_json::json;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    unavailable: AtomicU64,
    /// Slowest 503: the bound that matters while the backend is down.
    slowest_503_ms: AtomicU64,
    other: Mutex<Vec<String>>,
}

/// Writers each own sessions; the last value the sidecar acknowledged per session is kept.
async fn load(
    h: &Harness,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<HashMap<String, u64>>> {
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = h.client();
        let stop = stop.clone();
        let tally = tally.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked: HashMap<String, u64> = HashMap::new();
            let mut sids: Vec<String> = Vec::new();
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // Every 10th write creates a session, the others patch an existing one.
                let (method, sid, body, headers): (
                    Method,
                    String,
                    serde_json::Value,
                    Vec<(&str, &str)>,
                ) = if sids.is_empty() || n % 10 == 0 {
                    let sid = legacy_sid();
                    (
                        Method::PUT,
                        sid,
                        json!({"data": {"n": n}}),
                        vec![("if-none-match", "*")],
                    )
                } else {
                    let sid = sids[(n as usize) % sids.len()].clone();
                    (Method::PATCH, sid, json!({"set": {"n": n}}), vec![])
                };
                let started = Instant::now();
                match c.json(method.clone(), &s("", &sid), &headers, &body).await {
                    Ok(r) if r.status.is_success() => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        acked.insert(sid.clone(), n);
                        if method == Method::PUT {
                            sids.push(sid);
                        }
                    }
                    Ok(r) if r.status == 503 => {
                        assert_eq!(r.json()["error"], "backend_unavailable", "{r:?}");
                        tally.unavailable.fetch_add(1, Ordering::Relaxed);
                        let ms = started.elapsed().as_millis() as u64;
                        tally.slowest_503_ms.fetch_max(ms, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Ok(r) => tally
                        .other
                        .lock()
                        .push(format!("{} {:?}", r.status, r.body)),
                    Err(e) => tally.other.lock().push(e.to_string()),
                }
            }
            acked
        }));
    }
    tasks
}

async fn transitions(c: &mut odoo_ha_testkit::Client) -> u64 {
    let m = c.get("/metrics").await.unwrap();
    let text = String::from_utf8_lossy(&m.body);
    text.lines()
        .find_map(|l| l.strip_prefix("dkn_auth_backend_transitions_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transitions counter in {text}"))
}

async fn outage_scenario(h: Harness, kill: impl FnOnce(), restart: impl FnOnce()) {
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let tasks = load(&h, stop.clone(), tally.clone()).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = tally.ok.load(Ordering::Relaxed);
    assert!(before > 0, "load runs before the outage");
    let mut probe = h.client();
    // A PostgreSQL sidecar starts "down" until its schema is ready; wait for "up".
    let deadline = Instant::now() + Duration::from_secs(5);
    while probe.get("/readyz").await.unwrap().json()["backend"] != "up" {
        assert!(Instant::now() < deadline, "the backend never counted as up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let transitions_before = transitions(&mut probe).await;

    tokio::task::block_in_place(kill);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The pod stays in its Service: readiness says the backend is down, and only a caller
    // that asks for the backend gets a 503.
    let r = probe.get("/readyz").await.unwrap();
    assert_eq!(r.status, 200, "readyz does not follow the backend: {r:?}");
    assert_eq!(r.json()["backend"], "down", "{r:?}");
    let r = probe.get("/readyz?backend=1").await.unwrap();
    assert_eq!(
        r.status, 503,
        "readyz?backend=1 fails while the backend is down"
    );
    assert_eq!(r.json()["error"], "backend_unavailable");
    let m = probe.get("/metrics").await.unwrap();
    let text = String::from_utf8_lossy(&m.body);
    assert!(text.contains("\ndkn_auth_backend_up 0\n"), "{text}");
    let unavailable = tally.unavailable.load(Ordering::Relaxed);
    assert!(unavailable > 0, "writes answered 503 during the outage");

    tokio::task::block_in_place(restart);
    // Recovery without touching the sidecar.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = probe.get("/readyz").await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        if r.json()["backend"] == "up" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sidecar did not recover by itself"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after_restart = tally.ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        tally.ok.load(Ordering::Relaxed) > after_restart,
        "writes succeed again"
    );
    stop.store(true, Ordering::Relaxed);
    // Down once and back once, however many requests failed or straddled the kill.
    assert_eq!(
        transitions(&mut probe).await - transitions_before,
        2,
        "dkn_auth_backend_transitions_total grew by one down and one up"
    );

    let mut acked = HashMap::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let other = tally.other.lock().clone();
    assert!(
        other.is_empty(),
        "only successes and 503s expected: {other:?}"
    );
    let slowest = tally.slowest_503_ms.load(Ordering::Relaxed);
    assert!(
        slowest < 2_500,
        "a 503 took {slowest} ms; the backend timeout is 1000 ms"
    );
    // Every acknowledged write is there (a later unacknowledged one may also have landed).
    let mut c = h.client();
    for (sid, n) in &acked {
        let r = c.get(&s("", sid)).await.unwrap();
        assert_eq!(r.status, 200, "acknowledged session {sid} lost");
        let stored = r.json()["data"]["n"].as_u64().unwrap();
        assert!(
            stored >= *n,
            "session {sid}: acknowledged {n}, found {stored}"
        );
    }
    eprintln!(
        "outage: {} acknowledged writes over {} sessions, {} answered 503 (slowest {} ms)",
        tally.ok.load(Ordering::Relaxed),
        acked.len(),
        tally.unavailable.load(Ordering::Relaxed),
        slowest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted() {
    let redis = Arc::new(Mutex::new(RedisServer::start()));
    let url = redis.lock().url();
    let h = Harness::with_flags(vec![
        "--driver=redis".into(),
        format!("--redis-uri={url}"),
        "--redis-max-conn=4".into(),
    ])
    .await;
    let (r1, r2) = (redis.clone(), redis.clone());
    outage_scenario(h, move || r1.lock().kill(), move || r2.lock().restart()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_and_restarted() {
    let pg = Arc::new(Mutex::new(PostgresServer::start()));
    let url = pg.lock().url();
    let h = Harness::with_flags(vec![
        "--driver=db".into(),
        format!("--db-uri={url}"),
        "--db-max-conn=4".into(),
    ])
    .await;
    let (p1, p2) = (pg.clone(), pg.clone());
    outage_scenario(h, move || p1.lock().kill(), move || p2.lock().restart()).await;
}

/// One burst of `n` requests at once over `sids` (GETs, PATCHes and create-only PUTs), so
/// the sidecar's requests in flight spread over every pool slot. Returns what failed.
async fn burst(h: &Harness, sids: &[String], n: usize, round: usize) -> Vec<String> {
    let calls = (0..n).map(|i| {
        let mut c = h.client();
        let sid = sids[i % sids.len()].clone();
        async move {
            let r = match i % 3 {
                0 => c.get(&s("", &sid)).await,
                1 => {
                    c.json(
                        Method::PATCH,
                        &s("", &sid),
                        &[],
                        &json!({"set": {"round": round}}),
                    )
                    .await
                }
                _ => {
                    c.json(
                        Method::PUT,
                        &s("", &legacy_sid()),
                        &[("if-none-match", "*")],
                        &json!({"data": {"round": round}}),
                    )
                    .await
                }
            };
            match r {
                Ok(r) if r.status.is_success() => None,
                Ok(r) => Some(format!(
                    "{} {:?}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                )),
                Err(e) => Some(e.to_string()),
            }
        }
    });
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Issue 8: a Redis restart (no request in between) left a dead connection to the old
/// process in each pool slot, and each failed the first request that picked it with
/// `503 ... broken pipe`. Once the backend answers again, no request may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_leaves_no_dead_connection_in_the_pool() {
    let mut redis = RedisServer::start();
    let h = Harness::with_flags(vec![
        "--driver=redis".into(),
        format!("--redis-uri={}", redis.url()),
        "--redis-max-conn=8".into(),
    ])
    .await;
    let mut c = h.client();
    let mut sids = Vec::new();
    for i in 0..16 {
        let sid = legacy_sid();
        let r = c
            .json(Method::PUT, &s("", &sid), &[], &json!({"data": {"i": i}}))
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{r:?}");
        sids.push(sid);
    }
    // Parallel load until every slot holds a connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.state.store.pool_in_use() < 8 {
        assert!(Instant::now() < deadline, "the load never used all 8 slots");
        let failed = burst(&h, &sids, 64, 0).await;
        assert!(failed.is_empty(), "before the restart: {failed:?}");
    }

    tokio::task::block_in_place(|| redis.restart());
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.get("/readyz?backend=1").await.unwrap().status != 200 {
        assert!(Instant::now() < deadline, "the backend never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut failed = Vec::new();
    for sid in &sids {
        let r = c.get(&s("", sid)).await.unwrap();
        if r.status != 200 {
            failed.push(format!("sequential GET: {r:?}"));
        }
    }
    for round in 1..=4 {
        failed.extend(burst(&h, &sids, 64, round).await);
    }
    assert!(
        failed.is_empty(),
        "{} request(s) failed after the restart: {failed:?}",
        failed.len()
    );
}

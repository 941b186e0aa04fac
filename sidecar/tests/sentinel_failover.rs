//! Redis with a replica behind three Sentinels, on real servers: session endings are
//! acknowledged only once a replica has them (`DKN_AUTH_REDIS_MIN_REPLICAS`), the primary is
//! SIGKILLed under load from two sidecar processes, Sentinels that name no usable primary
//! answer 503 quickly, a primary without the replica the setting asks for refuses to
//! acknowledge endings, and a promoted replica is used before the Sentinels switch.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{backend_flags, identifier, legacy_sid, modern_sid, s, Backend, Harness};
use http::Method;
use odoo_ha_testkit::{free_port, Client, Reply, SentinelRedis};
use odoo_session_sidecar::store::redis::PIPELINE_DEPTH;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_odoo-session-sidecar");
const TIMEOUT_MS: u64 = 800;
const TIMEOUT: Duration = Duration::from_millis(TIMEOUT_MS);
/// What a request may take beyond the backend timeout (HTTP, scheduling on a busy CI box).
const SLACK: Duration = Duration::from_millis(500);

/// A sidecar process, killed on drop.
struct Sidecar {
    child: Child,
    addr: String,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_sidecar(env: &[(&str, String)]) -> Sidecar {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("DKN_AUTH_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("DKN_AUTH_DRIVER", "redis")
        .env("DKN_AUTH_LISTEN", &addr)
        .env("DKN_AUTH_BACKEND_TIMEOUT_MS", TIMEOUT_MS.to_string())
        .env("DKN_AUTH_LOG_LEVEL", "warn")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let child = cmd.spawn().expect("spawn sidecar");
    Sidecar { child, addr }
}

/// Waits until `GET path` answers `want` (a session GET answers 404 only once the backend
/// is reachable).
async fn wait_status(addr: &str, path: &str, want: u16, limit: Duration) {
    let mut c = Client::new(addr.to_owned());
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if matches!(c.get(path).await, Ok(r) if r.status == want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr}{path} never answered {want}");
}

/// A request that must answer within the backend timeout plus slack; a hang fails the test.
/// A `PUT` of a new, empty session.
async fn create_one(c: &mut Client) -> (Reply, Duration) {
    let sid = legacy_sid();
    timed(c, Method::PUT, &s("", &sid), &[], Some(json!({"data": {}}))).await
}

async fn timed(
    c: &mut Client,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> (Reply, Duration) {
    let t = Instant::now();
    let fut = async {
        match &body {
            Some(b) => c.json(method.clone(), path, headers, b).await,
            None => c.send(method.clone(), path, headers, None).await,
        }
    };
    match tokio::time::timeout(TIMEOUT + Duration::from_secs(3), fut).await {
        Ok(Ok(r)) => (r, t.elapsed()),
        Ok(Err(e)) => panic!("{method} {path}: {e}"),
        Err(_) => panic!("{method} {path} hung for more than the backend timeout + 3 s"),
    }
}

/// A 503 must be the JSON error with a message.
fn check_503(r: &Reply, what: &str) {
    let j = r.json();
    assert_eq!(j["error"], "backend_unavailable", "{what}: {r:?}");
    assert!(
        j["message"].as_str().is_some_and(|m| m.len() > 10),
        "{what}: a 503 says why: {r:?}"
    );
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ending {
    Delete,
    Rotate,
    SoftRotate,
}

#[derive(Debug)]
struct Ended {
    kind: Ending,
    old: String,
    new: Option<String>,
}

#[derive(Default)]
struct Tally {
    acknowledged: u64,
    unavailable: u64,
    unexpected: Vec<String>,
    slowest: Duration,
    slowest_503: Duration,
    endings: Vec<Ended>,
    /// Sessions left alive: sid and the version of their last acknowledged PATCH.
    live: Vec<(String, u64)>,
    /// First acknowledged write / ending after the kill.
    first_write_after_kill: Option<Instant>,
    first_ending_after_kill: Option<Instant>,
    messages_503: Vec<String>,
}

struct Load {
    stop: Arc<AtomicBool>,
    killed_at: Arc<Mutex<Option<Instant>>>,
}

/// A request of a worker: method, path, headers, JSON body.
type Step = (
    Method,
    String,
    Vec<(&'static str, &'static str)>,
    Option<serde_json::Value>,
);

/// Counts one answer; true when it was a success.
#[allow(clippy::too_many_arguments)]
fn record(
    t: &mut Tally,
    r: &Reply,
    took: Duration,
    killed: Option<Instant>,
    last_step: bool,
    kind: Option<Ending>,
    sid: &str,
    new: &str,
    method: &Method,
    p: &str,
) -> bool {
    t.slowest = t.slowest.max(took);
    let status = r.status.as_u16();
    if matches!(status, 200 | 201 | 204) {
        t.acknowledged += 1;
        if killed.is_some() {
            t.first_write_after_kill.get_or_insert_with(Instant::now);
        }
        if last_step {
            match kind {
                Some(kind) => {
                    if killed.is_some() {
                        t.first_ending_after_kill.get_or_insert_with(Instant::now);
                    }
                    t.endings.push(Ended {
                        kind,
                        old: sid.to_owned(),
                        new: (kind != Ending::Delete).then(|| new.to_owned()),
                    })
                }
                None => {
                    let v = r.json()["version"].as_u64().unwrap_or(0);
                    t.live.push((sid.to_owned(), v));
                }
            }
        }
        return true;
    }
    if status == 503 {
        check_503(r, &format!("{method} {p}"));
        t.unavailable += 1;
        t.slowest_503 = t.slowest_503.max(took);
        if t.messages_503.len() < 400 {
            t.messages_503
                .push(r.json()["message"].as_str().unwrap_or("").to_owned());
        }
    } else {
        t.unexpected
            .push(format!("{method} {p} -> {status} {:?}", r.json()));
    }
    false
}

/// One worker: create, PATCH, then keep, delete, rotate or soft-rotate; until stopped.
async fn worker(addr: String, load: Arc<Load>, tally: Arc<Mutex<Tally>>) {
    let mut c = Client::new(addr);
    let mut i: u64 = 0;
    while !load.stop.load(Ordering::Relaxed) {
        i += 1;
        let sid = legacy_sid();
        let path = s("", &sid);
        let mut steps: Vec<Step> = vec![
            (
                Method::PUT,
                path.clone(),
                vec![("if-none-match", "*")],
                Some(json!({"data": {"uid": 7, "i": i}})),
            ),
            (
                Method::PATCH,
                path.clone(),
                vec![],
                Some(json!({"set": {"step": 2}})),
            ),
        ];
        let new = legacy_sid();
        let kind = match i % 4 {
            0 => None,
            1 => Some(Ending::Delete),
            2 => Some(Ending::Rotate),
            _ => Some(Ending::SoftRotate),
        };
        match kind {
            None => {}
            Some(Ending::Delete) => steps.push((Method::DELETE, path.clone(), vec![], None)),
            Some(Ending::Rotate) => steps.push((
                Method::POST,
                s("/rotate", &sid),
                vec![],
                Some(json!({"new_sid": new, "set": {"rotated": true}})),
            )),
            Some(Ending::SoftRotate) => steps.push((
                Method::POST,
                s("/rotate", &sid),
                vec![],
                Some(json!({"new_sid": new, "set": {"rotated": true},
                            "keep_old": {"ttl": 1, "set": {"next_sid": new}}})),
            )),
        }
        let n = steps.len();
        for (k, (method, p, headers, body)) in steps.into_iter().enumerate() {
            let (r, took) = timed(&mut c, method.clone(), &p, &headers, body).await;
            let killed = *load.killed_at.lock().unwrap();
            let ok = {
                let mut t = tally.lock().unwrap();
                record(
                    &mut t,
                    &r,
                    took,
                    killed,
                    k == n - 1,
                    kind,
                    &sid,
                    &new,
                    &method,
                    &p,
                )
            };
            if ok {
                continue;
            }
            // This session's fate is unknown (a 503 may follow a write the primary made):
            // leave it and start another.
            tokio::time::sleep(Duration::from_millis(20)).await;
            break;
        }
    }
}

/// The primary is SIGKILLed while two sidecars (one per "pod") create, patch, delete and
/// rotate sessions with `DKN_AUTH_REDIS_MIN_REPLICAS=1`. Requests answer 503 with a
/// message (never a hang) while there is no primary; the sidecars find the promoted
/// replica by themselves; every acknowledged ending is still in force afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_killed_under_load_keeps_every_acknowledged_ending() {
    let mut redis = tokio::task::spawn_blocking(|| SentinelRedis::start(1))
        .await
        .unwrap();
    let prefix = format!("fo{}:", std::process::id());
    let env = vec![
        ("DKN_AUTH_REDIS_URI", redis.uri()),
        ("DKN_AUTH_REDIS_PASSWORD", redis.password.clone()),
        ("DKN_AUTH_REDIS_MIN_REPLICAS", "1".to_string()),
        ("DKN_AUTH_PREFIX", prefix.clone()),
    ];
    let pods = [spawn_sidecar(&env), spawn_sidecar(&env)];
    for p in &pods {
        wait_status(&p.addr, &s("", &legacy_sid()), 404, Duration::from_secs(15)).await;
    }

    // An acknowledged delete is on the replica at once: that is what WAIT bought.
    let mut a = Client::new(pods[0].addr.clone());
    let sid = legacy_sid();
    let (r, _) = timed(
        &mut a,
        Method::PUT,
        &s("", &sid),
        &[],
        Some(json!({"data": {"uid": 1}})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let (r, _) = timed(&mut a, Method::DELETE, &s("", &sid), &[], None).await;
    assert_eq!(r.status, 204, "{r:?}");
    let replica = &redis.nodes[1];
    let tomb = format!("{prefix}{{{sid}}}:t:{sid}");
    assert_eq!(
        replica.cli(&["EXISTS", &tomb]).as_deref(),
        Ok("1"),
        "the tombstone of an acknowledged delete is on the replica"
    );

    let load = Arc::new(Load {
        stop: Arc::new(AtomicBool::new(false)),
        killed_at: Arc::new(Mutex::new(None)),
    });
    let tallies: Vec<Arc<Mutex<Tally>>> = (0..4).map(|_| Arc::default()).collect();
    let workers: Vec<_> = tallies
        .iter()
        .enumerate()
        .map(|(n, t)| tokio::spawn(worker(pods[n % 2].addr.clone(), load.clone(), t.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let old = redis.nodes[0].port;
    let started = Instant::now();
    redis.nodes[0].kill();
    *load.killed_at.lock().unwrap() = Some(started);
    let (redis_back, promoted) = tokio::task::spawn_blocking(move || {
        let p = redis.wait_new_primary(old, Duration::from_secs(20));
        (redis, p)
    })
    .await
    .unwrap();
    redis = redis_back;
    let promoted = promoted.expect("Sentinels promoted the replica within 20 s");
    let promoted_after = started.elapsed();
    // The killed primary comes back as a replica of the new one (as a Redis Pod of a
    // Sentinel set starts), so endings can be acknowledged again.
    redis.node(old).restart_as_replica_of(promoted);
    let redis = tokio::task::spawn_blocking(move || {
        let ok = redis.wait_replicas_online(promoted, 1, Duration::from_secs(20));
        assert!(ok, "the old primary rejoined as a replica");
        redis
    })
    .await
    .unwrap();
    let rejoined_after = started.elapsed();

    // Both sidecars acknowledge endings again, by themselves.
    let deadline = started + Duration::from_secs(25);
    loop {
        let ended = tallies
            .iter()
            .all(|t| t.lock().unwrap().first_ending_after_kill.is_some());
        if ended {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a sidecar did not acknowledge an ending within 25 s of the kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    // Soft-rotated old sids live 1 s more; let them expire.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let mut total = Tally::default();
    let mut writes_back = Duration::ZERO;
    let mut endings_back = Duration::ZERO;
    for t in &tallies {
        let mut t = t.lock().unwrap();
        total.acknowledged += t.acknowledged;
        total.unavailable += t.unavailable;
        total.unexpected.append(&mut t.unexpected);
        total.slowest = total.slowest.max(t.slowest);
        total.slowest_503 = total.slowest_503.max(t.slowest_503);
        total.endings.append(&mut t.endings);
        total.live.append(&mut t.live);
        total.messages_503.append(&mut t.messages_503);
        if let Some(w) = t.first_write_after_kill {
            writes_back = writes_back.max(w - started);
        }
        if let Some(e) = t.first_ending_after_kill {
            endings_back = endings_back.max(e - started);
        }
    }

    // Every acknowledged ending holds, read through the other pod's sidecar as well.
    let mut clients = [
        Client::new(pods[0].addr.clone()),
        Client::new(pods[1].addr.clone()),
    ];
    let mut endings_lost: Vec<String> = Vec::new();
    for (n, e) in total.endings.iter().enumerate() {
        let c = &mut clients[n % 2];
        let (g, _) = timed(c, Method::GET, &s("", &e.old), &[], None).await;
        let (p, _) = timed(
            c,
            Method::PATCH,
            &s("", &e.old),
            &[],
            Some(json!({"set": {"late": true}})),
        )
        .await;
        // Deleted or hard-rotated: tombstoned (410); soft-rotated: expired after 1 s (404).
        let refused = match e.kind {
            Ending::Delete | Ending::Rotate => 410,
            Ending::SoftRotate => 404,
        };
        if g.status != 404 || p.status != refused {
            endings_lost.push(format!(
                "{e:?}: GET {} PATCH {} (want 404 and {refused})",
                g.status, p.status
            ));
        }
        if let Some(new) = &e.new {
            let (g, _) = timed(c, Method::GET, &s("", new), &[], None).await;
            let data = g.json()["data"].clone();
            if g.status != 200 || data["rotated"] != json!(true) || data["step"] != json!(2) {
                endings_lost.push(format!("{e:?}: new sid GET {} {data}", g.status));
            }
        }
    }
    // Data writes are not waited for: count the acknowledged ones the fail-over lost.
    let mut data_lost = 0;
    for (n, (sid, version)) in total.live.iter().enumerate() {
        let c = &mut clients[n % 2];
        let (g, _) = timed(c, Method::GET, &s("", sid), &[], None).await;
        let ok = g.status == 200
            && g.json()["version"].as_u64().unwrap_or(0) >= *version
            && g.json()["data"]["step"] == json!(2);
        if !ok {
            data_lost += 1;
        }
    }

    let mut kinds: Vec<&str> = total
        .messages_503
        .iter()
        .map(|m| {
            if m.contains("acknowledged") {
                "replicas did not acknowledge"
            } else if m.contains("Sentinel") {
                "no usable primary from the Sentinels"
            } else if m.contains("did not answer within") {
                "timeout"
            } else {
                "connection to Redis failed"
            }
        })
        .collect();
    kinds.sort_unstable();
    kinds.dedup();
    eprintln!(
        "fail-over: promoted after {promoted_after:?}, old primary rejoined after {rejoined_after:?}; \
         data writes back after {writes_back:?}, endings back after {endings_back:?}; \
         {} acknowledged requests, {} answered 503 ({kinds:?}), slowest request {:?}, slowest 503 {:?}; \
         {} acknowledged endings checked, {} lost; {} live sessions checked, {data_lost} lost \
         (data writes are not waited for)",
        total.acknowledged,
        total.unavailable,
        total.slowest,
        total.slowest_503,
        total.endings.len(),
        endings_lost.len(),
        total.live.len(),
    );
    assert!(
        total.unexpected.is_empty(),
        "only 2xx and 503 during a fail-over: {:?}",
        &total.unexpected[..total.unexpected.len().min(10)]
    );
    assert!(
        total.unavailable > 0,
        "the outage was seen (requests answered 503 while there was no primary)"
    );
    assert!(
        total.slowest <= TIMEOUT + SLACK,
        "no request took more than the backend timeout + {SLACK:?}: slowest {:?}",
        total.slowest
    );
    assert!(
        endings_lost.is_empty(),
        "acknowledged endings undone by the fail-over: {:?}",
        &endings_lost[..endings_lost.len().min(10)]
    );
    assert!(
        total
            .endings
            .iter()
            .filter(|e| e.kind == Ending::Delete)
            .count()
            > 5
            && total
                .endings
                .iter()
                .filter(|e| e.kind == Ending::Rotate)
                .count()
                > 5
            && total
                .endings
                .iter()
                .filter(|e| e.kind == Ending::SoftRotate)
                .count()
                > 5,
        "the load ended sessions in every way"
    );
    assert!(
        writes_back < Duration::from_secs(20),
        "writes recovered within 20 s of the kill: {writes_back:?}"
    );
    assert!(
        endings_back < rejoined_after + Duration::from_secs(5),
        "endings acknowledged again within 5 s of a replica being back: {endings_back:?}"
    );
    drop(redis);
}

/// Sentinels that do not know the master name, or name a primary that is dead while no
/// quorum is left to replace it, or are all gone: 503 with a message, within the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_usable_primary_answers_503_quickly() {
    let mut redis = tokio::task::spawn_blocking(|| SentinelRedis::start(0))
        .await
        .unwrap();
    let base = |uri: String| {
        vec![
            ("DKN_AUTH_REDIS_URI", uri),
            ("DKN_AUTH_REDIS_PASSWORD", redis.password.clone()),
            ("DKN_AUTH_PREFIX", format!("np{}:", std::process::id())),
        ]
    };
    let wrong = spawn_sidecar(&base(redis.uri_for("nosuchmaster")));
    let right = spawn_sidecar(&base(redis.uri()));
    wait_status(&wrong.addr, "/healthz", 200, Duration::from_secs(10)).await;
    wait_status(
        &right.addr,
        &s("", &legacy_sid()),
        404,
        Duration::from_secs(15),
    )
    .await;

    let put = |sid: &str| (Method::PUT, s("", sid), Some(json!({"data": {"uid": 1}})));
    let mut c = Client::new(wrong.addr.clone());
    for _ in 0..3 {
        let (m, p, b) = put(&legacy_sid());
        let (r, took) = timed(&mut c, m, &p, &[], b).await;
        assert_eq!(r.status, 503, "{r:?}");
        check_503(&r, "unknown master name");
        let msg = r.json()["message"].as_str().unwrap_or("").to_owned();
        assert!(
            msg.contains("nosuchmaster") && msg.contains("does not monitor"),
            "says the Sentinels do not know the name: {msg}"
        );
        assert!(took <= TIMEOUT + SLACK, "answered in {took:?}");
    }

    // The right name works, then the primary and two of three Sentinels die: the last
    // Sentinel cannot reach a quorum, so nothing is promoted.
    let mut c = Client::new(right.addr.clone());
    let (m, p, b) = put(&legacy_sid());
    let (r, _) = timed(&mut c, m, &p, &[], b).await;
    assert_eq!(r.status, 201, "{r:?}");
    redis.nodes[0].kill();
    redis.sentinels[0].kill();
    redis.sentinels[1].kill();
    let end = Instant::now() + Duration::from_millis(2500);
    let mut answered = 0;
    let mut last_msg = String::new();
    while Instant::now() < end {
        let (m, p, b) = put(&legacy_sid());
        let (r, took) = timed(&mut c, m, &p, &[], b).await;
        assert_eq!(r.status, 503, "{r:?}");
        check_503(&r, "dead primary, no quorum");
        assert!(took <= TIMEOUT + SLACK, "answered in {took:?}");
        answered += 1;
        last_msg = r.json()["message"].as_str().unwrap_or("").to_owned();
    }
    assert!(answered >= 3, "answered {answered} requests in 2.5 s");
    eprintln!(
        "dead primary, no quorum: {answered} requests answered 503 in 2.5 s, the last: {}",
        last_msg
    );
    // The last Sentinel goes too (a failed look-up is reused for 100 ms).
    redis.sentinels[2].kill();
    tokio::time::sleep(Duration::from_millis(150)).await;
    for _ in 0..3 {
        let (m, p, b) = put(&legacy_sid());
        let (r, took) = timed(&mut c, m, &p, &[], b).await;
        assert_eq!(r.status, 503, "{r:?}");
        check_503(&r, "no Sentinel");
        let msg = r.json()["message"].as_str().unwrap_or("").to_owned();
        assert!(
            msg.matches("Connection refused").count() == 3 && !msg.contains(" names "),
            "names each Sentinel and why it failed: {msg}"
        );
        assert!(took <= TIMEOUT + SLACK, "answered in {took:?}");
        eprintln!("no Sentinel left: 503 in {took:?}: {}", r.json()["message"]);
    }
}

/// `DKN_AUTH_REDIS_MIN_REPLICAS=1` on a Redis without replicas: data writes work, every
/// ending answers 503 saying that no replica acknowledged it (a setting mistake shows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_replicas_without_a_replica_refuses_to_acknowledge_endings() {
    let mut flags = backend_flags(Backend::Redis);
    flags.push("--redis-min-replicas=1".into());
    flags.push(format!("--backend-timeout-ms={TIMEOUT_MS}"));
    let h = Harness::with_flags(flags).await;
    let mut c = h.client();
    let id = identifier();
    let sid = modern_sid(&id);
    let (r, _) = timed(
        &mut c,
        Method::PUT,
        &s("", &sid),
        &[],
        Some(json!({"data": {"uid": 1}})),
    )
    .await;
    assert_eq!(r.status, 201, "a data write does not wait: {r:?}");
    let (r, _) = timed(
        &mut c,
        Method::PATCH,
        &s("", &sid),
        &[],
        Some(json!({"set": {"k": 1}})),
    )
    .await;
    assert_eq!(r.status, 200, "a data write does not wait: {r:?}");

    let other = legacy_sid();
    let (r, _) = timed(
        &mut c,
        Method::PUT,
        &s("", &other),
        &[],
        Some(json!({"data": {"uid": 2}})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let cases = [
        (Method::DELETE, s("", &other), None, "session deletion"),
        (
            Method::POST,
            s("/rotate", &sid),
            Some(json!({"new_sid": modern_sid(&id), "keep_old": {"ttl": 60}})),
            "session rotation",
        ),
        (
            Method::POST,
            "/v1/identifiers/delete".to_string(),
            Some(json!({"identifiers": [id]})),
            "identifier deletion",
        ),
    ];
    for (method, path, body, what) in cases {
        let (r, took) = timed(&mut c, method.clone(), &path, &[], body).await;
        assert_eq!(r.status, 503, "{method} {path}: never a success: {r:?}");
        check_503(&r, what);
        let msg = r.json()["message"].as_str().unwrap_or("").to_owned();
        assert!(
            msg.contains(what)
                && msg.contains("only 0 of the 1 replica(s)")
                && msg.contains("DKN_AUTH_REDIS_MIN_REPLICAS")
                && msg.contains("0 replica(s) connected"),
            "says how many replicas acknowledged and why: {msg}"
        );
        assert!(took <= TIMEOUT + SLACK, "{what} answered in {took:?}");
    }
    // A refused rotation (gone) changed nothing and needs no replica: it answers as it is.
    let (r, took) = timed(
        &mut c,
        Method::POST,
        &s("/rotate", &other),
        &[],
        Some(json!({"new_sid": legacy_sid()})),
    )
    .await;
    assert_eq!(r.status, 410, "{r:?}");
    assert!(
        took < Duration::from_millis(300),
        "no WAIT for a refusal: {took:?}"
    );
}

/// A fail-over with the primary alive (`SENTINEL FAILOVER`): the former primary turns
/// replica and answers writes with `READONLY` (or cuts a `WAIT` short with `UNBLOCKED`); the
/// sidecar drops those connections, asks the Sentinels again and writes to the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demoted_primary_is_left_for_the_new_one() {
    let redis = tokio::task::spawn_blocking(|| SentinelRedis::start(1))
        .await
        .unwrap();
    let mut flags = vec![
        "--driver=redis".to_string(),
        format!("--redis-uri={}", redis.uri()),
        format!("--redis-password={}", redis.password),
        "--redis-min-replicas=1".into(),
        format!("--backend-timeout-ms={TIMEOUT_MS}"),
    ];
    flags.push(format!("--prefix=dm{}:", std::process::id()));
    let h = Harness::with_flags(flags).await;
    let mut c = h.client();
    let old = redis.nodes[0].port;
    let sentinel = &redis.sentinels[0];
    // A Sentinel that has only just met the replica answers NOGOODSLAVE for a moment.
    let asked = Instant::now();
    loop {
        let out = sentinel.cli(&["SENTINEL", "FAILOVER", &redis.name]);
        if out.as_deref() == Ok("OK") {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "fail-over refused: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = Instant::now();
    let prefix = format!("dm{}:", std::process::id());
    let mut statuses: Vec<u16> = Vec::new();
    let mut moved = None;
    let mut ended = None;
    while started.elapsed() < Duration::from_secs(25) && ended.is_none() {
        let sid = legacy_sid();
        let (r, took) = timed(
            &mut c,
            Method::PUT,
            &s("", &sid),
            &[],
            Some(json!({"data": {"uid": 1}})),
        )
        .await;
        assert!(took <= TIMEOUT + SLACK, "answered in {took:?}");
        statuses.push(r.status.as_u16());
        if r.status == 503 {
            check_503(&r, "during the fail-over");
        }
        // Written on the primary the Sentinels now name, not on the old one?
        if r.status == 201 && moved.is_none() {
            let key = format!("{prefix}{{{sid}}}:s:{sid}");
            let on_new = redis.primary_port().filter(|p| *p != old).and_then(|p| {
                let n = redis.nodes.iter().find(|n| n.port == p)?;
                n.cli(&["EXISTS", &key]).ok()
            });
            if on_new.as_deref() == Some("1") {
                moved = Some(started.elapsed());
            }
        }
        let (d, took) = timed(&mut c, Method::DELETE, &s("", &sid), &[], None).await;
        assert!(took <= TIMEOUT + SLACK, "answered in {took:?}");
        statuses.push(d.status.as_u16());
        if d.status == 503 {
            check_503(&d, "during the fail-over");
        } else if d.status == 204 && moved.is_some() {
            ended = Some(started.elapsed());
        }
        if std::env::var("TEST_TRACE").is_ok() {
            eprintln!(
                "{:?} PUT {} DELETE {} {}",
                started.elapsed(),
                r.status,
                d.status,
                String::from_utf8_lossy(&d.body)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let unexpected: Vec<&u16> = statuses
        .iter()
        .filter(|s| !matches!(s, 201 | 204 | 503))
        .collect();
    let n503 = statuses.iter().filter(|s| **s == 503).count();
    eprintln!(
        "demotion: {} requests, {n503} answered 503; writes on the new primary after {moved:?}, \
         endings acknowledged again after {ended:?} (once Sentinel demoted the old primary)",
        statuses.len()
    );
    assert!(unexpected.is_empty(), "only 2xx and 503: {unexpected:?}");
    // Promotion takes about a second; the primary check runs every second.
    let moved = moved.expect("the sidecar writes to the new primary");
    assert!(
        moved < Duration::from_secs(6),
        "moved to the new primary in {moved:?}"
    );
    // Sentinel demotes the old primary some 8 s after the promotion; only then has the new
    // one a replica to acknowledge endings.
    assert!(ended.is_some(), "endings acknowledged again within 25 s");
    // The old primary is a replica now.
    let role = redis.nodes[0].cli(&["ROLE"]).unwrap_or_default();
    assert!(
        role.starts_with("slave"),
        "the former primary was demoted: {role}"
    );
}

/// A fail-over whose last step is slow: after `+promoted-slave` the Sentinel leading it
/// waits for every other replica to follow the new primary before `+switch-master`, and
/// until then its `SENTINEL MASTER` still gives the dead primary's address. Here that wait
/// lasts the whole `failover-timeout` (60 s): the second replica cannot be promoted
/// (`replica-priority 0`) nor told to follow (`SLAVEOF`/`REPLICAOF` renamed away). The
/// sidecar must write to the promoted replica within seconds of the promotion, as the
/// leader's `GET-MASTER-ADDR-BY-NAME` names it, not a minute later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoted_replica_is_used_before_the_switch() {
    let (redis, promotable, stuck) = tokio::task::spawn_blocking(|| {
        use odoo_ha_testkit::RedisServer;
        let password = format!("pw-{}-{}", std::process::id(), free_port());
        let name = "sessions".to_string();
        let primary = RedisServer::start_node(&password, None);
        let old = primary.port;
        let promotable = RedisServer::start_node(&password, Some(old));
        let stuck = RedisServer::start_node_with(
            &password,
            Some(old),
            &[
                "--replica-priority",
                "0",
                "--rename-command",
                "SLAVEOF",
                "",
                "--rename-command",
                "REPLICAOF",
                "",
            ],
        );
        let (p, q) = (promotable.port, stuck.port);
        // One Sentinel (quorum 1): it leads the fail-over, and no other Sentinel can pass
        // the new address on meanwhile.
        let sentinel = RedisServer::start_sentinel_with(&name, old, 1, &password, true, 60_000);
        let set = SentinelRedis {
            name,
            password,
            nodes: vec![primary, promotable, stuck],
            sentinels: vec![sentinel],
        };
        assert!(
            set.wait_replicas_online(old, 2, Duration::from_secs(15)),
            "replicas in sync"
        );
        let end = Instant::now() + Duration::from_secs(20);
        while !set.sentinels[0]
            .cli(&["SENTINEL", "REPLICAS", &set.name])
            .is_ok_and(|r| r.contains(&p.to_string()) && r.contains(&q.to_string()))
        {
            assert!(
                Instant::now() < end,
                "the Sentinel did not learn both replicas"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        (set, p, q)
    })
    .await
    .unwrap();
    let mut redis = redis;
    let sidecar = spawn_sidecar(&[
        ("DKN_AUTH_REDIS_URI", redis.uri()),
        ("DKN_AUTH_REDIS_PASSWORD", redis.password.clone()),
        ("DKN_AUTH_PREFIX", format!("pr{}:", std::process::id())),
    ]);
    wait_status(
        &sidecar.addr,
        &s("", &legacy_sid()),
        404,
        Duration::from_secs(15),
    )
    .await;
    let mut c = Client::new(sidecar.addr.clone());
    let (r, _) = create_one(&mut c).await;
    assert_eq!(r.status, 201, "{r:?}");

    let old = redis.nodes[0].port;
    redis.nodes[0].kill();
    let started = Instant::now();
    let mut n503 = 0;
    let back = loop {
        let (r, took) = create_one(&mut c).await;
        assert!(took <= TIMEOUT + SLACK, "answered in {took:?}");
        match r.status.as_u16() {
            201 => break started.elapsed(),
            503 => {
                check_503(&r, "during the fail-over");
                n503 += 1;
            }
            other => panic!("only 201 and 503 during the fail-over, got {other}: {r:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no write acknowledged within 20 s of the kill ({n503} answered 503)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The write went to the promoted replica while the Sentinel still had not switched.
    let master = redis.sentinels[0]
        .cli(&["SENTINEL", "MASTER", &redis.name])
        .unwrap_or_default();
    let named = redis.sentinels[0]
        .cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &redis.name])
        .unwrap_or_default();
    eprintln!(
        "promoted replica written to {back:?} after the kill ({n503} answered 503 before); \
         the Sentinel's current address: {}",
        named.replace('\n', ":")
    );
    assert!(
        master
            .lines()
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w[0] == "port" && w[1] == old.to_string()),
        "the test needs the Sentinel still between promotion and switch: {master}"
    );
    assert!(named.ends_with(&promotable.to_string()), "{named}");
    let role = redis.node(promotable).cli(&["ROLE"]).unwrap_or_default();
    assert!(role.starts_with("master"), "{role}");
    let role = redis.node(stuck).cli(&["ROLE"]).unwrap_or_default();
    assert!(
        role.starts_with("slave"),
        "the second replica never followed: {role}"
    );
}

/// Password-protected nodes behind Sentinels that have no password: the sidecar's `AUTH` is
/// refused by the Sentinels, so it asks them without one and still finds the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_sentinels_in_front_of_password_nodes() {
    let redis = tokio::task::spawn_blocking(|| SentinelRedis::start_with(0, false))
        .await
        .unwrap();
    let h = Harness::with_flags(vec![
        "--driver=redis".to_string(),
        format!("--redis-uri={}", redis.uri()),
        format!("--redis-password={}", redis.password),
        format!("--prefix=os{}:", std::process::id()),
    ])
    .await;
    let mut c = h.client();
    let sid = legacy_sid();
    let (r, _) = timed(
        &mut c,
        Method::PUT,
        &s("", &sid),
        &[],
        Some(json!({"data": {"uid": 1}})),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
}

/// `n` requests at once (GETs and PATCHes of `sids`, create-only PUTs), so the sidecar's
/// requests in flight spread over every pool slot. Returns what did not succeed.
async fn burst(h: &Harness, sids: &[String], n: usize) -> Vec<String> {
    let calls = (0..n).map(|i| {
        let mut c = h.client();
        let sid = sids[i % sids.len()].clone();
        async move {
            let (method, path, headers, body) = match i % 3 {
                0 => (Method::GET, s("", &sid), vec![], None),
                1 => (
                    Method::PATCH,
                    s("", &sid),
                    vec![],
                    Some(json!({"set": {"i": i}})),
                ),
                _ => (
                    Method::PUT,
                    s("", &legacy_sid()),
                    vec![("if-none-match", "*")],
                    Some(json!({"data": {"i": i}})),
                ),
            };
            let (r, _) = timed(&mut c, method.clone(), &path, &headers, body).await;
            (!r.status.is_success()).then(|| format!("{method} -> {} {:?}", r.status, r.json()))
        }
    });
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Issue 8: after a fail-over, pool slots not picked during the outage kept their dead
/// connections to the killed primary, and each failed the first request that picked it
/// (`503 ... broken pipe`), long after the sidecar served the new primary. Once it does,
/// no request may fail, whichever slot it lands on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_on_a_dead_connection_after_a_failover() {
    let mut redis = tokio::task::spawn_blocking(|| SentinelRedis::start(1))
        .await
        .unwrap();
    let h = Harness::with_flags(vec![
        "--driver=redis".into(),
        format!("--redis-uri={}", redis.uri()),
        format!("--redis-password={}", redis.password),
        "--redis-max-conn=2".into(),
        format!("--backend-timeout-ms={TIMEOUT_MS}"),
    ])
    .await;
    let mut c = h.client();
    let mut sids = Vec::new();
    for i in 0..16 {
        let sid = legacy_sid();
        let (r, _) = timed(
            &mut c,
            Method::PUT,
            &s("", &sid),
            &[],
            Some(json!({"data": {"i": i}})),
        )
        .await;
        assert_eq!(r.status, 201, "{r:?}");
        sids.push(sid);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.state.store.pool_in_use() < 2 {
        assert!(Instant::now() < deadline, "the load never used both slots");
        let failed = burst(&h, &sids, 4 * PIPELINE_DEPTH).await;
        assert!(failed.is_empty(), "before the fail-over: {failed:?}");
    }
    // Every acknowledged write is on the replica before its primary dies.
    let primary = redis.nodes[0].port;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let offsets = redis.nodes[0]
            .cli(&["INFO", "replication"])
            .unwrap_or_default();
        let offset = |field: &str| {
            offsets
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let synced = offsets
            .lines()
            .find(|l| l.starts_with("slave0:"))
            .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("offset=")))
            .and_then(|v| v.parse::<u64>().ok());
        if synced.is_some() && synced == offset("master_repl_offset:") {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Steady, sequential traffic through the fail-over (as an idle-ish pod sees it): it
    // answers 503 while there is no primary, and reconnects one slot to the new one.
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let stop = stop.clone();
        let mut c = h.client();
        let sid = sids[0].clone();
        tokio::spawn(async move {
            let mut ok_after = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let (r, _) = timed(&mut c, Method::GET, &s("", &sid), &[], None).await;
                if r.status == 200 {
                    ok_after += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ok_after
        })
    };
    redis.nodes[0].kill();
    let (redis, promoted) = tokio::task::spawn_blocking(move || {
        let p = redis.wait_new_primary(primary, Duration::from_secs(20));
        (redis, p)
    })
    .await
    .unwrap();
    promoted.expect("Sentinels promoted the replica within 20 s");
    wait_status(&h.addr, &s("", &sids[0]), 200, Duration::from_secs(10)).await;
    // Served on the new primary for a while (the primary check runs every second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    assert!(trickle.await.unwrap() > 0);

    let mut failed = Vec::new();
    for _ in 0..4 {
        failed.extend(burst(&h, &sids, 4 * PIPELINE_DEPTH).await);
    }
    assert!(
        failed.is_empty(),
        "{} request(s) failed on the new primary: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    drop(redis);
}

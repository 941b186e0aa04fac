//! Hostile clients against the sidecar binary, on every driver: half-open connections
//! (slowloris) beyond the connection budget, made-up methods that would grow the metrics,
//! and malformed request heads that hyper refuses before the router. Loopback only, every
//! flood bounded in count and time.

mod common;

use std::time::{Duration, Instant};

use http::Method;
use odoo_ha_testkit::{free_port, Client};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::process::Process;
use common::{backend_flags, legacy_sid, Backend};

/// `serve::HEADER_TIMEOUT` of the binary.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The open-file limit the sidecar runs under in the flood test: its session budget is
/// then a few hundred connections, below the flood.
const SIDECAR_FILES: u32 = 512;

/// Connections of the flood: more than the budget any driver gets under `SIDECAR_FILES`.
const FLOOD: usize = 600;

/// Lets this test process hold the flood's connections.
fn raise_own_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write only the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn started(backend: Backend, extra: &[String]) -> Vec<String> {
    let mut flags = backend_flags(backend);
    flags.extend_from_slice(extra);
    flags
}

async fn wait_usable(p: &mut Process) {
    p.wait_serving().await;
    let mut c = p.client();
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if matches!(c.get("/readyz?backend=1").await, Ok(r) if r.status == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the backend never became usable:\n{}", p.log());
}

/// Reads what a raw connection gets within `limit`: the bytes, and whether it was closed.
async fn read_all(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let end = Instant::now() + limit;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

/// One raw request on a raw connection; the answer's status and JSON body.
async fn raw_exchange(addr: &str, bytes: &[u8]) -> (u16, Value, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let (out, _) = read_all(&mut s, Duration::from_secs(3)).await;
    parse_answer(&out)
}

fn parse_answer(out: &[u8]) -> (u16, Value, String) {
    let text = String::from_utf8_lossy(out).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| serde_json::from_str(b).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    (status, body, text)
}

fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// More half-open connections than the session budget: the health listener, an existing
/// keep-alive client and (once the half-open ones are gone) new clients are all served;
/// the connections beyond the budget are answered `503 too_many_connections`; the
/// half-open ones are closed after the header timeout, with a `408` for those that sent
/// part of a head; an idle keep-alive connection outlives the header timeout.
async fn slowloris(backend: Backend) {
    raise_own_file_limit();
    let health = format!("127.0.0.1:{}", free_port());
    let mut p = Process::start_with_file_limit(
        SIDECAR_FILES,
        &started(backend, &[format!("--health-listen={health}")]),
    );
    wait_usable(&mut p).await;
    let budget: usize = p
        .lines_with("max_connections=")
        .iter()
        .find(|l| l.contains("serving") && !l.contains("health"))
        .and_then(|l| {
            l.split("max_connections=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no budget in the log:\n{}", p.log()));
    assert!(budget < FLOOD, "budget {budget} is not below the flood");

    // The addon's kind of client: connected before the flood, idle across it.
    let sid = legacy_sid();
    let path = format!("/v1/sessions/{sid}");
    let mut keep = p.client();
    let r = keep
        .json(Method::PUT, &path, &[], &json!({"data": {"k": 1}}))
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    let mut idle = TcpStream::connect(&p.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    let flood_start = Instant::now();
    let mut flood = Vec::new();
    for i in 0..FLOOD {
        let mut s = TcpStream::connect(&p.addr).await.expect("flood connect");
        if i % 3 != 0 {
            // Part of a head, never finished; the others send nothing at all.
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
        }
        flood.push(s);
    }
    // Refusals in progress (each at most 1 s) are over: a new client gets the answer.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let t = Instant::now();
    let mut probe = Client::new(health.clone());
    let r = tokio::time::timeout(Duration::from_secs(2), probe.get("/healthz"))
        .await
        .expect("health listener answers under the flood")
        .unwrap();
    assert_eq!(r.status, 200);
    let r = tokio::time::timeout(Duration::from_secs(2), keep.get(&path))
        .await
        .expect("a connected client is served under the flood")
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let (status, body, text) = raw_exchange(
        &p.addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 503, "a new connection beyond the budget: {text}");
    assert_eq!(body["error"], "too_many_connections", "{text}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains(&budget.to_string()),
        "{text}"
    );

    // After the header timeout every flood connection is closed.
    let wait = (HEADER_TIMEOUT + Duration::from_secs(2)).saturating_sub(flood_start.elapsed());
    tokio::time::sleep(wait).await;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut s) in flood.into_iter().enumerate() {
        tasks.spawn(async move {
            let (out, closed) = read_all(&mut s, Duration::from_secs(2)).await;
            (i, out, closed)
        });
    }
    let (mut timeouts, mut refused) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        let (i, out, closed) = done.unwrap();
        assert!(
            closed,
            "flood connection {i} still open {:?} after it began",
            flood_start.elapsed()
        );
        let (status, body, text) = parse_answer(&out);
        match status {
            408 => {
                assert_eq!(body["error"], "header_timeout", "{text}");
                assert!(i % 3 != 0, "a silent connection was answered: {text}");
                timeouts += 1;
            }
            503 => {
                assert_eq!(body["error"], "too_many_connections", "{text}");
                refused += 1;
            }
            0 => {}
            other => panic!("flood connection {i}: unexpected answer {other}: {text}"),
        }
    }
    assert!(
        timeouts > 0 && refused > 0,
        "{timeouts} 408s, {refused} 503s"
    );

    // The idle keep-alive connection outlived the header timeout.
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut buf))
        .await
        .expect("idle keep-alive connection answers")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // New clients are served again.
    let r = p.client().get(&path).await.unwrap();
    assert_eq!(r.status, 200);
    let m = String::from_utf8_lossy(&Client::new(health).get("/metrics").await.unwrap().body)
        .into_owned();
    assert!(
        metric_sum(
            &m,
            "dkn_sidecar_connections_closed_total{listener=\"session\",reason=\"header_timeout\"}"
        ) >= timeouts as f64,
        "{m}"
    );
    assert!(
        metric_sum(
            &m,
            "dkn_sidecar_connections_refused_total{listener=\"session\"}"
        ) >= refused as f64,
        "{m}"
    );
    assert!(p.running(), "{}", p.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_memory() {
    slowloris(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_redis() {
    slowloris(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_postgres() {
    slowloris(Backend::Postgres).await;
}

/// 2,000 made-up methods on real and unknown routes: the metrics keep a bounded set of
/// series (method `other`, route `unmatched`).
async fn made_up_methods(backend: Backend) {
    let mut p = Process::start(&backend_flags(backend));
    wait_usable(&mut p).await;
    let sid = legacy_sid();
    let mut c = p.client();
    for i in 0..2000 {
        let method = Method::from_bytes(format!("X{i}Y").as_bytes()).unwrap();
        let path = if i % 2 == 0 {
            format!("/v1/sessions/{sid}")
        } else {
            format!("/made/up/{i}")
        };
        let r = c.send(method, &path, &[], None).await.unwrap();
        assert!(r.status == 405 || r.status == 404, "{}", r.status);
        assert!(r.json()["error"].is_string(), "{:?}", r.body);
    }
    let m = String::from_utf8_lossy(&c.get("/metrics").await.unwrap().body).into_owned();
    let series: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("dkn_sidecar_request_duration_seconds_count"))
        .collect();
    assert!(
        series.len() <= 8,
        "{} series:\n{}",
        series.len(),
        series.join("\n")
    );
    assert!(m.len() < 32 * 1024, "/metrics is {} bytes", m.len());
    assert!(
        series
            .iter()
            .any(|l| l.contains("method=\"other\"") && l.ends_with(" 1000")),
        "{}",
        series.join("\n")
    );
    assert!(
        series
            .iter()
            .any(|l| l.contains("route=\"unmatched\"") && l.contains("method=\"other\"")),
        "{}",
        series.join("\n")
    );
}

#[tokio::test]
async fn made_up_methods_memory() {
    made_up_methods(Backend::Memory).await;
}

#[tokio::test]
async fn made_up_methods_redis() {
    made_up_methods(Backend::Redis).await;
}

#[tokio::test]
async fn made_up_methods_postgres() {
    made_up_methods(Backend::Postgres).await;
}

/// Heads that hyper refuses before the router get JSON answers naming what was wrong.
async fn malformed_heads(backend: Backend) {
    let mut p = Process::start(&backend_flags(backend));
    wait_usable(&mut p).await;
    let big = "a".repeat(70 * 1024);
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(Vec<u8>, u16, &str, &str)> = vec![
        (
            b"G(T /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "bad_request",
            "request line",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nBad Name: x\r\n\r\n".to_vec(),
            400,
            "bad_request",
            "header name",
        ),
        (
            b"GET /healthz HTTP/7.0\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "bad_request",
            "version",
        ),
        (
            b"PUT /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n".to_vec(),
            400,
            "bad_request",
            "Content-Length",
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").into_bytes(),
            431,
            "headers_too_large",
            "65536 bytes",
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n").into_bytes(),
            431,
            "headers_too_large",
            "100 headers",
        ),
    ];
    for (bytes, want, code, says) in cases {
        let (status, body, text) = raw_exchange(&p.addr, &bytes).await;
        assert_eq!(status, want, "{text}");
        assert_eq!(body["error"], code, "{text}");
        assert!(
            body["message"].as_str().unwrap_or("").contains(says),
            "{says:?} not in {text}"
        );
        assert!(text.contains("content-type: application/json"), "{text}");
    }
    // A bad head after good ones on the same connection.
    let (status, _, text) = raw_exchange(
        &p.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\nG(T / HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let last = text.rfind("HTTP/1.1 400 ").map_or("", |i| &text[i..]);
    let (_, body, _) = parse_answer(last.as_bytes());
    assert_eq!(body["error"], "bad_request", "{text}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("request line"),
        "{text}"
    );
    // Still serving.
    let r = p.client().get("/healthz").await.unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn malformed_heads_memory() {
    malformed_heads(Backend::Memory).await;
}

#[tokio::test]
async fn malformed_heads_redis() {
    malformed_heads(Backend::Redis).await;
}

#[tokio::test]
async fn malformed_heads_postgres() {
    malformed_heads(Backend::Postgres).await;
}

/// At `DKN_AUTH_LOG_LEVEL=debug` the log holds no sid (a bearer token) and no session
/// value: tokio_postgres logs statements with their parameters at debug, and the crates
/// that could print what clients sent stay at info unless named.
async fn debug_logs_hold_no_secrets(backend: Backend) {
    let mut p = Process::start(&started(backend, &["--log-level=debug".into()]));
    wait_usable(&mut p).await;
    let sid = legacy_sid();
    let new_sid = legacy_sid();
    let secret = format!("secret-value-{}", &legacy_sid()[..12]);
    let path = format!("/v1/sessions/{sid}");
    let mut c = p.client();
    let r = c
        .json(Method::PUT, &path, &[], &json!({"data": {"login": secret}}))
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    let r = c
        .json(
            Method::PATCH,
            &path,
            &[],
            &json!({"set": {"token": secret}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = c.get(&path).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"]["token"], secret.as_str());
    let r = c
        .json(
            Method::POST,
            &format!("{path}/rotate"),
            &[],
            &json!({"new_sid": new_sid}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    let r = c
        .send(
            Method::DELETE,
            &format!("/v1/sessions/{new_sid}"),
            &[],
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    // The round trip is over; give the log a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = p.log();
    assert!(
        log.lines().filter(|l| l.contains("DEBUG")).count() > 0,
        "debug is not on:\n{log}"
    );
    for (what, needle) in [
        ("sid", &sid),
        ("new sid", &new_sid),
        ("session value", &secret),
    ] {
        let leaks: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(needle.as_str()))
            .collect();
        assert!(
            leaks.is_empty(),
            "the {what} is in the log:\n{}",
            leaks.join("\n")
        );
    }
}

#[tokio::test]
async fn debug_logs_hold_no_secrets_redis() {
    debug_logs_hold_no_secrets(Backend::Redis).await;
}

#[tokio::test]
async fn debug_logs_hold_no_secrets_postgres() {
    debug_logs_hold_no_secrets(Backend::Postgres).await;
}

/// A PATCH naming far more keys than a write may (1,000), within the body limit: 400
/// naming the bound, the session unchanged, the sidecar still serving.
async fn big_patch(backend: Backend) {
    let mut p = Process::start(&backend_flags(backend));
    wait_usable(&mut p).await;
    let sid = legacy_sid();
    let path = format!("/v1/sessions/{sid}");
    let mut c = p.client();
    let r = c
        .json(Method::PUT, &path, &[], &json!({"data": {"k": 1}}))
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    let set: serde_json::Map<String, Value> =
        (0..50_000).map(|i| (format!("k{i}"), json!(i))).collect();
    let t = Instant::now();
    let r = c
        .json(Method::PATCH, &path, &[], &json!({"set": set}))
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{:?}", r.body);
    let message = r.json()["message"].as_str().unwrap_or("").to_owned();
    assert!(message.contains("1000"), "{message}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let r = c.get(&path).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"], json!({"k": 1}));
    assert_eq!(r.json()["version"], 1);
}

#[tokio::test]
async fn big_patch_memory() {
    big_patch(Backend::Memory).await;
}

#[tokio::test]
async fn big_patch_redis() {
    big_patch(Backend::Redis).await;
}

#[tokio::test]
async fn big_patch_postgres() {
    big_patch(Backend::Postgres).await;
}

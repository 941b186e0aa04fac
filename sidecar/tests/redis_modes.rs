//! Redis over TLS (rediss://) and through Sentinel, against real servers.

mod common;

use common::{data_of, legacy_sid, s, Harness};
use http::Method;
use odoo_ha_testkit::{RedisServer, TestCa};
use serde_json::json;

async fn round_trip(h: &Harness) {
    let mut c = h.client();
    let sid = legacy_sid();
    let r = c
        .json(
            Method::PUT,
            &s("", &sid),
            &[("if-none-match", "*")],
            &json!({"data": {"uid": 3}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let r = c
        .json(
            Method::PATCH,
            &s("", &sid),
            &[],
            &json!({"set": {"lang": "fr"}}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r = c.get(&s("", &sid)).await.unwrap();
    assert_eq!(data_of(&r), json!({"uid": 3, "lang": "fr"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    let ca = TestCa::new();
    let redis = RedisServer::start_tls(&ca);
    let h = Harness::with_flags(vec![
        "--driver=redis".into(),
        format!("--redis-uri=rediss://localhost:{}/0", redis.port),
        format!("--redis-ca-file={}", ca.ca_cert.display()),
    ])
    .await;
    round_trip(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_refuses_an_unknown_ca() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let redis = RedisServer::start_tls(&ca);
    let h = Harness::with_flags(vec![
        "--driver=redis".into(),
        format!("--redis-uri=rediss://localhost:{}/0", redis.port),
        format!("--redis-ca-file={}", other.ca_cert.display()),
    ]);
    // Never ready: the certificate does not verify.
    let ready = tokio::time::timeout(std::time::Duration::from_secs(3), h).await;
    assert!(
        ready.is_err(),
        "a server signed by another CA must not be trusted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_sentinel() {
    let master = RedisServer::start();
    let sentinel = RedisServer::start_sentinel(master.port);
    let h = Harness::with_flags(vec![
        "--driver=redis".into(),
        format!(
            "--redis-uri=redis+sentinel://127.0.0.1:{}/mymaster/0",
            sentinel.port
        ),
    ])
    .await;
    round_trip(&h).await;
}

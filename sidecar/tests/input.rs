//! Bad input answers a JSON 4xx and changes nothing; parsing never panics or 5xxs.

mod common;

use common::{data_of, legacy_sid, s, Backend, Harness};
use http::Method;
use proptest::prelude::*;
use serde_json::json;

async fn assert_unchanged(h: &Harness, sid: &str, expected: &serde_json::Value, version: u64) {
    let r = h.client().get(&s("", sid)).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(&data_of(&r), expected);
    assert_eq!(r.json()["version"], version);
}

fn assert_json_error(r: &odoo_ha_testkit::Reply, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{r:?}");
    assert_eq!(r.json()["error"], code, "{r:?}");
    assert!(r.json()["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn malformed_sids_and_identifiers() {
    let h = Harness::start(Backend::Memory).await;
    let mut c = h.client();
    let bad = [
        "abc".to_string(),
        "A".repeat(40),
        "*".repeat(40),
        format!("{}%2A", "a".repeat(38)),
        format!("{}%00", "a".repeat(38)),
        format!("{}%0A", "a".repeat(82)),
        "a".repeat(85),
        format!("{}%3F", "a".repeat(84)),
    ];
    for sid in &bad {
        let r = c.get(&s("", sid)).await.unwrap();
        assert!(r.status == 400 || r.status == 404, "GET {sid}: {r:?}");
        if r.status == 400 {
            assert_eq!(r.json()["error"], "invalid_sid");
        }
        let r = c
            .json(Method::PUT, &s("", sid), &[], &json!({"data": {}}))
            .await
            .unwrap();
        assert!(r.status.is_client_error(), "PUT {sid}: {r:?}");
        assert!(r.json()["error"].is_string(), "JSON error body for {sid}");
    }
    let r = c
        .json(
            Method::POST,
            &s("/rotate", &legacy_sid()),
            &[],
            &json!({"new_sid": "x*"}),
        )
        .await
        .unwrap();
    assert_json_error(&r, 400, "invalid_sid");
    for ident in [
        "a".repeat(41),
        "a".repeat(43),
        format!("{}*", "a".repeat(41)),
        format!("{}%", "a".repeat(41)),
    ] {
        let r = c
            .json(
                Method::POST,
                "/v1/identifiers/missing",
                &[],
                &json!({"identifiers": [ident]}),
            )
            .await
            .unwrap();
        assert_json_error(&r, 400, "invalid_identifier");
        let r = c
            .json(
                Method::POST,
                "/v1/identifiers/delete",
                &[],
                &json!({"identifiers": ["a".repeat(42), ident]}),
            )
            .await
            .unwrap();
        assert_json_error(&r, 400, "invalid_identifier");
    }
    let too_many: Vec<String> = (0..100_001).map(|_| "a".repeat(42)).collect();
    let r = c
        .json(
            Method::POST,
            "/v1/identifiers/missing",
            &[],
            &json!({"identifiers": too_many}),
        )
        .await
        .unwrap();
    assert_json_error(&r, 400, "invalid_body");
    let batch: Vec<String> = (0..100_000).map(|i| format!("{i:042}")).collect();
    let r = c
        .json(
            Method::POST,
            "/v1/identifiers/missing",
            &[],
            &json!({"identifiers": batch}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "a batch of 100,000 is accepted");
    assert_eq!(r.json()["missing"].as_array().map(Vec::len), Some(100_000));
}

#[tokio::test]
async fn bad_bodies_change_nothing() {
    let h = Harness::start(Backend::Memory).await;
    let mut c = h.client();
    let sid = legacy_sid();
    let data = json!({"uid": 1, "login": "a"});
    c.json(Method::PUT, &s("", &sid), &[], &json!({"data": data}))
        .await
        .unwrap();
    let path = s("", &sid);
    let cases: Vec<(Method, serde_json::Value, &str)> = vec![
        (Method::PUT, json!({"data": [1, 2]}), "non-object data"),
        (Method::PUT, json!({"data": "x"}), "string data"),
        (
            Method::PUT,
            json!({"data": {}, "extra": 1}),
            "unknown field",
        ),
        (Method::PUT, json!({"data": {}, "ttl": 0}), "zero ttl"),
        (Method::PUT, json!({"data": {}, "ttl": -5}), "negative ttl"),
        (
            Method::PUT,
            json!({"data": {}, "ttl": 999_999_999u64}),
            "ttl over a year",
        ),
        (Method::PUT, json!({"data": {"": 1}}), "empty key"),
        (
            Method::PUT,
            json!({"data": {"a\u{0}b": 1}}),
            "control character in key",
        ),
        (
            Method::PATCH,
            json!({"set": {"a": 1}, "remove": ["a"]}),
            "key in set and remove",
        ),
        (Method::PATCH, json!({"set": [1]}), "set not an object"),
        (Method::PATCH, json!({"remove": "a"}), "remove not a list"),
        (Method::PATCH, json!({"sett": {}}), "misspelt field"),
        (Method::PATCH, json!([]), "array body"),
        (Method::PATCH, json!(null), "null body"),
    ];
    for (method, body, what) in cases {
        let r = c.json(method, &path, &[], &body).await.unwrap();
        assert_eq!(r.status, 400, "{what}: {r:?}");
        assert_json_error(&r, 400, "invalid_body");
    }
    let r = c
        .send(Method::PATCH, &path, &[], Some(b"{\"set\": {".to_vec()))
        .await
        .unwrap();
    assert_json_error(&r, 400, "invalid_body");
    let r = c
        .json(
            Method::PUT,
            &path,
            &[("if-match", "soon")],
            &json!({"data": {}}),
        )
        .await
        .unwrap();
    assert_json_error(&r, 400, "invalid_body");
    let r = c
        .json(
            Method::PUT,
            &path,
            &[("if-none-match", "\"3\"")],
            &json!({"data": {}}),
        )
        .await
        .unwrap();
    assert_json_error(&r, 400, "invalid_body");
    let r = c
        .json(
            Method::PATCH,
            &path,
            &[("if-none-match", "*")],
            &json!({"set": {}}),
        )
        .await
        .unwrap();
    assert_json_error(&r, 400, "invalid_body");
    let big = "x".repeat(1_100_000);
    let r = c
        .json(Method::PUT, &path, &[], &json!({"data": {"big": big}}))
        .await
        .unwrap();
    assert_json_error(&r, 413, "body_too_large");
    let r = c
        .json(
            Method::POST,
            &s("/rotate", &sid),
            &[],
            &json!({"new_sid": legacy_sid(), "data": {}, "set": {"a": 1}}),
        )
        .await
        .unwrap();
    assert_json_error(&r, 400, "invalid_body");
    assert_unchanged(&h, &sid, &data, 1).await;
}

#[tokio::test]
async fn content_type_must_be_json() {
    let h = Harness::start(Backend::Memory).await;
    let sid = legacy_sid();
    let stream = tokio::net::TcpStream::connect(&h.addr).await.unwrap();
    // A raw request: the test client always sends application/json.
    let req = format!(
        "PUT /v1/sessions/{sid} HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ncontent-length: 12\r\nconnection: close\r\n\r\n{{\"data\":{{}}}}"
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = stream;
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 415"), "{out}");
    assert!(out.contains("unsupported_media_type"), "{out}");
    assert_eq!(h.client().get(&s("", &sid)).await.unwrap().status, 404);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let h = Harness::start(Backend::Memory).await;
    let mut c = h.client();
    let r = c.get("/v2/whatever").await.unwrap();
    assert_json_error(&r, 404, "no_route");
    let r = c
        .send(Method::POST, &s("", &legacy_sid()), &[], None)
        .await
        .unwrap();
    assert_json_error(&r, 405, "method_not_allowed");
    let r = c.get("/v1/openapi.json").await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.json()["paths"]["/v1/sessions/{sid}"].is_object());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Whatever the sid and body, the answer is never a 5xx, every 4xx is JSON, and
    /// nothing but a well-formed write changes the stored session.
    #[test]
    fn arbitrary_requests_never_5xx(
        sid in "[ -~]{0,90}",
        body in prop_oneof![
            Just(b"{}".to_vec()),
            "[ -~]{0,64}".prop_map(|s| s.into_bytes()),
            prop::collection::vec(any::<u8>(), 0..128),
        ],
        method in prop_oneof![Just(Method::PUT), Just(Method::PATCH), Just(Method::POST)],
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let h = Harness::start(Backend::Memory).await;
            let mut c = h.client();
            let known = legacy_sid();
            c.json(Method::PUT, &s("", &known), &[], &json!({"data": {"a": 1}})).await.unwrap();
            let encoded: String = sid.bytes().map(|b| format!("%{b:02X}")).collect();
            let path = if method == Method::POST { s("/rotate", &encoded) } else { s("", &encoded) };
            let r = c.send(method, &path, &[], Some(body)).await.unwrap();
            prop_assert!(!r.status.is_server_error(), "{:?}", r);
            if r.status.is_client_error() {
                prop_assert!(r.json()["error"].is_string(), "{:?}", r);
            }
            let r = c.get(&s("", &known)).await.unwrap();
            prop_assert_eq!(data_of(&r), json!({"a": 1}));
            Ok(())
        })?;
    }

    #[test]
    fn sid_parser_accepts_exactly_odoo_formats(s in "[ -~]{0,90}") {
        let ok = odoo_session_sidecar::model::Sid::parse(&s).is_ok();
        let legacy = s.len() == 40 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let modern = (s.len() == 84 || s.len() == 86) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        prop_assert_eq!(ok, legacy || modern);
    }

    /// Random printable strings almost never look like a modern sid: this one generates
    /// URL-safe strings around the accepted lengths (84 for Odoo 18/19, 86 after 19).
    #[test]
    fn sid_parser_accepts_only_the_modern_lengths(s in "[A-Za-z0-9_-]{80,90}") {
        let ok = odoo_session_sidecar::model::Sid::parse(&s).is_ok();
        prop_assert_eq!(ok, s.len() == 84 || s.len() == 86);
    }
}

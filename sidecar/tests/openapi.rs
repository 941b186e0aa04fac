//! docs/openapi.json against the router and the running sidecar: every route is described
//! with its methods, and what the sidecar answers is what the document lists.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{backend_flags, identifier, legacy_sid, modern_sid, s, Backend, Harness};
use http::Method;
use odoo_ha_testkit::Reply;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DOC: &str = include_str!("../../docs/openapi.json");
const ROUTER_SRC: &str = include_str!("../src/http/mod.rs");

/// The routes of `router()` in src/http/mod.rs, written out so a route added there without
/// its description here and in the document fails this test.
const ROUTES: &[(&str, &[&str])] = &[
    ("/v1/sessions/{sid}", &["get", "put", "patch", "delete"]),
    ("/v1/sessions/{sid}/rotate", &["post"]),
    ("/v1/identifiers/delete", &["post"]),
    ("/v1/identifiers/missing", &["post"]),
    ("/v1/openapi.json", &["get"]),
    ("/healthz", &["get"]),
    ("/readyz", &["get"]),
    ("/metrics", &["get"]),
];

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn doc() -> Value {
    serde_json::from_str(DOC).expect("docs/openapi.json is JSON")
}

fn expected_routes() -> BTreeMap<String, BTreeSet<String>> {
    ROUTES
        .iter()
        .map(|(p, ms)| (p.to_string(), ms.iter().map(|m| m.to_string()).collect()))
        .collect()
}

/// The `.route("path", get(..).put(..))` calls of the router source, read as text: the
/// list above is only trustworthy while it matches them.
fn routes_in_source() -> BTreeMap<String, BTreeSet<String>> {
    let body = ROUTER_SRC
        .split("pub fn router(")
        .nth(1)
        .expect("router() in src/http/mod.rs");
    let mut routes = BTreeMap::new();
    for chunk in body.split(".route(").skip(1) {
        let path = chunk
            .split('"')
            .nth(1)
            .expect("a route path literal")
            .to_string();
        let call = chunk
            .split(".method_not_allowed_fallback")
            .next()
            .unwrap_or(chunk);
        let mut methods = BTreeSet::new();
        for m in ["get", "post", "put", "patch", "delete"] {
            // `get(` or `.put(`, not the tail of a longer name such as `sessions::get)`.
            let called = call.match_indices(&format!("{m}(")).any(|(i, _)| {
                !call[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            });
            if called {
                methods.insert(m.to_string());
            }
        }
        assert!(!methods.is_empty(), "no method found for route {path}");
        routes.insert(path, methods);
    }
    routes
}

#[test]
fn route_list_matches_the_router_source() {
    assert_eq!(
        routes_in_source(),
        expected_routes(),
        "src/http/mod.rs routes changed: update ROUTES here and docs/openapi.json"
    );
}

#[test]
fn document_describes_every_route_and_only_those() {
    let d = doc();
    assert_eq!(d["openapi"], "3.0.3");
    let paths = d["paths"].as_object().expect("paths");
    let mut described = BTreeMap::new();
    for (path, item) in paths {
        let methods: BTreeSet<String> = item
            .as_object()
            .expect("path item")
            .keys()
            .filter(|k| HTTP_METHODS.contains(&k.as_str()))
            .cloned()
            .collect();
        described.insert(path.clone(), methods);
    }
    assert_eq!(described, expected_routes());
}

/// Follows a local `$ref` ("#/components/...").
fn resolve<'a>(d: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').expect("local $ref");
            let target = d
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
            resolve(d, target)
        }
        None => v,
    }
}

fn check_refs(d: &Value, v: &Value) {
    match v {
        Value::Object(m) => {
            if m.contains_key("$ref") {
                resolve(d, v);
            }
            m.values().for_each(|x| check_refs(d, x));
        }
        Value::Array(a) => a.iter().for_each(|x| check_refs(d, x)),
        _ => {}
    }
}

#[test]
fn document_is_self_consistent() {
    let d = doc();
    check_refs(&d, &d);
    let mut ids = BTreeSet::new();
    for (path, item) in d["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if !HTTP_METHODS.contains(&method.as_str()) {
                continue;
            }
            let id = op["operationId"].as_str().expect("operationId");
            assert!(ids.insert(id.to_string()), "operationId {id} twice");
            let responses = op["responses"].as_object().expect("responses");
            for (status, resp) in responses {
                let code: u16 = status.parse().expect("numeric status");
                let resp = resolve(&d, resp);
                if code >= 400 {
                    let schema = resp
                        .pointer("/content/application~1json/schema")
                        .unwrap_or_else(|| panic!("{method} {path} {status}: no JSON body"));
                    let required = required_fields(&d, schema);
                    assert!(
                        required.contains("error") && required.contains("message"),
                        "{method} {path} {status}: error body without error/message"
                    );
                }
            }
            // Path templates and path parameters agree.
            let mut params: BTreeSet<String> = BTreeSet::new();
            for p in item
                .get("parameters")
                .into_iter()
                .chain(op.get("parameters"))
                .flat_map(|v| v.as_array().cloned().unwrap_or_default())
            {
                let p = resolve(&d, &p);
                if p["in"] == "path" {
                    assert_eq!(p["required"], true);
                    params.insert(p["name"].as_str().expect("name").to_string());
                }
            }
            let templated: BTreeSet<String> = path
                .split('{')
                .skip(1)
                .map(|s| s.split('}').next().unwrap_or("").to_string())
                .collect();
            assert_eq!(params, templated, "{method} {path}: path parameters");
        }
    }
    assert_eq!(
        d.pointer("/components/schemas/Sid/pattern"),
        Some(&json!(
            "^([0-9a-f]{40}|[A-Za-z0-9_-]{84}|[A-Za-z0-9_-]{86})$"
        ))
    );
    assert_eq!(
        d.pointer("/components/schemas/Identifier/pattern"),
        Some(&json!("^[A-Za-z0-9_-]{42}$"))
    );
}

/// Required fields of a schema, through `allOf`.
fn required_fields(d: &Value, schema: &Value) -> BTreeSet<String> {
    let schema = resolve(d, schema);
    let mut out: BTreeSet<String> = schema["required"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        out.extend(required_fields(d, part));
    }
    out
}

/// Every `enum` the schema (through `allOf`) puts on the `error` property: a code must be in
/// each of them.
fn error_enums(d: &Value, schema: &Value) -> Vec<Vec<String>> {
    let schema = resolve(d, schema);
    let mut out = Vec::new();
    if let Some(e) = schema
        .pointer("/properties/error/enum")
        .and_then(Value::as_array)
    {
        out.push(
            e.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        );
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        out.extend(error_enums(d, part));
    }
    out
}

/// Checks one answer against the operation `method template` of the document: its status
/// is listed, a JSON body carries the required fields, an error code is one the response
/// names, and an ETag the response declares for a success is present.
fn conforms(d: &Value, method: &str, template: &str, r: &Reply) {
    let op = &d["paths"][template][method];
    assert!(op.is_object(), "{method} {template} not in the document");
    let status = r.status.as_u16().to_string();
    let resp = op["responses"]
        .get(&status)
        .unwrap_or_else(|| panic!("{method} {template} answered {status}, not listed: {r:?}"));
    let resp = resolve(d, resp);
    if let Some(schema) = resp.pointer("/content/application~1json/schema") {
        let body: Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("{method} {template} {status}: body not JSON ({e}): {r:?}"));
        for f in required_fields(d, schema) {
            assert!(
                body.get(&f).is_some(),
                "{method} {template} {status}: no {f} in {body}"
            );
        }
        if r.status.as_u16() >= 400 {
            let code = body["error"].as_str().expect("error code");
            for allowed in error_enums(d, schema) {
                assert!(
                    allowed.iter().any(|a| a == code),
                    "{method} {template} {status}: error {code} not in {allowed:?}"
                );
            }
        }
    }
    if r.status.is_success() && resp.pointer("/headers/ETag").is_some() {
        let etag = r
            .etag
            .as_deref()
            .unwrap_or_else(|| panic!("{method} {template} {status}: ETag declared but absent"));
        let version = serde_json::from_slice::<Value>(&r.body).expect("JSON")["version"].clone();
        assert_eq!(etag, format!("\"{version}\""));
    }
}

#[tokio::test]
async fn served_document_is_the_file() {
    let h = Harness::start(Backend::Memory).await;
    let r = h.client().get("/v1/openapi.json").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), doc());
}

/// Every readiness answer: ready with the backend up or down, the backend check, a bad
/// query, and draining.
#[tokio::test]
async fn readiness_answers_are_listed_in_the_document() {
    let d = doc();
    let h = Harness::start(Backend::Memory).await;
    let mut c = h.client();
    for path in ["/readyz", "/readyz?backend=1", "/readyz?backend=0&probe=x"] {
        let r = c.get(path).await.unwrap();
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.json()["backend"], "up", "{path}: {r:?}");
        conforms(&d, "get", "/readyz", &r);
    }
    let r = c.get("/readyz?backend=yes").await.unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["error"], "invalid_query");
    conforms(&d, "get", "/readyz", &r);
    h.state.start_draining();
    let r = c.get("/readyz").await.unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json()["error"], "draining");
    conforms(&d, "get", "/readyz", &r);

    // A Redis that is not there: ready all the same, and the backend check fails.
    let closed = odoo_ha_testkit::free_port();
    let down = Harness::serving(vec![
        "--driver=redis".into(),
        format!("--redis-uri=redis://127.0.0.1:{closed}/0"),
        "--backend-timeout-ms=200".into(),
    ])
    .await;
    let mut c = down.client();
    let r = c.get("/readyz?backend=1").await.unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json()["error"], "backend_unavailable");
    assert_eq!(r.json()["backend"], "down");
    conforms(&d, "get", "/readyz", &r);
    let r = c.get("/readyz").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["backend"], "down");
    conforms(&d, "get", "/readyz", &r);
}

#[tokio::test]
async fn answers_are_listed_in_the_document() {
    let d = doc();
    let h = Harness::start(Backend::Memory).await;
    let mut c = h.client();
    let sess = "/v1/sessions/{sid}";
    let rotate = "/v1/sessions/{sid}/rotate";

    for path in ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"] {
        let r = c.get(path).await.unwrap();
        assert_eq!(r.status, 200, "{path}");
        conforms(&d, "get", path, &r);
    }

    let ident = identifier();
    let sid = modern_sid(&ident);
    let put = |data: Value| json!({"data": data, "ttl": 600});
    let cases: Vec<Case> = vec![
        (Method::GET, sess, s("", &sid), vec![], None, 404),
        (Method::GET, sess, s("", "not-a-sid"), vec![], None, 400),
        (
            Method::PUT,
            sess,
            s("", &sid),
            vec![("if-none-match", "*")],
            Some(put(json!({"uid": 2}))),
            201,
        ),
        (
            Method::PUT,
            sess,
            s("", &sid),
            vec![("if-none-match", "*")],
            Some(put(json!({}))),
            412,
        ),
        (
            Method::PUT,
            sess,
            s("", &sid),
            vec![("if-match", "\"1\"")],
            Some(put(json!({"uid": 3}))),
            200,
        ),
        (
            Method::PUT,
            sess,
            s("", &sid),
            vec![("if-match", "\"1\"")],
            Some(put(json!({}))),
            412,
        ),
        (
            Method::PUT,
            sess,
            s("", &sid),
            vec![("if-match", "1"), ("if-none-match", "*")],
            Some(put(json!({}))),
            400,
        ),
        (
            Method::PUT,
            sess,
            s("", &sid),
            vec![],
            Some(json!({"data": {}, "extra": 1})),
            400,
        ),
        (Method::GET, sess, s("", &sid), vec![], None, 200),
        (
            Method::PATCH,
            sess,
            s("", &sid),
            vec![],
            Some(json!({"set": {"k": 1}, "remove": ["uid"]})),
            200,
        ),
        (
            Method::PATCH,
            sess,
            s("", &legacy_sid()),
            vec![],
            Some(json!({"set": {"k": 1}})),
            404,
        ),
        (
            Method::PATCH,
            sess,
            s("", &sid),
            vec![("if-match", "\"99\"")],
            Some(json!({})),
            412,
        ),
        (
            Method::PATCH,
            sess,
            s("", &sid),
            vec![],
            Some(json!({"set": {"a": 1}, "remove": ["a"]})),
            400,
        ),
        (
            Method::POST,
            rotate,
            s("/rotate", &legacy_sid()),
            vec![],
            Some(json!({"new_sid": legacy_sid()})),
            404,
        ),
        (
            Method::POST,
            rotate,
            s("/rotate", &sid),
            vec![],
            Some(json!({"new_sid": sid.clone()})),
            412,
        ),
        (
            Method::POST,
            rotate,
            s("/rotate", &sid),
            vec![],
            Some(json!({"new_sid": "short"})),
            400,
        ),
        (
            Method::POST,
            "/v1/identifiers/missing",
            "/v1/identifiers/missing".into(),
            vec![],
            Some(json!({"identifiers": [ident.clone(), identifier()]})),
            200,
        ),
        (
            Method::POST,
            "/v1/identifiers/missing",
            "/v1/identifiers/missing".into(),
            vec![],
            Some(json!({"identifiers": ["short"]})),
            400,
        ),
        (
            Method::POST,
            "/v1/identifiers/delete",
            "/v1/identifiers/delete".into(),
            vec![],
            Some(json!({"identifiers": [ident.clone()]})),
            200,
        ),
        (
            Method::PUT,
            sess,
            s("", &sid),
            vec![],
            Some(put(json!({}))),
            410,
        ),
        (Method::DELETE, sess, s("", &sid), vec![], None, 204),
        (Method::DELETE, sess, s("", "x"), vec![], None, 400),
    ];
    run_cases(&d, &mut c, cases).await;

    // A rotation that succeeds, then writes to the rotated-away sid.
    let old = legacy_sid();
    let new = legacy_sid();
    let r = c
        .json(Method::PUT, &s("", &old), &[], &json!({"data": {"a": 1}}))
        .await
        .unwrap();
    conforms(&d, "put", sess, &r);
    let cases = vec![
        (
            Method::POST,
            rotate,
            s("/rotate", &old),
            vec![],
            Some(json!({"new_sid": new, "set": {"b": 2}})),
            201,
        ),
        (
            Method::POST,
            rotate,
            s("/rotate", &old),
            vec![],
            Some(json!({"new_sid": legacy_sid()})),
            410,
        ),
        (
            Method::PATCH,
            sess,
            s("", &old),
            vec![],
            Some(json!({})),
            410,
        ),
    ];
    run_cases(&d, &mut c, cases).await;
}

type Case<'a> = (
    Method,
    &'a str,
    String,
    Vec<(&'a str, &'a str)>,
    Option<Value>,
    u16,
);

async fn run_cases(d: &Value, c: &mut odoo_ha_testkit::Client, cases: Vec<Case<'_>>) {
    for (method, template, path, headers, body, want) in cases {
        let r = match &body {
            Some(b) => c.json(method.clone(), &path, &headers, b).await,
            None => c.send(method.clone(), &path, &headers, None).await,
        }
        .unwrap();
        assert_eq!(r.status.as_u16(), want, "{method} {path} {body:?}: {r:?}");
        conforms(d, &method.as_str().to_ascii_lowercase(), template, &r);
    }
}

/// One request written by hand, for what the test client never sends (another media type).
async fn raw(addr: &str, head: &str, body: &[u8]) -> Reply {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{head}\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: ").map(str::to_string));
    Reply {
        status: http::StatusCode::from_u16(status).unwrap(),
        etag,
        body: bytes::Bytes::from(body.to_string()),
    }
}

#[tokio::test]
async fn media_type_and_size_errors_are_listed() {
    let d = doc();
    let mut flags = backend_flags(Backend::Memory);
    flags.push("--max-body-bytes=1024".into());
    let h = Harness::with_flags(flags).await;
    let sid = legacy_sid();
    let r = raw(
        &h.addr,
        &format!("PUT /v1/sessions/{sid} HTTP/1.1\r\nContent-Type: text/plain"),
        br#"{"data":{}}"#,
    )
    .await;
    assert_eq!(r.status, 415, "{r:?}");
    conforms(&d, "put", "/v1/sessions/{sid}", &r);
    let big = json!({"data": {"k": "x".repeat(2000)}});
    let r = h
        .client()
        .json(Method::PUT, &s("", &sid), &[], &big)
        .await
        .unwrap();
    assert_eq!(r.status, 413, "{r:?}");
    conforms(&d, "put", "/v1/sessions/{sid}", &r);
    let r = h
        .client()
        .json(
            Method::POST,
            &s("/rotate", &sid),
            &[],
            &json!({"new_sid": "x".repeat(2000)}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 413, "{r:?}");
    conforms(&d, "post", "/v1/sessions/{sid}/rotate", &r);
}

/// The contract says every error is JSON. A path parameter that percent-decodes to invalid
/// UTF-8 is refused by axum's `Path` extractor before the handler runs, as `text/plain`.
#[tokio::test]
async fn invalid_utf8_in_path_is_a_json_error() {
    let d = doc();
    let h = Harness::start(Backend::Memory).await;
    let mut c = h.client();
    let r = c.get("/v1/sessions/%FF%FE").await.unwrap();
    conforms(&d, "get", "/v1/sessions/{sid}", &r);
    let r = c
        .json(
            Method::POST,
            "/v1/sessions/%C3%28/rotate",
            &[],
            &json!({"new_sid": legacy_sid()}),
        )
        .await
        .unwrap();
    conforms(&d, "post", "/v1/sessions/{sid}/rotate", &r);
}

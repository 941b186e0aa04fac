//! Reconcile error paths against a mock API server (tower-test): every request the
//! reconciler makes is asserted, in order, and answered by the test.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use http::{Request, Response};
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::Client;
use serde_json::{json, Value};
use tower_test::mock::{self, Handle};

use super::{reconcile, Context};
use crate::builders::Defaults;
use crate::crd::OdooSessionStore;
use crate::metrics::Metrics;

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn context() -> (Arc<Context>, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ctx = Context {
        client: client.clone(),
        defaults: Defaults {
            server_version: Some((1, 20)),
            ..Defaults::default()
        },
        metrics: Arc::new(Metrics::default()),
        recorder: Recorder::new(
            client,
            Reporter {
                controller: "test".into(),
                instance: None,
            },
        ),
        webhook_ready: Arc::new(AtomicBool::new(true)),
    };
    (Arc::new(ctx), handle)
}

fn store(spec: Value) -> OdooSessionStore {
    serde_json::from_value(json!({
        "apiVersion": "odoo-ha.io/v1alpha1", "kind": "OdooSessionStore",
        "metadata": {"name": "s", "namespace": "shop", "uid": "u-1", "generation": 4,
                      "finalizers": ["odoo-ha.io/cleanup"], "resourceVersion": "1"},
        "spec": spec
    }))
    .expect("store")
}

fn store_json() -> Value {
    json!({"apiVersion": "odoo-ha.io/v1alpha1", "kind": "OdooSessionStore",
           "metadata": {"name": "s", "namespace": "shop", "uid": "u-1"},
           "spec": {"driver": "redis", "backend": {"managed": {}}}})
}

fn not_found() -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

/// Answers the next request, after checking its method and path; returns the request body.
async fn expect(handle: &mut ApiHandle, method: &str, path: &str, answer: (u16, Value)) -> Value {
    let (request, send) = handle
        .next_request()
        .await
        .expect("the reconciler made a request");
    // The event recorder PATCHes a repeated event into a series instead of POSTing it again.
    let event_series = method == "POST" && request.method() == "PATCH" && path.ends_with("/events");
    assert!(
        request.method().as_str() == method || event_series,
        "expected {method}, got {} {}",
        request.method(),
        request.uri()
    );
    assert!(
        request.uri().path().starts_with(path),
        "expected {method} {path}, got {} {}",
        request.method(),
        request.uri()
    );
    let body = request
        .into_body()
        .collect_bytes()
        .await
        .expect("request body");
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).expect("JSON body")
    };
    let response = Response::builder()
        .status(answer.0)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&answer.1).expect("json")))
        .expect("response");
    send.send_response(response);
    value
}

fn empty_list(kind: &str, api_version: &str) -> Value {
    json!({"kind": kind, "apiVersion": api_version, "metadata": {}, "items": []})
}

fn condition<'a>(status_patch: &'a Value, type_: &str) -> &'a Value {
    status_patch["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

async fn answer_events(handle: &mut ApiHandle, n: usize) {
    for _ in 0..n {
        let event = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "shop"},
                           "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "test", "reportingInstance": "test"});
        expect(
            handle,
            "POST",
            "/apis/events.k8s.io/v1/namespaces/shop/events",
            (201, event),
        )
        .await;
    }
}

/// What the mock API server task returns, once the reconciler has made every request it
/// expects (within 5 s).
async fn served<T>(server: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("the reconciler made every expected request")
        .expect("mock server")
}

/// The rest of a reconcile that reports a problem: the injected Pods listed (none), the
/// status patched, two events (Ready and BackendReady share the cause). Returns the status
/// patch.
async fn problem_reported(handle: &mut ApiHandle) -> Value {
    expect(
        handle,
        "GET",
        "/api/v1/namespaces/shop/pods",
        (200, empty_list("PodList", "v1")),
    )
    .await;
    let patch = expect(
        handle,
        "PATCH",
        "/apis/odoo-ha.io/v1alpha1/namespaces/shop/odoosessionstores/s/status",
        (200, store_json()),
    )
    .await;
    answer_events(handle, 2).await;
    patch
}

#[tokio::test]
async fn missing_external_secret_is_reported_in_status() {
    let (ctx, mut handle) = context();
    let s = store(
        json!({"driver": "db", "backend": {"external": {"uriSecretRef": {"name": "pg", "key": "dsn"}}}}),
    );
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            "GET",
            "/api/v1/namespaces/shop/secrets/pg",
            not_found(),
        )
        .await;
        problem_reported(&mut handle).await
    });
    let action = reconcile(Arc::new(s), ctx.clone())
        .await
        .expect("a reported problem is not an error");
    let patch = served(server).await;
    let backend = condition(&patch, "BackendReady");
    assert_eq!(backend["status"], "False");
    assert_eq!(backend["reason"], "SecretNotFound");
    assert!(backend["message"]
        .as_str()
        .is_some_and(|m| m.contains("Secret pg not found in namespace shop")));
    assert_eq!(backend["observedGeneration"], 4);
    assert_eq!(condition(&patch, "Ready")["reason"], "SecretNotFound");
    assert_eq!(patch["status"]["observedGeneration"], 4);
    assert_eq!(patch["status"]["backend"], "external");
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(super::REQUEUE_PENDING)
    );
}

/// Issue 9 item 3: the CA Secret is looked up after the URI's; missing, it is reported
/// (the injected Pods would wait in ContainerCreating for it).
#[tokio::test]
async fn missing_external_ca_secret_is_reported_in_status() {
    let (ctx, mut handle) = context();
    let s = store(json!({"driver": "redis", "backend": {"external": {
        "uriSecretRef": {"name": "r"}, "caSecretRef": {"name": "memorystore-ca"}}}}));
    let server = tokio::spawn(async move {
        let uri_secret = json!({"kind": "Secret", "apiVersion": "v1",
            "metadata": {"name": "r", "namespace": "shop"},
            "data": {"uri": "cmVkaXNzK2NsdXN0ZXI6Ly9oOjYzNzkv"}});
        expect(
            &mut handle,
            "GET",
            "/api/v1/namespaces/shop/secrets/r",
            (200, uri_secret),
        )
        .await;
        expect(
            &mut handle,
            "GET",
            "/api/v1/namespaces/shop/secrets/memorystore-ca",
            not_found(),
        )
        .await;
        problem_reported(&mut handle).await
    });
    reconcile(Arc::new(s), ctx.clone())
        .await
        .expect("a reported problem is not an error");
    let patch = served(server).await;
    let backend = condition(&patch, "BackendReady");
    assert_eq!(backend["status"], "False");
    assert_eq!(backend["reason"], "SecretNotFound");
    assert!(
        backend["message"].as_str().is_some_and(|m| m.starts_with(
            "Secret memorystore-ca not found in namespace shop (spec.backend.external.caSecretRef"
        )),
        "{backend}"
    );
    assert_eq!(condition(&patch, "Ready")["reason"], "SecretNotFound");
}

/// A CA kept in the URI's own Secret is read with it: one request, and a missing CA key is
/// reported as such.
#[tokio::test]
async fn a_ca_in_the_uri_secret_is_read_once() {
    let (ctx, mut handle) = context();
    let s = store(json!({"driver": "redis", "backend": {"external": {
        "uriSecretRef": {"name": "r"}, "caSecretRef": {"name": "r"}}}}));
    let server = tokio::spawn(async move {
        let secret = json!({"kind": "Secret", "apiVersion": "v1",
            "metadata": {"name": "r", "namespace": "shop"},
            "data": {"uri": "cmVkaXNzOi8vaDo2Mzc5LzA="}});
        expect(
            &mut handle,
            "GET",
            "/api/v1/namespaces/shop/secrets/r",
            (200, secret),
        )
        .await;
        problem_reported(&mut handle).await
    });
    reconcile(Arc::new(s), ctx.clone())
        .await
        .expect("a reported problem is not an error");
    let patch = served(server).await;
    let backend = condition(&patch, "BackendReady");
    assert_eq!(backend["reason"], "SecretKeyMissing");
    assert!(
        backend["message"].as_str().is_some_and(|m| m.starts_with(
            "Secret r in namespace shop has no key \"ca.crt\" (spec.backend.external.caSecretRef"
        )),
        "{backend}"
    );
}

#[tokio::test]
async fn invalid_spec_writes_status_and_waits_for_a_change() {
    let (ctx, mut handle) = context();
    let s = store(json!({"driver": "redis", "backend": {"cloudNativePG": {}}}));
    let server = tokio::spawn(async move {
        let patch = expect(
            &mut handle,
            "PATCH",
            "/apis/odoo-ha.io/v1alpha1/namespaces/shop/odoosessionstores/s/status",
            (200, store_json()),
        )
        .await;
        // One cause, one event.
        answer_events(&mut handle, 1).await;
        patch
    });
    let action = reconcile(Arc::new(s), ctx)
        .await
        .expect("reported, not retried");
    let patch = served(server).await;
    assert_eq!(condition(&patch, "Ready")["reason"], "InvalidSpec");
    assert!(condition(&patch, "Ready")["message"]
        .as_str()
        .is_some_and(|m| m.contains("driver: db")));
    assert_eq!(action, kube::runtime::controller::Action::await_change());
}

#[tokio::test]
async fn cloudnativepg_not_installed_is_a_clear_condition() {
    let (ctx, mut handle) = context();
    let s = store(json!({"driver": "db", "backend": {"cloudNativePG": {}}}));
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            "GET",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/clusters.postgresql.cnpg.io",
            not_found(),
        )
        .await;
        problem_reported(&mut handle).await
    });
    reconcile(Arc::new(s), ctx).await.expect("reported");
    let patch = served(server).await;
    assert_eq!(
        condition(&patch, "BackendReady")["reason"],
        "CloudNativePGNotInstalled"
    );
}

#[tokio::test]
async fn api_errors_fail_the_reconcile_with_the_kube_label() {
    let (ctx, mut handle) = context();
    let s = store(json!({"driver": "redis", "backend": {"managed": {}}}));
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            "GET",
            "/api/v1/namespaces/shop/secrets/s-redis",
            (500, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500, "message": "etcd down"})),
        )
        .await;
    });
    let err = reconcile(Arc::new(s.clone()), ctx.clone())
        .await
        .expect_err("a 500 must fail the reconcile");
    served(server).await;
    assert_eq!(err.metric_label(), "kube");
    assert!(err.to_string().contains("etcd down"), "{err}");
    let action = super::error_policy(Arc::new(s), &err, ctx.clone());
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(super::REQUEUE_PENDING)
    );
    assert!(ctx
        .metrics
        .render()
        .contains("reconcile_failures_total{error=\"kube\"} 1"));
}

#[tokio::test]
async fn managed_backend_keeps_the_existing_password() {
    let (ctx, mut handle) = context();
    let s = store(json!({"driver": "redis", "backend": {"managed": {"replicas": 1}}}));
    let server = tokio::spawn(async move {
        // "kept" base64-encoded.
        expect(&mut handle, "GET", "/api/v1/namespaces/shop/secrets/s-redis", (200, json!({"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "s-redis"}, "data": {"password": "a2VwdA=="}}))).await;
        expect(
            &mut handle,
            "GET",
            "/apis/apps/v1/namespaces/shop/statefulsets",
            (200, empty_list("StatefulSetList", "apps/v1")),
        )
        .await;
        expect(
            &mut handle,
            "GET",
            "/api/v1/namespaces/shop/pods",
            (
                200,
                json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []}),
            ),
        )
        .await;
        let secret = expect(
            &mut handle,
            "PATCH",
            "/api/v1/namespaces/shop/secrets/s-redis",
            (
                200,
                json!({"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "s-redis"}}),
            ),
        )
        .await;
        expect(
            &mut handle,
            "PATCH",
            "/api/v1/namespaces/shop/services/s-redis",
            (
                200,
                json!({"kind": "Service", "apiVersion": "v1", "metadata": {"name": "s-redis"}}),
            ),
        )
        .await;
        expect(&mut handle, "PATCH", "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies/s-redis", (200, json!({"kind": "NetworkPolicy", "apiVersion": "networking.k8s.io/v1", "metadata": {"name": "s-redis"}}))).await;
        let sts = expect(
            &mut handle,
            "PATCH",
            "/apis/apps/v1/namespaces/shop/statefulsets/s-redis",
            (200, json!({"kind": "StatefulSet", "apiVersion": "apps/v1", "metadata": {"name": "s-redis"},
                         "spec": {"selector": {}, "serviceName": "s-redis", "template": {}}, "status": {"replicas": 1, "readyReplicas": 1}})),
        )
        .await;
        let patch = expect(
            &mut handle,
            "PATCH",
            "/apis/odoo-ha.io/v1alpha1/namespaces/shop/odoosessionstores/s/status",
            (200, store_json()),
        )
        .await;
        answer_events(&mut handle, 3).await;
        (secret, sts, patch)
    });
    reconcile(Arc::new(s), ctx).await.expect("reconciled");
    let (secret, sts, patch) = served(server).await;
    assert_eq!(
        secret["data"]["password"], "a2VwdA==",
        "the stored password is re-applied, not regenerated"
    );
    assert!(
        sts["spec"]
            .get("persistentVolumeClaimRetentionPolicy")
            .is_none(),
        "1.20 does not know the field"
    );
    assert_eq!(condition(&patch, "BackendReady")["status"], "True");
    assert_eq!(condition(&patch, "Ready")["status"], "True");
}

/// A Redis with Sentinel on 1.20: headless Service, Sentinel Service, NetworkPolicy, a
/// policy/v1beta1 PodDisruptionBudget, the StatefulSet; no running Pod, so the status says
/// no Sentinel answered (and the reconcile succeeds).
#[tokio::test]
async fn sentinel_store_applies_its_objects_and_reports_unreachable_sentinels() {
    let (ctx, mut handle) = context();
    let s = store(json!({"driver": "redis", "backend": {"managed": {"replicas": 3}}}));
    let server = tokio::spawn(async move {
        expect(&mut handle, "GET", "/api/v1/namespaces/shop/secrets/s-redis", (200, json!({"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "s-redis"}, "data": {"password": "a2VwdA=="}}))).await;
        expect(
            &mut handle,
            "GET",
            "/apis/apps/v1/namespaces/shop/statefulsets",
            (200, empty_list("StatefulSetList", "apps/v1")),
        )
        .await;
        expect(
            &mut handle,
            "GET",
            "/api/v1/namespaces/shop/pods",
            (200, empty_list("PodList", "v1")),
        )
        .await;
        expect(
            &mut handle,
            "PATCH",
            "/api/v1/namespaces/shop/secrets/s-redis",
            (
                200,
                json!({"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "s-redis"}}),
            ),
        )
        .await;
        let headless = expect(&mut handle, "PATCH", "/api/v1/namespaces/shop/services/s-redis-headless", (200, json!({"kind": "Service", "apiVersion": "v1", "metadata": {"name": "s-redis-headless"}}))).await;
        expect(
            &mut handle,
            "PATCH",
            "/api/v1/namespaces/shop/services/s-redis",
            (
                200,
                json!({"kind": "Service", "apiVersion": "v1", "metadata": {"name": "s-redis"}}),
            ),
        )
        .await;
        expect(&mut handle, "PATCH", "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies/s-redis", (200, json!({"kind": "NetworkPolicy", "apiVersion": "networking.k8s.io/v1", "metadata": {"name": "s-redis"}}))).await;
        let pdb = expect(&mut handle, "PATCH", "/apis/policy/v1beta1/namespaces/shop/poddisruptionbudgets/s-redis", (200, json!({"kind": "PodDisruptionBudget", "apiVersion": "policy/v1beta1", "metadata": {"name": "s-redis"}}))).await;
        let sts = expect(
            &mut handle,
            "PATCH",
            "/apis/apps/v1/namespaces/shop/statefulsets/s-redis",
            (200, json!({"kind": "StatefulSet", "apiVersion": "apps/v1", "metadata": {"name": "s-redis"},
                         "spec": {"selector": {}, "serviceName": "s-redis-headless", "template": {}}, "status": {"replicas": 0}})),
        )
        .await;
        expect(
            &mut handle,
            "GET",
            "/api/v1/namespaces/shop/pods",
            (200, empty_list("PodList", "v1")),
        )
        .await;
        let patch = expect(
            &mut handle,
            "PATCH",
            "/apis/odoo-ha.io/v1alpha1/namespaces/shop/odoosessionstores/s/status",
            (200, store_json()),
        )
        .await;
        answer_events(&mut handle, 2).await;
        (headless, pdb, sts, patch)
    });
    reconcile(Arc::new(s), ctx).await.expect("reconciled");
    let (headless, pdb, sts, patch) = served(server).await;
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(pdb["apiVersion"], "policy/v1beta1");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(
        condition(&patch, "BackendReady")["reason"],
        "BackendStarting"
    );
    let redis = &patch["status"]["redis"];
    assert_eq!(redis["pods"], 3);
    assert_eq!(redis["healthy"], false);
    assert!(redis.get("primary").is_none());
    assert!(
        redis["message"]
            .as_str()
            .is_some_and(|m| m.contains("s-redis-0 is not running")),
        "{redis}"
    );
}

/// Issue 13: an injected Pod whose sidecar crash-loops (a setting it refuses) makes
/// InjectionReady and Ready False, naming the Pod, the container and the reason.
#[tokio::test]
async fn crash_looping_injected_pod_makes_injection_not_ready() {
    let (ctx, mut handle) = context();
    let s = store(
        json!({"driver": "redis", "backend": {"external": {"uriSecretRef": {"name": "r", "key": "uri"}}}}),
    );
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            "GET",
            "/api/v1/namespaces/shop/secrets/r",
            (
                200,
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "r", "namespace": "shop"},
                       "data": {"uri": "cmVkaXM6Ly9yOjYzNzk="}}),
            ),
        )
        .await;
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-7d9-abc", "namespace": "shop", "labels": {"odoo-ha.io/session-store": "s"}},
            "spec": {"containers": [{"name": "odoo", "image": "odoo"}, {"name": "odoo-session-sidecar", "image": "s"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "odoo", "ready": true, "restartCount": 0, "image": "odoo", "imageID": "",
                 "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}},
                {"name": "odoo-session-sidecar", "ready": false, "restartCount": 20, "image": "s", "imageID": "",
                 "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting failed container"}},
                 "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "finishedAt": "2026-01-01T00:10:00Z"}}}]}
        });
        expect(
            &mut handle,
            "GET",
            "/api/v1/namespaces/shop/pods",
            (
                200,
                json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [pod]}),
            ),
        )
        .await;
        let patch = expect(
            &mut handle,
            "PATCH",
            "/apis/odoo-ha.io/v1alpha1/namespaces/shop/odoosessionstores/s/status",
            (200, store_json()),
        )
        .await;
        // Ready and InjectionReady share the cause: one event for both, one for BackendReady.
        answer_events(&mut handle, 2).await;
        patch
    });
    let action = reconcile(Arc::new(s), ctx.clone())
        .await
        .expect("a reported problem is not an error");
    let patch = served(server).await;
    assert_eq!(condition(&patch, "BackendReady")["status"], "True");
    let injection = condition(&patch, "InjectionReady");
    assert_eq!(injection["status"], "False");
    assert_eq!(injection["reason"], "PodsFailing");
    let message = injection["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(
            "1 injected Pod(s) keep failing: Pod web-7d9-abc container odoo-session-sidecar: CrashLoopBackOff (20 restarts): last exit code 2 (Error)"
        ),
        "{message}"
    );
    assert_eq!(condition(&patch, "Ready")["reason"], "PodsFailing");
    assert_eq!(patch["status"]["podsFailing"], 1);
    assert_eq!(patch["status"]["podsWithoutSidecar"], 0);
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(super::REQUEUE_PENDING)
    );
}

//! The webhook's HTTPS server (axum over rustls) and the admission decision.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use kube::api::{Api, DynamicObject};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Client;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::config::MUTATE_PATH;
use super::patch::{self, Plan};
use crate::builders::{sidecar, Defaults};
use crate::crd::{OdooSessionStore, STORE_LABEL};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::reconcile::validate::validate;
use crate::watch::Scope;

pub struct WebhookState {
    pub client: Client,
    /// Reflector caches of the stores, one per watched namespace (or one for all), so
    /// most requests need no API call.
    pub stores: Vec<Store<OdooSessionStore>>,
    pub defaults: Defaults,
    pub metrics: Arc<Metrics>,
    /// The namespaces whose stores this operator serves.
    pub scope: Scope,
}

/// What to answer for one Pod.
#[derive(Debug)]
pub enum Decision {
    Allow,
    Patch(Plan),
    Deny(String),
}

/// Pure decision: the raw Pod, its namespace, and the store its label names (if found).
pub fn decide(
    pod: &Value,
    namespace: &str,
    store: Option<&OdooSessionStore>,
    defaults: &Defaults,
) -> Decision {
    let Some(name) = pod
        .pointer("/metadata/labels")
        .and_then(|l| l.get(STORE_LABEL))
        .and_then(Value::as_str)
    else {
        return Decision::Allow;
    };
    let Some(store) = store else {
        return Decision::Deny(format!(
            "OdooSessionStore {name:?} (named by the Pod label {STORE_LABEL}) does not exist in namespace {namespace:?}: create it, or fix or remove the label"
        ));
    };
    let valid = match validate(store) {
        Ok(v) => v,
        Err(problems) => {
            return Decision::Deny(format!(
                "OdooSessionStore {namespace}/{name} is invalid: {}",
                problems.join("; ")
            ));
        }
    };
    let native = sidecar::use_native(valid.spec.sidecar.native_sidecar, defaults.server_version);
    let grace = pod
        .pointer("/spec/terminationGracePeriodSeconds")
        .and_then(Value::as_i64);
    let annotation = pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(sidecar::ADDRESS_ANNOTATION))
        .and_then(Value::as_str);
    let address = match sidecar::Address::from_annotation(annotation) {
        Ok(a) => a,
        Err(e) => return Decision::Deny(format!("cannot inject the session sidecar: {e}")),
    };
    let injection = sidecar::build_for(&valid, defaults, native, address).for_pod(grace);
    match patch::build(pod, &injection, name) {
        Ok(plan) if plan.ops.is_empty() => Decision::Allow,
        Ok(plan) => Decision::Patch(plan),
        Err(e) => Decision::Deny(format!("cannot inject the session sidecar: {e}")),
    }
}

async fn lookup(
    state: &WebhookState,
    namespace: &str,
    name: &str,
) -> Result<Option<OdooSessionStore>> {
    let key = ObjectRef::new(name).within(namespace);
    if let Some(s) = state.stores.iter().find_map(|c| c.get(&key)) {
        return Ok(Some((*s).clone()));
    }
    // Not cached yet (just created?): ask the API server before denying.
    let api: Api<OdooSessionStore> = Api::namespaced(state.client.clone(), namespace);
    Ok(api.get_opt(name).await?)
}

fn review_response(resp: AdmissionResponse) -> Response {
    Json(resp.into_review()).into_response()
}

async fn mutate(State(state): State<Arc<WebhookState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let raw: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not JSON: {e}")).into_response(),
    };
    let review: AdmissionReview<DynamicObject> = match serde_json::from_value(raw.clone()) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not an AdmissionReview: {e}"),
            )
                .into_response()
        }
    };
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("AdmissionReview without request: {e}"),
            )
                .into_response()
        }
    };
    let resp = AdmissionResponse::from(&req);
    if req.operation != Operation::Create {
        state
            .metrics
            .webhook_answered("unchanged", started.elapsed());
        return review_response(resp);
    }
    let pod = &raw["request"]["object"];
    let namespace = req
        .namespace
        .clone()
        .or_else(|| {
            pod.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .unwrap_or_default();
    if !state.scope.contains(&namespace) {
        // Not a namespace this operator watches: the chart's namespaceSelector keeps these
        // away, except on 1.20 (no `kubernetes.io/metadata.name` label). Left to whoever
        // watches it, without reading a store this operator may not read.
        debug!(
            namespace,
            "pod in a namespace this operator does not watch: unchanged"
        );
        state
            .metrics
            .webhook_answered("unchanged", started.elapsed());
        return review_response(resp);
    }
    let store_name = pod
        .pointer("/metadata/labels")
        .and_then(|l| l.get(STORE_LABEL))
        .and_then(Value::as_str);
    let store = match store_name {
        Some(name) => match lookup(&state, &namespace, name).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, namespace, store = name, "store lookup failed");
                state.metrics.webhook_answered("error", started.elapsed());
                // Let the failure policy decide, with a message saying why.
                return review_response(resp.deny(format!(
                    "odoo-session-operator could not read the OdooSessionStore: {e}"
                )));
            }
        },
        None => None,
    };
    let (result, resp) = match decide(pod, &namespace, store.as_ref(), &state.defaults) {
        Decision::Allow => ("unchanged", resp),
        Decision::Deny(msg) => {
            info!(namespace, pod = ?req.name, reason = %msg, "denied pod");
            ("denied", resp.deny(msg))
        }
        Decision::Patch(plan) => {
            let warnings = plan.warnings.clone();
            match plan
                .into_patch()
                .map_err(|e| e.to_string())
                .and_then(|p| resp.clone().with_patch(p).map_err(|e| e.to_string()))
            {
                Ok(mut r) => {
                    if !warnings.is_empty() {
                        r.warnings = Some(warnings);
                    }
                    debug!(namespace, store = ?store_name, "injected session sidecar");
                    ("injected", r)
                }
                Err(e) => (
                    "error",
                    resp.deny(format!("cannot serialise the patch: {e}")),
                ),
            }
        }
    };
    state.metrics.webhook_answered(result, started.elapsed());
    review_response(resp)
}

pub fn router(state: Arc<WebhookState>) -> Router {
    Router::new()
        .route(MUTATE_PATH, post(mutate))
        .with_state(state)
}

/// Binds the webhook's address (separate from serving so startup fails early on a taken port).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr).await.map_err(Error::Io)?;
    info!(%addr, "webhook listening (TLS)");
    Ok(listener)
}

/// Serves `router` over TLS until the process ends.
pub async fn serve_tls(listener: TcpListener, tls: Arc<rustls::ServerConfig>, router: Router) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "accept failed");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(stream).await {
                Ok(t) => t,
                Err(e) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use serde_json::json;

    fn store(spec: Value) -> OdooSessionStore {
        let mut s = OdooSessionStore::new("sessions", serde_json::from_value(spec).expect("spec"));
        s.metadata = ObjectMeta {
            name: Some("sessions".into()),
            namespace: Some("shop".into()),
            uid: Some("u".into()),
            ..ObjectMeta::default()
        };
        s
    }

    fn pod() -> Value {
        json!({"metadata": {"labels": {STORE_LABEL: "sessions"}}, "spec": {"containers": [{"name": "odoo"}]}})
    }

    #[test]
    fn missing_store_is_denied_with_a_clear_message() {
        let Decision::Deny(msg) = decide(&pod(), "shop", None, &Defaults::default()) else {
            panic!("must deny")
        };
        assert!(
            msg.contains("\"sessions\"")
                && msg.contains("does not exist")
                && msg.contains("\"shop\""),
            "{msg}"
        );
    }

    #[test]
    fn invalid_store_is_denied() {
        let s = store(json!({"driver": "redis", "backend": {"cloudNativePG": {}}}));
        let Decision::Deny(msg) = decide(&pod(), "shop", Some(&s), &Defaults::default()) else {
            panic!("must deny")
        };
        assert!(msg.contains("driver: db"), "{msg}");
    }

    #[test]
    fn native_on_new_servers_regular_on_old() {
        let s = store(json!({"driver": "redis", "backend": {"managed": {}}}));
        let old = Defaults {
            server_version: Some((1, 20)),
            ..Defaults::default()
        };
        let Decision::Patch(plan) = decide(&pod(), "shop", Some(&s), &old) else {
            panic!("must patch")
        };
        assert!(plan.ops.iter().any(|o| o["path"] == "/spec/containers/0"));
        let new = Defaults {
            server_version: Some((1, 31)),
            ..Defaults::default()
        };
        let Decision::Patch(plan) = decide(&pod(), "shop", Some(&s), &new) else {
            panic!("must patch")
        };
        assert!(plan.ops.iter().any(|o| o["path"] == "/spec/initContainers"));
    }

    #[test]
    fn the_address_annotation_chooses_socket_or_loopback_and_refuses_other_values() {
        let s = store(json!({"driver": "redis", "backend": {"managed": {}}}));
        let defaults = Defaults::default();
        let listen = |pod: &Value| {
            let Decision::Patch(plan) = decide(pod, "shop", Some(&s), &defaults) else {
                panic!("must patch")
            };
            let env = patched_sidecar_env(&plan);
            let volume = plan.ops.iter().any(|o| o["path"] == "/spec/volumes");
            let get = |name: &str| {
                env.iter()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, v)| v.clone())
            };
            (get("DKN_AUTH_SOCKET"), get("DKN_AUTH_LISTEN"), volume)
        };
        let socket = (Some(sidecar::SOCKET_PATH.to_owned()), None, true);
        assert_eq!(listen(&pod()), socket);
        let mut annotated = pod();
        annotated["metadata"]["annotations"] = json!({sidecar::ADDRESS_ANNOTATION: "socket"});
        assert_eq!(listen(&annotated), socket);
        annotated["metadata"]["annotations"] = json!({sidecar::ADDRESS_ANNOTATION: "loopback"});
        assert_eq!(
            listen(&annotated),
            (None, Some("127.0.0.1:7070".to_owned()), false)
        );
        annotated["metadata"]["annotations"] = json!({sidecar::ADDRESS_ANNOTATION: "tcp"});
        let Decision::Deny(msg) = decide(&annotated, "shop", Some(&s), &defaults) else {
            panic!("must deny")
        };
        assert!(
            msg.contains(sidecar::ADDRESS_ANNOTATION)
                && msg.contains("\"tcp\"")
                && msg.contains("loopback"),
            "{msg}"
        );
    }

    /// The sidecar of the patch (regular container or native init container).
    fn patched_sidecar_env(plan: &Plan) -> Vec<(String, Option<String>)> {
        let op = plan
            .ops
            .iter()
            .find(|o| o["path"] == "/spec/containers/0" || o["path"] == "/spec/initContainers")
            .expect("sidecar op");
        let c = if op["value"].is_array() {
            &op["value"][0]
        } else {
            &op["value"]
        };
        c["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or("").to_string(),
                    e["value"].as_str().map(String::from),
                )
            })
            .collect()
    }

    #[test]
    fn drain_is_the_pods_grace_period_in_regular_mode_and_absent_for_native() {
        let s = store(json!({"driver": "redis", "backend": {"managed": {}}}));
        let old = Defaults {
            server_version: Some((1, 20)),
            ..Defaults::default()
        };
        let drain = |plan: &Plan| {
            patched_sidecar_env(plan)
                .into_iter()
                .find(|(n, _)| n == "DKN_AUTH_DRAIN_SECONDS")
                .and_then(|(_, v)| v)
        };
        let Decision::Patch(plan) = decide(&pod(), "shop", Some(&s), &old) else {
            panic!("must patch")
        };
        assert_eq!(drain(&plan).as_deref(), Some("28"), "default grace 30");
        let mut long = pod();
        long["spec"]["terminationGracePeriodSeconds"] = json!(120);
        let Decision::Patch(plan) = decide(&long, "shop", Some(&s), &old) else {
            panic!("must patch")
        };
        assert_eq!(drain(&plan).as_deref(), Some("118"));
        let env = patched_sidecar_env(&plan);
        assert!(env
            .iter()
            .any(|(n, v)| n == "DKN_AUTH_REDIS_MIN_REPLICAS" && v.as_deref() == Some("1")));
        let new = Defaults {
            server_version: Some((1, 31)),
            ..Defaults::default()
        };
        let Decision::Patch(plan) = decide(&long, "shop", Some(&s), &new) else {
            panic!("must patch")
        };
        assert_eq!(drain(&plan), None, "native sidecars need no drain");
    }

    #[test]
    fn unlabelled_pods_pass() {
        assert!(matches!(
            decide(&json!({"spec": {}}), "shop", None, &Defaults::default()),
            Decision::Allow
        ));
    }
}

/// The HTTP handler end to end (no TLS): status codes, the AdmissionReview answer, the
/// patch as the API server receives it, and the API look-up on a cache miss.
#[cfg(test)]
mod http_tests {
    use super::*;
    use axum::body::Body as AxumBody;
    use base64::Engine;
    use http::{Request, Response};
    use http_body_util::BodyExt;
    use kube::runtime::reflector;
    use kube::runtime::watcher;
    use serde_json::json;
    use tower::ServiceExt;
    use tower_test::mock;

    type ApiHandle = mock::Handle<Request<kube::client::Body>, Response<kube::client::Body>>;

    fn state_with(stores: Vec<OdooSessionStore>) -> (Arc<WebhookState>, ApiHandle) {
        let (service, handle) =
            mock::pair::<Request<kube::client::Body>, Response<kube::client::Body>>();
        let (reader, mut writer) = reflector::store::<OdooSessionStore>();
        for s in stores {
            writer.apply_watcher_event(&watcher::Event::Apply(s));
        }
        let state = WebhookState {
            client: Client::new(service, "default"),
            stores: vec![reader],
            defaults: Defaults {
                server_version: Some((1, 20)),
                ..Defaults::default()
            },
            metrics: Arc::new(Metrics::default()),
            scope: Scope::Cluster,
        };
        (Arc::new(state), handle)
    }

    fn store() -> OdooSessionStore {
        serde_json::from_value(json!({
            "apiVersion": "odoo-ha.io/v1alpha1", "kind": "OdooSessionStore",
            "metadata": {"name": "sessions", "namespace": "shop", "uid": "u"},
            "spec": {"driver": "redis", "backend": {"managed": {}}}
        }))
        .expect("store")
    }

    fn review(operation: &str, label: &str) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "req-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop", "operation": operation,
                "userInfo": {"username": "u"},
                "object": {"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"generateName": "odoo-", "labels": {STORE_LABEL: label}},
                           "spec": {"containers": [{"name": "odoo", "image": "odoo"}]}},
                "dryRun": false
            }
        })
    }

    async fn post(state: Arc<WebhookState>, body: Vec<u8>) -> (StatusCode, Value) {
        let resp = router(state)
            .oneshot(
                Request::post(MUTATE_PATH)
                    .header("content-type", "application/json")
                    .body(AxumBody::from(body))
                    .expect("request"),
            )
            .await
            .expect("handler answers");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn injection_answer_carries_the_json_patch() {
        let (state, _api) = state_with(vec![store()]);
        let (status, v) = post(
            state.clone(),
            serde_json::to_vec(&review("CREATE", "sessions")).expect("json"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["response"]["uid"], "req-1", "{v}");
        assert_eq!(v["response"]["allowed"], true);
        assert_eq!(v["response"]["patchType"], "JSONPatch", "{v}");
        // kube serialises the bytes as a JSON array of numbers; the API server's decoder
        // accepts that as well as base64 (the integration tests go through a real one).
        let raw: Vec<u8> = match &v["response"]["patch"] {
            Value::String(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64"),
            other => serde_json::from_value(other.clone()).expect("patch bytes"),
        };
        let ops: Value = serde_json::from_slice(&raw).expect("patch JSON");
        assert!(ops
            .as_array()
            .is_some_and(|o| o.iter().any(|op| op["path"] == "/spec/containers/0")));
        assert!(state
            .metrics
            .render()
            .contains("webhook_requests_total{result=\"injected\"} 1"));
    }

    #[tokio::test]
    async fn updates_pass_untouched() {
        let (state, _api) = state_with(vec![store()]);
        let (status, v) = post(
            state,
            serde_json::to_vec(&review("UPDATE", "sessions")).expect("json"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["response"]["allowed"], true);
        assert!(v["response"].get("patch").is_none());
    }

    #[tokio::test]
    async fn malformed_requests_are_400() {
        let (state, _api) = state_with(vec![]);
        assert_eq!(
            post(state.clone(), b"{not json".to_vec()).await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            post(state, br#"{"kind": "AdmissionReview"}"#.to_vec())
                .await
                .0,
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn pods_outside_the_watched_namespaces_pass_untouched_without_a_lookup() {
        let (state, _api) = state_with(vec![]);
        let state = Arc::new(WebhookState {
            client: state.client.clone(),
            stores: state.stores.clone(),
            defaults: state.defaults.clone(),
            metrics: state.metrics.clone(),
            scope: Scope::Namespaces(vec!["erp".into()]),
        });
        // A look-up would wait for the mock API server, which never answers.
        let (status, v) = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            post(
                state,
                serde_json::to_vec(&review("CREATE", "ghost")).expect("json"),
            ),
        )
        .await
        .expect("answered without asking the API server");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["response"]["allowed"], true, "{v}");
        assert!(v["response"].get("patch").is_none(), "{v}");
    }

    #[tokio::test]
    async fn cache_miss_asks_the_api_server_then_denies() {
        let (state, mut api) = state_with(vec![]);
        let server = tokio::spawn(async move {
            let (req, send) = api.next_request().await.expect("a look-up");
            assert_eq!(
                req.uri().path(),
                "/apis/odoo-ha.io/v1alpha1/namespaces/shop/odoosessionstores/ghost"
            );
            let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"});
            send.send_response(
                Response::builder()
                    .status(404)
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&body).expect("json"),
                    ))
                    .expect("response"),
            );
        });
        let (status, v) = post(
            state,
            serde_json::to_vec(&review("CREATE", "ghost")).expect("json"),
        )
        .await;
        server.await.expect("mock API");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["response"]["allowed"], false);
        let msg = v["response"]["status"]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(
            msg.contains("\"ghost\"") && msg.contains("does not exist"),
            "{msg}"
        );
    }
}

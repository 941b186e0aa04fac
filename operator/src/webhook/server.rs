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

pub struct WebhookState {
    pub client: Client,
    /// Reflector cache of the stores, so most requests need no API call.
    pub stores: Store<OdooSessionStore>,
    pub defaults: Defaults,
    pub metrics: Arc<Metrics>,
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
    let injection = sidecar::build(&valid, defaults, native);
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
    if let Some(s) = state.stores.get(&ObjectRef::new(name).within(namespace)) {
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
    fn unlabelled_pods_pass() {
        assert!(matches!(
            decide(&json!({"spec": {}}), "shop", None, &Defaults::default()),
            Decision::Allow
        ));
    }
}

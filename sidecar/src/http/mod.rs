//! The HTTP API v1 (see docs/sidecar-api.md): routing, shared state, timing.

pub mod backend;
mod body;
mod error;
mod ops;
mod sessions;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

pub use backend::{BackendHealth, BackendState};
pub use body::LARGE_BODY_LIMIT;
pub use error::ApiError;

use crate::metrics::{KindLabels, Metrics, RouteLabels};
use crate::store::{Store, StoreError, StoreResult};

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub default_ttl: Duration,
    pub max_body_bytes: usize,
    pub backend_timeout: Duration,
    /// Whether the backend answers, from the background ping and every real call: logs
    /// say "unreachable" and "reachable again" once per outage, not once per request.
    pub backend: Arc<BackendHealth>,
    /// Set on SIGTERM: `/readyz` answers 503 while the sidecar drains.
    pub draining: Arc<AtomicBool>,
}

impl AppState {
    pub fn new(store: Store, settings: &crate::config::Settings) -> Self {
        let metrics = Arc::new(Metrics::default());
        AppState {
            store: Arc::new(store),
            backend: Arc::new(BackendHealth::new(metrics.clone())),
            metrics,
            default_ttl: settings.expiry,
            max_body_bytes: settings.max_body_bytes,
            backend_timeout: settings.backend_timeout,
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Pings the backend within the backend timeout and records the outcome. Not counted
    /// in `dkn_sidecar_backend_errors_total`, which counts the requests' failures.
    pub async fn check_backend(&self) -> Result<(), ApiError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.backend_timeout, self.store.ping()).await {
            Ok(r) => r.map_err(ApiError::Store),
            Err(_) => Err(ApiError::Timeout(
                u64::try_from(self.backend_timeout.as_millis()).unwrap_or(u64::MAX),
            )),
        };
        self.record_outcome(started, &result);
        result
    }

    /// Pings the backend now and then every `backend::CHECK_INTERVAL`, so its state is known
    /// even while no request comes. Needs a Tokio runtime; stops with it.
    pub fn spawn_backend_watch(&self) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(backend::CHECK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let _ = state.check_backend().await;
            }
        })
    }

    /// Whether SIGTERM started the drain.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Up or down from a backend call's result: an answer of any kind, even an unexpected
    /// one, means the backend is reachable.
    fn record_outcome<T>(&self, started: Instant, result: &Result<T, ApiError>) {
        match result {
            Err(e @ (ApiError::Timeout(_) | ApiError::Store(StoreError::Unavailable(_)))) => {
                self.backend.unreachable(started, e)
            }
            _ => self.backend.reached(started),
        }
    }

    /// Runs one backend operation within the time limit, counting its failures.
    pub async fn call<T>(&self, op: impl Future<Output = StoreResult<T>>) -> Result<T, ApiError> {
        self.call_within(self.backend_timeout, op).await
    }

    /// As `call`, with a time limit of the caller's (an identifier batch of several calls).
    pub async fn call_within<T>(
        &self,
        limit: Duration,
        op: impl Future<Output = StoreResult<T>>,
    ) -> Result<T, ApiError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(limit, op).await {
            Ok(r) => r.map_err(ApiError::Store),
            Err(_) => Err(ApiError::Timeout(
                u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            )),
        };
        self.record_outcome(started, &result);
        if let Err(e) = &result {
            let kind = match e {
                ApiError::Timeout(_) => Some("timeout"),
                ApiError::Store(StoreError::Unavailable(_)) => Some("unavailable"),
                ApiError::Store(StoreError::Backend(_)) => Some("unexpected"),
                _ => None,
            };
            if let Some(kind) = kind {
                self.metrics
                    .backend_errors
                    .get_or_create(&KindLabels { kind })
                    .inc();
                if kind == "unexpected" {
                    tracing::error!(error = %e, "backend answered unexpectedly");
                } else {
                    tracing::debug!(error = %e, "backend call failed");
                }
            }
            let conflict = match e {
                ApiError::Store(StoreError::Precondition { .. }) => Some("precondition"),
                ApiError::Store(StoreError::Gone) => Some("gone"),
                _ => None,
            };
            if let Some(kind) = conflict {
                self.metrics
                    .conflicts
                    .get_or_create(&KindLabels { kind })
                    .inc();
            }
        }
        result
    }

    pub fn wrote(&self, kind: &'static str) {
        self.metrics
            .writes
            .get_or_create(&KindLabels { kind })
            .inc();
    }
}

/// The routes of `router()` and `health_router()` (kept as literals there, which
/// tests/openapi.rs reads): the `route` label takes only these values, or `unmatched`.
/// `route_labels_cover_the_router` checks the two agree.
const SESSION: &str = "/v1/sessions/{sid}";
const ROTATE: &str = "/v1/sessions/{sid}/rotate";
const IDENTIFIERS_DELETE: &str = "/v1/identifiers/delete";
const IDENTIFIERS_MISSING: &str = "/v1/identifiers/missing";
const OPENAPI: &str = "/v1/openapi.json";
const HEALTHZ: &str = "/healthz";
const READYZ: &str = "/readyz";
const METRICS: &str = "/metrics";
const ROUTES: [&str; 8] = [
    SESSION,
    ROTATE,
    IDENTIFIERS_DELETE,
    IDENTIFIERS_MISSING,
    OPENAPI,
    HEALTHZ,
    READYZ,
    METRICS,
];

/// A secret (a sid) as logs show it: its first 8 characters and its length.
pub fn redacted(secret: &str) -> String {
    let head: String = secret.chars().take(8).collect();
    format!("{head}...({} chars)", secret.chars().count())
}

fn route_label(matched: Option<&MatchedPath>) -> &'static str {
    matched
        .and_then(|m| ROUTES.iter().find(|r| **r == m.as_str()))
        .copied()
        .unwrap_or("unmatched")
}

/// The standard methods by name; any other (HTTP allows made-up ones) is `other`.
fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => "other",
    }
}

async fn timing(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = route_label(req.extensions().get::<MatchedPath>());
    let method = method_label(req.method());
    // The debug access log names the route, never the path: a sid is a bearer token.
    let sid = (tracing::enabled!(tracing::Level::DEBUG) && (route == SESSION || route == ROTATE))
        .then(|| req.uri().path().split('/').nth(3).map(redacted))
        .flatten();
    let resp = next.run(req).await;
    tracing::debug!(
        route,
        method,
        status = resp.status().as_u16(),
        sid = sid.as_deref(),
        elapsed_ms = start.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    state
        .metrics
        .requests
        .get_or_create(&RouteLabels {
            route,
            method,
            status: resp.status().as_u16(),
        })
        .observe(start.elapsed().as_secs_f64());
    resp
}

async fn no_route() -> ApiError {
    ApiError::NoRoute
}

async fn wrong_method() -> Response {
    ApiError::Method.into_response()
}

/// Health, readiness and metrics only: what may listen beyond loopback for probes.
pub fn health_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .method_not_allowed_fallback(wrong_method)
        .fallback(no_route)
        .with_state(state)
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route(
            "/v1/sessions/{sid}",
            get(sessions::get)
                .put(sessions::put)
                .patch(sessions::patch)
                .delete(sessions::delete),
        )
        .route("/v1/sessions/{sid}/rotate", post(sessions::rotate))
        .route("/v1/identifiers/delete", post(sessions::delete_identifiers))
        .route(
            "/v1/identifiers/missing",
            post(sessions::missing_identifiers),
        )
        .route("/v1/openapi.json", get(ops::openapi))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .method_not_allowed_fallback(wrong_method)
        .fallback(no_route);
    v1.layer(middleware::from_fn_with_state(state.clone(), timing))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    #[test]
    fn route_labels_cover_the_router() {
        let src = include_str!("mod.rs");
        let body = src.split("pub fn health_router(").nth(1).unwrap_or("");
        let body = body.split("#[cfg(test)]").next().unwrap_or("");
        let mut found = 0;
        // Not written out: tests/openapi.rs reads this file for route calls too.
        let call = [".", "route("].concat();
        for chunk in body.split(call.as_str()).skip(1) {
            let path = chunk.split('"').nth(1).unwrap_or("");
            assert!(super::ROUTES.contains(&path), "{path:?} is not in ROUTES");
            found += 1;
        }
        assert!(found >= super::ROUTES.len(), "{found} routes read");
    }
}

//! Health, readiness, metrics and the OpenAPI document.

use axum::extract::{RawQuery, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;

pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `backend=1` in the query: also ping the backend now. Other parameters are ignored (a
/// probe may add its own). The error is the message of a 400 `invalid_query`.
fn wants_backend(query: Option<&str>) -> Result<bool, String> {
    let mut wants = false;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k == "backend" {
            wants = match &*v {
                "1" => true,
                "0" => false,
                other => {
                    return Err(format!(
                        "backend={other:?}: expected 1 (also ping the backend) or 0"
                    ))
                }
            };
        }
    }
    Ok(wants)
}

/// Ready while the sidecar serves and is not draining, whatever the backend's state (shown
/// in the body): a backend outage must not take every Odoo pod out of its Service at once.
/// With `?backend=1` the backend must also answer a ping now, for harnesses that wait for
/// a usable sidecar.
pub async fn readyz(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let backend_too = match wants_backend(query.as_deref()) {
        Ok(b) => b,
        Err(message) => {
            let body = json!({"error": "invalid_query", "message": message});
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
    };
    if state.is_draining() {
        let body = json!({
            "error": "draining",
            "message": "the sidecar is shutting down: it serves its connected clients until they are gone",
            "backend": state.backend.state().as_str(),
        });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    if backend_too {
        if let Err(e) = state.check_backend().await {
            let body = json!({
                "error": e.code(),
                "message": e.to_string(),
                "backend": state.backend.state().as_str(),
            });
            return (e.status(), Json(body)).into_response();
        }
    }
    Json(json!({"status": "ready", "backend": state.backend.state().as_str()})).into_response()
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    m.backend_connections
        .set(i64::try_from(state.store.pool_in_use()).unwrap_or(i64::MAX));
    m.backend_state_seconds
        .set(state.backend.since_change().as_secs_f64());
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

pub async fn openapi() -> Response {
    ([(CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

//! Health, readiness, metrics and the OpenAPI document.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.call(state.store.ping()).await?;
    Ok("ready\n")
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    m.backend_connections
        .set(i64::try_from(state.store.pool_in_use()).unwrap_or(i64::MAX));
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

//! Leases with fencing tokens.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::body::{JsonBody, LeaseParam};
use super::{ApiError, AppState};
use crate::model::{InputError, LeaseGrant, Owner};

/// Longest lease or wait: one day / one minute.
const MAX_LEASE_MS: u64 = 86_400_000;
const MAX_WAIT_MS: u64 = 60_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    owner: String,
    ttl_ms: u64,
    #[serde(default)]
    wait_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    owner: String,
    ttl_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    owner: String,
}

fn lease_ttl(ms: u64) -> Result<Duration, ApiError> {
    if (1..=MAX_LEASE_MS).contains(&ms) {
        Ok(Duration::from_millis(ms))
    } else {
        Err(InputError::Body(format!("ttl_ms: expected 1 to {MAX_LEASE_MS}")).into())
    }
}

fn granted(g: LeaseGrant) -> Response {
    Json(json!({"token": g.token, "ttl_ms": g.ttl.as_millis() as u64})).into_response()
}

pub async fn acquire(
    State(state): State<AppState>,
    LeaseParam(name): LeaseParam,
    JsonBody(body): JsonBody<AcquireBody>,
) -> Result<Response, ApiError> {
    let owner = Owner::parse(&body.owner)?;
    let ttl = lease_ttl(body.ttl_ms)?;
    if body.wait_ms > MAX_WAIT_MS {
        return Err(InputError::Body(format!("wait_ms: expected 0 to {MAX_WAIT_MS}")).into());
    }
    let wait = Duration::from_millis(body.wait_ms);
    // The wait is spent between tries, and only while the backend answers: every try is
    // bounded by the backend timeout (a hung backend answers 503 within it whatever
    // `wait_ms` says); the whole request ends by `wait_ms` + one backend timeout.
    let grant = state
        .call_within(
            wait + state.backend_timeout,
            state
                .store
                .acquire(&name, &owner, ttl, wait, state.backend_timeout),
        )
        .await?;
    Ok(granted(grant))
}

pub async fn refresh(
    State(state): State<AppState>,
    LeaseParam(name): LeaseParam,
    JsonBody(body): JsonBody<RefreshBody>,
) -> Result<Response, ApiError> {
    let owner = Owner::parse(&body.owner)?;
    let ttl = lease_ttl(body.ttl_ms)?;
    let grant = state
        .call(state.store.refresh_lease(&name, &owner, ttl))
        .await?;
    Ok(granted(grant))
}

pub async fn release(
    State(state): State<AppState>,
    LeaseParam(name): LeaseParam,
    JsonBody(body): JsonBody<ReleaseBody>,
) -> Result<StatusCode, ApiError> {
    let owner = Owner::parse(&body.owner)?;
    state.call(state.store.release_lease(&name, &owner)).await?;
    Ok(StatusCode::NO_CONTENT)
}

//! Request bodies: JSON only, bounded, unknown fields refused, every failure a JSON 4xx.

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;
use crate::model::InputError;

/// A JSON body read within the configured limit.
pub struct JsonBody<T>(pub T);

/// The identifier routes carry up to 100,000 identifiers of 42 characters: they get a
/// larger limit than session writes.
pub struct LargeJsonBody<T>(pub T);

pub const LARGE_BODY_LIMIT: usize = 8 << 20;

async fn read<T: DeserializeOwned>(req: Request<Body>, limit: usize) -> Result<T, ApiError> {
    let is_json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let mime = v.split(';').next().unwrap_or("").trim();
            mime.eq_ignore_ascii_case("application/json")
        })
        .unwrap_or(false);
    if !is_json {
        return Err(ApiError::MediaType);
    }
    let bytes = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| ApiError::TooLarge { limit })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::Input(InputError::Body(format!("body: {e}"))))
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, state: &AppState) -> Result<Self, Self::Rejection> {
        read(req, state.max_body_bytes).await.map(JsonBody)
    }
}

impl<T: DeserializeOwned> FromRequest<AppState> for LargeJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, state: &AppState) -> Result<Self, Self::Rejection> {
        read(req, state.max_body_bytes.max(LARGE_BODY_LIMIT))
            .await
            .map(LargeJsonBody)
    }
}

/// The `{sid}` path segment, parsed; a segment that is not even UTF-8 is `invalid_sid` too.
pub struct SidParam(pub crate::model::Sid);

/// The `{name}` path segment of the lease routes, parsed.
pub struct LeaseParam(pub crate::model::LeaseName);

async fn segment(parts: &mut axum::http::request::Parts, state: &AppState) -> Option<String> {
    use axum::extract::{FromRequestParts, Path};
    Path::<String>::from_request_parts(parts, state)
        .await
        .ok()
        .map(|Path(s)| s)
}

impl axum::extract::FromRequestParts<AppState> for SidParam {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let raw = segment(parts, state).await.ok_or(InputError::Sid)?;
        Ok(SidParam(crate::model::Sid::parse(&raw)?))
    }
}

impl axum::extract::FromRequestParts<AppState> for LeaseParam {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let raw = segment(parts, state).await.ok_or(InputError::LeaseName)?;
        Ok(LeaseParam(crate::model::LeaseName::parse(&raw)?))
    }
}

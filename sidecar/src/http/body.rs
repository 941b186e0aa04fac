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

async fn read<T: DeserializeOwned>(
    req: Request<Body>,
    limit: usize,
    check_values: bool,
) -> Result<T, ApiError> {
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
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::Input(InputError::Body(format!("body: {e}"))))?;
    if check_values {
        check_storable(&bytes)?;
    }
    Ok(value)
}

/// What every driver can keep exactly, checked on the body's text (valid JSON by now):
/// integers must fit in 64 bits (a longer one would come back as a rounded float, since
/// values are kept as serde_json numbers: 64-bit integers or doubles), and no string may
/// hold U+0000 (PostgreSQL's `jsonb` cannot store it). Refused the same way on every
/// driver, before anything is written.
pub fn check_storable(text: &[u8]) -> Result<(), InputError> {
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    if text[i] == b'\\' {
                        if text.get(i + 1) == Some(&b'u')
                            && text
                                .get(i + 2..i + 6)
                                .is_some_and(|h| h.iter().all(|&c| c == b'0'))
                        {
                            return Err(InputError::Body(
                                "body: a string holds U+0000 (\\u0000), which the session store \
                                 does not keep"
                                    .into(),
                            ));
                        }
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                let mut integer = true;
                while i < text.len()
                    && matches!(text[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    integer &= !matches!(text[i], b'.' | b'e' | b'E');
                    i += 1;
                }
                let token = std::str::from_utf8(&text[start..i]).unwrap_or("");
                if integer && token.parse::<i64>().is_err() && token.parse::<u64>().is_err() {
                    let shown: String = token.chars().take(60).collect();
                    return Err(InputError::Body(format!(
                        "body: integer {shown} does not fit in 64 bits (-2^63 to 2^64-1); \
                         send it as a string or a float"
                    )));
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, state: &AppState) -> Result<Self, Self::Rejection> {
        read(req, state.max_body_bytes, true).await.map(JsonBody)
    }
}

impl<T: DeserializeOwned> FromRequest<AppState> for LargeJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request<Body>, state: &AppState) -> Result<Self, Self::Rejection> {
        read(req, state.max_body_bytes.max(LARGE_BODY_LIMIT), false)
            .await
            .map(LargeJsonBody)
    }
}

/// The `{sid}` path segment, parsed; a segment that is not even UTF-8 is `invalid_sid` too.
pub struct SidParam(pub crate::model::Sid);

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

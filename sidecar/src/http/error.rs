//! Every error the API answers, as JSON `{"error": code, "message": text, ...}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::model::InputError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("request body must be application/json")]
    MediaType,
    #[error("backend did not answer within {0} ms")]
    Timeout(u64),
    #[error("no such route")]
    NoRoute,
    #[error("method not allowed on this route")]
    Method,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Input(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::Method => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Store(e) => match e {
                StoreError::NotFound => StatusCode::NOT_FOUND,
                StoreError::Gone => StatusCode::GONE,
                StoreError::Precondition { .. } => StatusCode::PRECONDITION_FAILED,
                StoreError::AlreadyRotated { .. } | StoreError::Conflict { .. } => {
                    StatusCode::CONFLICT
                }
                StoreError::Unavailable(_) | StoreError::NotReplicated(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                StoreError::Backend(_) => StatusCode::BAD_GATEWAY,
                StoreError::TooManyKeys { .. } => StatusCode::BAD_REQUEST,
            },
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Input(e) => e.code(),
            ApiError::TooLarge { .. } => "body_too_large",
            ApiError::MediaType => "unsupported_media_type",
            ApiError::Timeout(_) => "backend_unavailable",
            ApiError::NoRoute => "no_route",
            ApiError::Method => "method_not_allowed",
            ApiError::Store(e) => match e {
                StoreError::NotFound => "not_found",
                StoreError::Gone => "gone",
                StoreError::Precondition { .. } => "precondition_failed",
                StoreError::AlreadyRotated { .. } => "already_rotated",
                StoreError::Conflict { .. } => "conflict",
                // The code clients already treat as "try later"; the message says why.
                StoreError::Unavailable(_) | StoreError::NotReplicated(_) => "backend_unavailable",
                StoreError::Backend(_) => "backend_error",
                StoreError::TooManyKeys { .. } => "invalid_body",
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.code(), "message": self.to_string()});
        match &self {
            ApiError::Store(StoreError::Precondition { current }) => {
                body["current_version"] = json!(current);
            }
            ApiError::Store(StoreError::AlreadyRotated { new_sid }) => {
                body["new_sid"] = json!(new_sid);
            }
            ApiError::Store(StoreError::Conflict { keys, current }) => {
                body["keys"] = json!(keys);
                body["current_version"] = json!(current);
            }
            _ => {}
        }
        let mut resp = (self.status(), axum::Json(body)).into_response();
        if let ApiError::Store(StoreError::Precondition {
            current: Some(v), ..
        }) = &self
        {
            if let Ok(h) = format!("\"{v}\"").parse() {
                resp.headers_mut().insert(axum::http::header::ETAG, h);
            }
        }
        resp
    }
}

//! Session routes: read, write, partial update, delete, rotate, Odoo 18 identifiers.

use std::time::Duration;

use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, ETAG, IF_MATCH, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::body::{JsonBody, LargeJsonBody, SidParam};
use super::{ApiError, AppState};
use crate::config::MAX_TTL_SECS;
use crate::model::{
    check_key, fields_from_object, write_object, Condition, Identifier, InputError, KeepOld, Patch,
    RotateSource, Rotation, Sid,
};
use crate::store::{within, MAX_SESSION_KEYS};

/// Most identifiers in one request: Odoo's device clean-up sends batches of 100,000.
pub const MAX_IDENTIFIERS: usize = 100_000;

/// Most keys a soft rotation sets on the old session (Odoo 19 sets two).
const MAX_KEEP_OLD_KEYS: usize = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    data: Map<String, Value>,
    ttl: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    #[serde(default)]
    set: Map<String, Value>,
    #[serde(default)]
    remove: Vec<String>,
    ttl: Option<u64>,
    /// Per-key conditions: the value each key held when the client read it.
    #[serde(default)]
    expect: Map<String, Value>,
    /// Per-key conditions: keys that were absent when the client read them.
    #[serde(default)]
    expect_absent: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepOldBody {
    ttl: u64,
    #[serde(default)]
    set: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    new_sid: String,
    #[serde(default)]
    set: Map<String, Value>,
    #[serde(default)]
    remove: Vec<String>,
    data: Option<Map<String, Value>>,
    ttl: Option<u64>,
    keep_old: Option<KeepOldBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentifiersBody {
    identifiers: Vec<String>,
}

fn ttl_or_default(ttl: Option<u64>, state: &AppState) -> Result<Duration, ApiError> {
    match ttl {
        None => Ok(state.default_ttl),
        Some(s) if (1..=MAX_TTL_SECS).contains(&s) => Ok(Duration::from_secs(s)),
        Some(_) => {
            Err(InputError::Body(format!("ttl: expected 1 to {MAX_TTL_SECS} seconds")).into())
        }
    }
}

fn parse_version(h: &HeaderValue) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::Input(InputError::Body(
            "If-Match: expected one version as \"<integer>\"".into(),
        ))
    };
    let s = h.to_str().map_err(|_| bad())?.trim();
    let s = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s);
    s.parse().map_err(|_| bad())
}

fn condition(headers: &HeaderMap) -> Result<Condition, ApiError> {
    match (headers.get(IF_NONE_MATCH), headers.get(IF_MATCH)) {
        (Some(_), Some(_)) => {
            Err(InputError::Body("If-Match and If-None-Match cannot be combined".into()).into())
        }
        (Some(v), None) if v.as_bytes() == b"*" => Ok(Condition::CreateOnly),
        (Some(_), None) => {
            Err(InputError::Body("If-None-Match: only * is supported".into()).into())
        }
        (None, Some(v)) => parse_version(v).map(Condition::IfMatch),
        (None, None) => Ok(Condition::Unconditional),
    }
}

fn etag(version: u64) -> HeaderValue {
    // Digits and quotes are always a valid header value.
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

fn versioned(status: StatusCode, version: u64) -> Response {
    (
        status,
        [(ETAG, etag(version))],
        Json(json!({"version": version})),
    )
        .into_response()
}

pub async fn get(
    State(state): State<AppState>,
    SidParam(sid): SidParam,
) -> Result<Response, ApiError> {
    let Some(session) = state.call(state.store.get(&sid)).await? else {
        return Err(crate::store::StoreError::NotFound.into());
    };
    // Built by hand: the stored values are JSON text already.
    let mut body =
        String::with_capacity(128 + session.fields.values().map(String::len).sum::<usize>());
    body.push_str("{\"sid\":\"");
    body.push_str(sid.as_str());
    body.push_str("\",\"version\":");
    body.push_str(&session.version.to_string());
    body.push_str(",\"ttl\":");
    body.push_str(&session.ttl.as_secs().to_string());
    body.push_str(",\"data\":");
    write_object(&session.fields, &mut body);
    body.push('}');
    Ok((
        [
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (ETAG, etag(session.version)),
        ],
        body,
    )
        .into_response())
}

pub async fn put(
    State(state): State<AppState>,
    SidParam(sid): SidParam,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PutBody>,
) -> Result<Response, ApiError> {
    let cond = condition(&headers)?;
    check_key_count("data", body.data.len())?;
    let ttl = ttl_or_default(body.ttl, &state)?;
    let fields = fields_from_object(body.data)?;
    let w = state.call(state.store.put(&sid, fields, ttl, cond)).await?;
    state.wrote("put");
    let status = if w.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(versioned(status, w.version))
}

pub async fn patch(
    State(state): State<AppState>,
    SidParam(sid): SidParam,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PatchBody>,
) -> Result<Response, ApiError> {
    let if_match = if_match(&headers, "PATCH")?;
    check_key_count("set and remove", body.set.len() + body.remove.len())?;
    let ttl = ttl_or_default(body.ttl, &state)?;
    check_key_count(
        "expect and expect_absent",
        body.expect.len() + body.expect_absent.len(),
    )?;
    let mut patch = Patch::new(fields_from_object(body.set)?, body.remove)?;
    patch.expect = fields_from_object(body.expect)?
        .into_iter()
        .map(|(k, v)| (k, Some(v)))
        .collect();
    for k in body.expect_absent {
        check_key(&k)?;
        if patch.expect.insert(k.clone(), None).is_some() {
            return Err(InputError::Body(format!(
                "key {k:?} is both in expect and in expect_absent"
            ))
            .into());
        }
    }
    let version = state
        .call(state.store.patch(&sid, patch, ttl, if_match))
        .await?;
    state.wrote("patch");
    Ok(versioned(StatusCode::OK, version))
}

/// `If-Match` of an update-only request (PATCH, DELETE, rotate): `If-None-Match` refused.
fn if_match(headers: &HeaderMap, what: &str) -> Result<Option<u64>, ApiError> {
    match condition(headers)? {
        Condition::Unconditional => Ok(None),
        Condition::IfMatch(v) => Ok(Some(v)),
        Condition::CreateOnly => Err(InputError::Body(format!(
            "{what} is update-only: If-None-Match is not accepted"
        ))
        .into()),
    }
}

/// Refuses a write naming more keys than a session may hold.
fn check_key_count(what: &str, n: usize) -> Result<(), ApiError> {
    if n > MAX_SESSION_KEYS {
        return Err(InputError::Body(format!(
            "{what}: at most {MAX_SESSION_KEYS} keys per request, got {n}"
        ))
        .into());
    }
    Ok(())
}

pub async fn delete(
    State(state): State<AppState>,
    SidParam(sid): SidParam,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let if_match = if_match(&headers, "DELETE")?;
    state.call(state.store.delete(&sid, if_match)).await?;
    state.wrote("delete");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn rotate(
    State(state): State<AppState>,
    SidParam(sid): SidParam,
    headers: HeaderMap,
    JsonBody(body): JsonBody<RotateBody>,
) -> Result<Response, ApiError> {
    let old = sid;
    let if_match = if_match(&headers, "rotate")?;
    check_key_count(
        "set and remove",
        body.set.len() + body.remove.len() + body.data.as_ref().map_or(0, Map::len),
    )?;
    let new_sid = Sid::parse(&body.new_sid)?;
    let ttl = ttl_or_default(body.ttl, &state)?;
    let source = match body.data {
        Some(data) => {
            if !body.set.is_empty() || !body.remove.is_empty() {
                return Err(
                    InputError::Body("give either data or set/remove, not both".into()).into(),
                );
            }
            RotateSource::Given(fields_from_object(data)?)
        }
        None => RotateSource::Stored(Patch::new(fields_from_object(body.set)?, body.remove)?),
    };
    let keep_old = match body.keep_old {
        Some(k) if k.set.len() > MAX_KEEP_OLD_KEYS => {
            return Err(InputError::Body(format!(
                "keep_old.set: at most {MAX_KEEP_OLD_KEYS} keys, got {}",
                k.set.len()
            ))
            .into())
        }
        Some(k) if (1..=86_400).contains(&k.ttl) => Some(KeepOld {
            ttl: Duration::from_secs(k.ttl),
            set: fields_from_object(k.set)?,
        }),
        Some(_) => {
            return Err(InputError::Body("keep_old.ttl: expected 1 to 86400 seconds".into()).into())
        }
        None => None,
    };
    let rotation = Rotation {
        new_sid,
        source,
        ttl,
        keep_old,
    };
    let w = state
        .call(state.store.rotate(&old, rotation, if_match))
        .await?;
    state.wrote("rotate");
    Ok(versioned(StatusCode::CREATED, w.version))
}

fn identifiers(raw: Vec<String>) -> Result<Vec<Identifier>, ApiError> {
    if raw.len() > MAX_IDENTIFIERS {
        return Err(InputError::Body(format!(
            "identifiers: at most {MAX_IDENTIFIERS} per request, got {}",
            raw.len()
        ))
        .into());
    }
    raw.iter()
        .map(|s| Identifier::parse(s).map_err(ApiError::from))
        .collect()
}

/// Identifiers per backend call of a batch.
const BATCH_CHUNK: usize = 5_000;

/// A batch of identifiers is one backend call per 5,000 identifiers, each bounded by the
/// backend timeout (a hung backend answers 503 within one timeout, whatever the batch size);
/// the whole request by one timeout per call.
fn batch_limit(state: &AppState, n: usize) -> Duration {
    state.backend_timeout * u32::try_from(n.div_ceil(BATCH_CHUNK).max(1)).unwrap_or(u32::MAX)
}

pub async fn delete_identifiers(
    State(state): State<AppState>,
    LargeJsonBody(body): LargeJsonBody<IdentifiersBody>,
) -> Result<Response, ApiError> {
    let ids = identifiers(body.identifiers)?;
    let limit = batch_limit(&state, ids.len());
    let store = &state.store;
    let each = state.backend_timeout;
    let deleted = state
        .call_within(limit, async {
            let mut deleted = 0;
            for chunk in ids.chunks(BATCH_CHUNK) {
                deleted += within(each, store.delete_identifiers(chunk)).await?;
            }
            Ok(deleted)
        })
        .await?;
    state.wrote("delete_identifiers");
    Ok(Json(json!({"deleted": deleted})).into_response())
}

pub async fn missing_identifiers(
    State(state): State<AppState>,
    LargeJsonBody(body): LargeJsonBody<IdentifiersBody>,
) -> Result<Response, ApiError> {
    let ids = identifiers(body.identifiers)?;
    let limit = batch_limit(&state, ids.len());
    let store = &state.store;
    let each = state.backend_timeout;
    let missing = state
        .call_within(limit, async {
            let mut missing = Vec::new();
            for chunk in ids.chunks(BATCH_CHUNK) {
                missing.extend(within(each, store.missing_identifiers(chunk)).await?);
            }
            Ok(missing)
        })
        .await?;
    let missing: Vec<&str> = missing.iter().map(Identifier::as_str).collect();
    Ok(Json(json!({"missing": missing})).into_response())
}

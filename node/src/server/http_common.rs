//! What every HTTP handler module shares: the JSON error shape ([`ApiError`], and how a
//! coordinator error maps onto it), decoding a path segment, reading a body within the
//! node's limits, and recording each request's status and latency.
//!
//! Must not: know routes or what a handler does (`http.rs`, `http_keys.rs` and
//! `http_props.rs` do); import any of those modules.

use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use chorus_core::coordinator::CoordinatorError;

use crate::server::node::Node;

/// Buckets and keys are at most this many bytes after percent-decoding.
pub use chorus_core::object::MAX_NAME_BYTES as MAX_SEGMENT_BYTES;
/// Longest `timeout` a client may ask for (and longest `--timeout-ms`).
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// An error answer: `{"error": code, "message": sentence, ...extra}`.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: json!({"error": code, "message": message.into()}),
        }
    }
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<CoordinatorError> for ApiError {
    fn from(e: CoordinatorError) -> Self {
        match &e {
            CoordinatorError::Unavailable {
                needed,
                replied,
                primaries_needed,
                primaries_replied,
            } => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: json!({
                    "error": "quorum_unavailable",
                    "message": e.to_string(),
                    "needed": needed,
                    "replied": replied,
                    "primaries_needed": primaries_needed,
                    "primaries_replied": primaries_replied,
                }),
            },
            CoordinatorError::Unreachable {
                needed,
                reachable,
                primaries_needed,
                primaries_reachable,
            } => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: json!({
                    "error": "quorum_unavailable",
                    "message": e.to_string(),
                    "needed": needed,
                    "replied": 0,
                    "reachable": reachable,
                    "primaries_needed": primaries_needed,
                    "primaries_replied": 0,
                    "primaries_reachable": primaries_reachable,
                }),
            },
            CoordinatorError::Refused { code, message } => {
                let status = match code.as_str() {
                    "invalid_context" => StatusCode::BAD_REQUEST,
                    "object_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
                    _ => StatusCode::CONFLICT,
                };
                ApiError::new(status, code, message.clone())
            }
            CoordinatorError::PreconditionFailed { .. } => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                e.to_string(),
            ),
            CoordinatorError::StorageFailed(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_failed",
                e.to_string(),
            ),
        }
    }
}

pub fn decode_segment(what: &str, raw: &str) -> Result<Vec<u8>, ApiError> {
    let decoded = percent_encoding::percent_decode_str(raw).collect::<Vec<u8>>();
    if decoded.is_empty() {
        return Err(ApiError::bad_request(
            &format!("invalid_{what}"),
            format!("the {what} is empty"),
        ));
    }
    if decoded.len() > MAX_SEGMENT_BYTES {
        return Err(ApiError::bad_request(
            &format!("invalid_{what}"),
            format!(
                "the {what} is {} bytes, over the limit of {MAX_SEGMENT_BYTES}",
                decoded.len()
            ),
        ));
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(ApiError::bad_request(
            &format!("invalid_{what}"),
            format!("the {what} is not percent-encoded UTF-8"),
        ));
    }
    if has_bad_escape(raw) {
        return Err(ApiError::bad_request(
            &format!("invalid_{what}"),
            format!("the {what} has a malformed percent escape"),
        ));
    }
    Ok(decoded)
}

/// `%` must be followed by two hex digits; percent_decode passes malformed escapes through.
fn has_bad_escape(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// The bucket and key of a `/kv`, `/ring` or `/local/kv` request, taken from the raw
/// (still percent-encoded) request path and decoded exactly once. The router matched the
/// raw path, so the last two segments are the bucket and the key (a `%2F` in a key stays
/// inside its segment). Axum's own path parameters are already decoded, and decoding them
/// again would turn a key `%25` into `%`.
/// Runs a handler body and records its status and latency in the metrics.
pub async fn measured(
    node: &Node,
    op: &'static str,
    handler: impl std::future::Future<Output = Result<Response, ApiError>>,
) -> Response {
    let started = Instant::now();
    let response = handler.await.unwrap_or_else(IntoResponse::into_response);
    let status = response.status().as_u16();
    node.metrics
        .record_request(op, status, started.elapsed().as_secs_f64());
    response
}

/// Reads a request body within `--max-value` and `--http-body-timeout-ms`. Only a body
/// over the limit is a 413; one that cannot be read (shorter than its Content-Length, a
/// malformed chunked encoding, a reset) is the client's 400, and a slow one a 408.
pub async fn read_body(node: &Node, body: Body) -> Result<Bytes, ApiError> {
    let limit = node.limits.max_value;
    let timeout = node.limits.body_timeout;
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit));
    match read.await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if is_over_limit(&e) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!("the value is over the limit of {limit} bytes (--max-value)"),
        )),
        Ok(Err(e)) => Err(ApiError::bad_request(
            "invalid_body",
            format!("the request body could not be read: {e}"),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} ms (--http-body-timeout-ms)",
                timeout.as_millis()
            ),
        )),
    }
}

fn is_over_limit(e: &axum::Error) -> bool {
    std::error::Error::source(e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
}

//! The client HTTP API (axum), exactly as CONTRACT.md lists it: `/kv`, `/ring`, `/status`,
//! `/metrics`, `/health`, the `/local` views of this node's own replicas, and the admin
//! calls behind `chorus leave` / `chorus remove`; it mounts the dashboard's `/ui` routes
//! from `ui.rs`. It validates input, turns requests into coordinator calls and results into
//! status codes; it holds no replication logic.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::server::http_common::{decode_segment, measured, read_body, ApiError, MAX_TIMEOUT_MS};
use crate::server::node::{AdminAuth, Node};
use chorus_api::placement::{LocalPartition, Owner, RingBody};
use chorus_api::{SiblingBody, SiblingsBody, CONTEXT_HEADER, EXPIRES_AT_HEADER, TTL_HEADER};
use chorus_core::bucket_props::BucketProps;
use chorus_core::causality::Context;
use chorus_core::coordinator::{CoordinatorError, Precondition, Quorum};
use chorus_core::object::{live_siblings, Object, Sibling, MAX_CONTENT_TYPE_BYTES, MAX_TTL};
use chorus_core::request_options::{self, Defaults, Requested};
use chorus_core::storage::Storage;

pub fn router(node: Arc<Node>) -> Router {
    let router = Router::new();
    // Only in the test build (`--features fault-injection`): scripts/chaos drives it.
    #[cfg(feature = "fault-injection")]
    let router = router.route("/admin/fault", get(fault_get).post(fault_set));
    router
        .route(
            "/kv/{bucket}/{key}",
            get(kv_get).put(kv_put).delete(kv_delete),
        )
        .route("/kv/{bucket}", get(crate::server::http_keys::kv_list))
        .route(
            "/buckets/{bucket}/props",
            get(crate::server::http_props::props_get).put(crate::server::http_props::props_put),
        )
        .route("/ring/{bucket}/{key}", get(ring_owners))
        .route("/local/kv/{bucket}/{key}", get(local_kv))
        .route("/local/partitions", get(local_partitions))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/admin/leave", post(admin_leave))
        .route("/admin/remove/{name}", post(admin_remove))
        .merge(crate::server::ui::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(plain_framing))
        // Bodies are read with our own limit so an oversized value gets a JSON 413.
        .layer(DefaultBodyLimit::disable())
        .with_state(node)
}

fn bucket_and_key(uri: &Uri) -> Result<(Vec<u8>, Vec<u8>), ApiError> {
    let mut segments = uri.path().rsplitn(3, '/');
    match (segments.next(), segments.next(), segments.next()) {
        (Some(key), Some(bucket), Some(_)) => Ok((
            decode_segment("bucket", bucket)?,
            decode_segment("key", key)?,
        )),
        _ => Err(ApiError::bad_request(
            "invalid_path",
            "expected /kv/{bucket}/{key}",
        )),
    }
}

/// Paths no route matched. `/kv/b/` and `/kv//k` match no route (an empty segment is no
/// parameter) but are a client's empty key or bucket: those get the 400 the API promises.
async fn no_route(uri: Uri) -> ApiError {
    let path = uri.path();
    let rest = ["/kv/", "/ring/", "/local/kv/"]
        .iter()
        .find_map(|prefix| path.strip_prefix(prefix));
    if rest.is_some_and(|rest| rest.matches('/').count() == 1) {
        if let Err(e) = bucket_and_key(&uri) {
            return e;
        }
    }
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see the API table in docs/api.md",
    )
}

/// The options a `/kv` request gives itself in its query, validated against the
/// replication factor: what [`request_options::resolve`] weighs against the bucket.
struct KvQuery {
    requested: Requested,
    timeout: Duration,
    /// The query's `ttl` (`Some(None)`: `ttl=none`), for a PUT only.
    ttl: Option<Option<Duration>>,
}

/// What a `/kv` request runs with.
struct KvParams {
    r: usize,
    w: usize,
    pr: usize,
    pw: usize,
    timeout: Duration,
    /// A PUT's expiry (Unix ms), if any.
    expires_at_ms: Option<u64>,
}

/// Parses the query of a `/kv` request: `r`, `w`, `pr`, `pw`, `timeout`, `ttl`, each once.
fn kv_query(n: usize, default_timeout: Duration, query: Option<&str>) -> Result<KvQuery, ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or("")).map_err(|e| {
            ApiError::bad_request(
                "invalid_parameter",
                format!("cannot parse the query string: {e}"),
            )
        })?;
    let mut parsed = KvQuery {
        requested: Requested::default(),
        timeout: default_timeout,
        ttl: None,
    };
    let mut seen = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        // `?w=1&w=all` has no obvious meaning; guessing (first or last wins) could weaken a write.
        if seen.contains(&name) {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!("parameter '{name}' is given more than once"),
            ));
        }
        seen.push(name.clone());
        parsed.apply(n, &name, &value)?;
    }
    Ok(parsed)
}

impl KvQuery {
    /// Sets one query parameter, validated against replication factor `n`.
    fn apply(&mut self, n: usize, name: &str, value: &str) -> Result<(), ApiError> {
        let count = |allow_zero| {
            Quorum::parse(value)
                .and_then(|q| q.resolve(n, allow_zero))
                .map(Some)
                .map_err(|e| ApiError::bad_request("invalid_parameter", format!("{name}: {e}")))
        };
        match name {
            "r" => self.requested.r = count(false)?,
            "w" => self.requested.w = count(false)?,
            "pr" => self.requested.pr = count(true)?,
            "pw" => self.requested.pw = count(true)?,
            "timeout" => {
                let ms: u64 = value.parse().ok().filter(|ms| (1..=MAX_TIMEOUT_MS).contains(ms)).ok_or_else(|| {
                    ApiError::bad_request("invalid_parameter", format!("timeout: '{value}' is not a number of milliseconds in 1..={MAX_TIMEOUT_MS}"))
                })?;
                self.timeout = Duration::from_millis(ms);
            }
            "ttl" => {
                let ttl = chorus_api::parse_ttl(value, MAX_TTL)
                    .map_err(|e| ApiError::bad_request("invalid_ttl", e))?;
                self.ttl = Some(ttl);
            }
            other => {
                return Err(ApiError::bad_request(
                    "invalid_parameter",
                    format!("unknown parameter '{other}': use r, w, pr, pw, timeout or ttl"),
                ));
            }
        }
        Ok(())
    }

    /// The request's options, else the bucket's properties, else the node's defaults
    /// (majority reads and writes). `expires_at_ms` is a PUT's own expiry, if it gave one.
    fn resolve(
        &self,
        n: usize,
        props: Option<&BucketProps>,
        expires_at_ms: Option<Option<u64>>,
        now_ms: u64,
    ) -> Result<KvParams, ApiError> {
        let requested = Requested {
            expires_at_ms,
            ..self.requested
        };
        let e = request_options::resolve(n, Defaults::majority(n), props, &requested, now_ms)
            .map_err(|e| ApiError::bad_request("invalid_parameter", e.to_string()))?;
        Ok(KvParams {
            r: e.r,
            w: e.w,
            pr: e.pr,
            pw: e.pw,
            timeout: self.timeout,
            expires_at_ms: e.expires_at_ms,
        })
    }
}

/// The parameters of a GET or DELETE (which take no `ttl`) of `bucket`.
fn read_params(node: &Node, bucket: &[u8], query: Option<&str>) -> Result<KvParams, ApiError> {
    let n = node.coordinator.n();
    let q = kv_query(n, node.limits.default_timeout, query)?;
    no_ttl(&q)?;
    let props = node.coordinator.props().get(bucket);
    q.resolve(n, props.as_ref(), None, node.coordinator.now_ms())
}

/// The parameters of a PUT to `bucket`, its expiry included (see [`write_ttl`]).
fn write_params(
    node: &Node,
    bucket: &[u8],
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<KvParams, ApiError> {
    let n = node.coordinator.n();
    let q = kv_query(n, node.limits.default_timeout, query)?;
    let now_ms = node.coordinator.now_ms();
    let expires_at_ms = write_ttl(headers, q.ttl)?
        .map(|ttl| ttl.map(|t| now_ms.saturating_add(t.as_millis() as u64)));
    let props = node.coordinator.props().get(bucket);
    q.resolve(n, props.as_ref(), expires_at_ms, now_ms)
}

/// The TTL a PUT gives itself: its `X-Chorus-TTL` header or `ttl` parameter (one of them;
/// `Some(None)` for `none`); `None` when it gives none (the bucket's `ttl` then applies).
fn write_ttl(
    headers: &HeaderMap,
    query_ttl: Option<Option<Duration>>,
) -> Result<Option<Option<Duration>>, ApiError> {
    let mut given = headers.get_all(TTL_HEADER).iter();
    match (given.next(), given.next(), query_ttl) {
        (None, _, _) => Ok(query_ttl),
        (Some(_), Some(_), _) | (Some(_), None, Some(_)) => Err(ApiError::bad_request(
            "invalid_ttl",
            format!("give the TTL once: one {TTL_HEADER} header or the ttl parameter"),
        )),
        (Some(value), None, None) => {
            let text = value.to_str().map_err(|_| {
                ApiError::bad_request("invalid_ttl", format!("{TTL_HEADER} is not text"))
            })?;
            chorus_api::parse_ttl(text, MAX_TTL)
                .map(Some)
                .map_err(|e| ApiError::bad_request("invalid_ttl", e))
        }
    }
}

/// Refuses a `ttl` parameter on a request that writes no value (a GET or a DELETE).
fn no_ttl(query: &KvQuery) -> Result<(), ApiError> {
    match query.ttl {
        Some(_) => Err(ApiError::bad_request(
            "invalid_parameter",
            "ttl applies to a PUT only",
        )),
        None => Ok(()),
    }
}

/// The context a write carries. It must have been handed out for this very key (see
/// `chorus_api::bind_context`): another key's context would supersede versions here the
/// client never saw.
fn request_context(headers: &HeaderMap, bucket: &[u8], key: &[u8]) -> Result<Context, ApiError> {
    if headers.get_all(CONTEXT_HEADER).iter().count() > 1 {
        return Err(ApiError::bad_request(
            "invalid_context",
            "X-Chorus-Context is given more than once",
        ));
    }
    match headers.get(CONTEXT_HEADER) {
        None => Ok(Context::default()),
        Some(value) => {
            let text = value.to_str().map_err(|_| {
                ApiError::bad_request("invalid_context", "X-Chorus-Context is not ASCII")
            })?;
            if text.is_empty() {
                return Ok(Context::default());
            }
            let token = chorus_api::bound_token(text, bucket, key)
                .map_err(|e| ApiError::bad_request("invalid_context", e.to_string()))?;
            Context::decode(token)
                .map_err(|e| ApiError::bad_request("invalid_context", e.to_string()))
        }
    }
}

/// The value's `Content-Type`, bounded so a key's size at the sibling limit is known.
fn request_content_type(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    let text = v
        .to_str()
        .map_err(|_| ApiError::bad_request("invalid_content_type", "Content-Type is not ASCII"))?;
    if text.len() > MAX_CONTENT_TYPE_BYTES {
        return Err(ApiError::bad_request(
            "invalid_content_type",
            format!(
                "Content-Type is {} bytes, over the limit of {MAX_CONTENT_TYPE_BYTES}",
                text.len()
            ),
        ));
    }
    Ok(Some(text.to_string()))
}

/// A conditional PUT's precondition: `If-None-Match: *` (create only) or `If-Match:
/// <context>` (replace exactly what that context's read saw). Either excludes the other
/// and `X-Chorus-Context`: the precondition says which context the write carries.
fn request_precondition(
    headers: &HeaderMap,
    bucket: &[u8],
    key: &[u8],
) -> Result<Option<Precondition>, ApiError> {
    let invalid = |m: &str| ApiError::bad_request("invalid_precondition", m);
    let none_match = headers.get(header::IF_NONE_MATCH);
    let if_match = headers.get(header::IF_MATCH);
    let conditions = usize::from(none_match.is_some()) + usize::from(if_match.is_some());
    if conditions > 1 || (conditions == 1 && headers.contains_key(CONTEXT_HEADER)) {
        return Err(invalid(
            "give at most one of If-None-Match, If-Match and X-Chorus-Context",
        ));
    }
    if let Some(value) = none_match {
        return match value.as_bytes() {
            b"*" => Ok(Some(Precondition::Absent)),
            _ => Err(invalid(
                "If-None-Match takes only * (create the key only if it has no live value)",
            )),
        };
    }
    let Some(value) = if_match else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| invalid("If-Match is not ASCII"))?;
    // An ETag-style quoted value is accepted too.
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    let token = chorus_api::bound_token(text, bucket, key)
        .map_err(|e| ApiError::bad_request("invalid_context", format!("If-Match: {e}")))?;
    Context::decode(token)
        .map(|context| Some(Precondition::Matches(context)))
        .map_err(|e| ApiError::bad_request("invalid_context", format!("If-Match: {e}")))
}

/// 412 with the context of the state the precondition was judged on, to read and retry.
fn precondition_failed(reason: &str, current: &Context, bucket: &[u8], key: &[u8]) -> Response {
    let mut response = ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "precondition_failed",
        format!("{reason}; nothing was written"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(CONTEXT_HEADER, header_value(current, bucket, key));
    response
}

/// The context a client gets back, bound to `bucket`/`key`. A GET's is the merged state's
/// vector (it covers what the answer shows and what those values superseded); a write's
/// comes from the coordinator ([`chorus_core::coordinator::Written`]): the request's context
/// plus the new version, never the whole state, which may hold concurrent siblings this
/// client was not shown.
fn header_value(context: &Context, bucket: &[u8], key: &[u8]) -> HeaderValue {
    HeaderValue::from_str(&chorus_api::bind_context(&context.encode(), bucket, key))
        .expect("base64 is a valid header value")
}

/// The JSON form of a read's siblings; `/local/kv` also shows which are tombstones.
fn siblings_body(siblings: &[&Sibling], show_deleted: bool) -> Vec<SiblingBody> {
    siblings
        .iter()
        .map(|s| SiblingBody {
            value: s.value.clone(),
            content_type: Some(
                s.content_type
                    .as_deref()
                    .unwrap_or("application/octet-stream")
                    .to_string(),
            ),
            deleted: show_deleted.then_some(s.deleted),
            expires_at_ms: s.expires_at_ms,
        })
        .collect()
}

async fn kv_get(
    State(node): State<Arc<Node>>,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    measured(&node.clone(), "get", async move {
        let (bucket, key) = bucket_and_key(&uri)?;
        let p = read_params(&node, &bucket, query.as_deref())?;
        let object = node.coordinator.get(&bucket, &key, p.r, p.pr, p.timeout).await?;
        // Judged once, after the read: a value that expired while it was read is gone.
        let live = live_siblings(&object, node.coordinator.now_ms());
        let wants_json = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("application/json"));
        let status = match live.len() {
            0 => StatusCode::NOT_FOUND,
            1 => StatusCode::OK,
            _ => StatusCode::MULTIPLE_CHOICES,
        };
        let context = header_value(&object.context(), &bucket, &key);
        if wants_json || live.len() > 1 {
            let body = SiblingsBody {
                context: context.to_str().unwrap_or_default().to_string(),
                siblings: siblings_body(&live, false),
                tombstone: None,
            };
            return Ok((status, [(CONTEXT_HEADER, context)], Json(body)).into_response());
        }
        match live.first() {
            None => Ok((
                status,
                [(CONTEXT_HEADER, context)],
                Json(json!({"error": "not_found", "message": "the key does not exist or was deleted"})),
            )
                .into_response()),
            Some(sibling) => {
                let content_type = sibling.content_type.clone().unwrap_or_else(|| "application/octet-stream".into());
                let content_type = HeaderValue::from_str(&content_type).unwrap_or(HeaderValue::from_static("application/octet-stream"));
                let mut response = (status, [(header::CONTENT_TYPE, content_type), (CONTEXT_HEADER.parse().expect("static"), context)], Body::from(sibling.value.clone()))
                    .into_response();
                if let Some(at) = sibling.expires_at_ms {
                    response.headers_mut().insert(EXPIRES_AT_HEADER, HeaderValue::from(at));
                }
                Ok(response)
            }
        }
    })
    .await
}

/// Refuses framing chorus would misread: a `Transfer-Encoding` other than plain `chunked`
/// (hyper decodes only chunked and would store a gzip body as it came), or several.
async fn plain_framing(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut encodings = request.headers().get_all(header::TRANSFER_ENCODING).iter();
    let ok = match (encodings.next(), encodings.next()) {
        (None, _) => true,
        (Some(v), None) => v
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked")),
        (Some(_), Some(_)) => false,
    };
    if !ok {
        return ApiError::bad_request(
            "unsupported_transfer_encoding",
            "only Transfer-Encoding: chunked is accepted (no gzip or other codings)",
        )
        .into_response();
    }
    next.run(request).await
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method; see the API table in docs/api.md",
    )
}

async fn kv_put(
    State(node): State<Arc<Node>>,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    measured(&node.clone(), "put", async move {
        let (bucket, key) = bucket_and_key(&uri)?;
        let p = write_params(&node, &bucket, query.as_deref(), &headers)?;
        let precondition = request_precondition(&headers, &bucket, &key)?;
        let context = request_context(&headers, &bucket, &key)?;
        let content_type = request_content_type(&headers)?;
        let value = read_body(&node, body).await?;
        #[cfg(feature = "fault-injection")]
        if crate::server::fault::broken() {
            return Ok(broken_ack(&headers));
        }
        let value = Sibling::value(value.to_vec(), content_type).expiring_at(p.expires_at_ms);
        let written = match precondition {
            None => {
                node.coordinator
                    .put(&bucket, &key, context, value, p.w, p.pw, p.timeout)
                    .await
            }
            Some(precondition) => {
                node.coordinator
                    .put_if(
                        &bucket,
                        &key,
                        precondition,
                        value,
                        (p.r, p.pr),
                        (p.w, p.pw),
                        p.timeout,
                    )
                    .await
            }
        };
        let written = match written {
            Err(CoordinatorError::PreconditionFailed { reason, current }) => {
                return Ok(precondition_failed(reason, &current, &bucket, &key))
            }
            other => other?,
        };
        Ok((
            StatusCode::NO_CONTENT,
            [(
                CONTEXT_HEADER,
                header_value(&written.context, &bucket, &key),
            )],
        )
            .into_response())
    })
    .await
}

async fn kv_delete(
    State(node): State<Arc<Node>>,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    measured(&node.clone(), "delete", async move {
        let (bucket, key) = bucket_and_key(&uri)?;
        let p = read_params(&node, &bucket, query.as_deref())?;
        // Without a context a tombstone would only be a sibling of the value it meant to
        // remove, and the value would stay visible. Like Riak, read the context first (at
        // r = w, so the delete is as available as the caller asked for) and delete what it saw.
        let context = match headers.get(CONTEXT_HEADER) {
            Some(_) => request_context(&headers, &bucket, &key)?,
            None => node
                .coordinator
                .get(&bucket, &key, p.w, 0, p.timeout)
                .await?
                .context(),
        };
        #[cfg(feature = "fault-injection")]
        if crate::server::fault::broken() {
            return Ok(broken_ack(&headers));
        }
        let written = node
            .coordinator
            .put(
                &bucket,
                &key,
                context,
                Sibling::tombstone(),
                p.w,
                p.pw,
                p.timeout,
            )
            .await?;
        Ok((
            StatusCode::NO_CONTENT,
            [(
                CONTEXT_HEADER,
                header_value(&written.context, &bucket, &key),
            )],
        )
            .into_response())
    })
    .await
}

/// The deliberately broken node's answer to a write: `204` and the client's own context
/// back, with nothing stored anywhere (fault-injection builds only).
#[cfg(feature = "fault-injection")]
fn broken_ack(headers: &HeaderMap) -> Response {
    let context = headers
        .get(CONTEXT_HEADER)
        .cloned()
        .unwrap_or(HeaderValue::from_static(""));
    (StatusCode::NO_CONTENT, [(CONTEXT_HEADER, context)]).into_response()
}

#[cfg(feature = "fault-injection")]
async fn fault_get() -> Json<Value> {
    Json(json!(crate::server::fault::current()))
}

#[cfg(feature = "fault-injection")]
async fn fault_set(body: axum::body::Bytes) -> Result<Json<Value>, ApiError> {
    let change: crate::server::fault::FaultSetting =
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "invalid_fault",
                format!("expected JSON with delay_ms, jitter_ms, broken: {e}"),
            )
        })?;
    let now = crate::server::fault::set(&change)
        .map_err(|e| ApiError::bad_request("invalid_fault", e))?;
    Ok(Json(json!(now)))
}

async fn ring_owners(State(node): State<Arc<Node>>, uri: Uri) -> Result<Json<RingBody>, ApiError> {
    let (bucket, key) = bucket_and_key(&uri)?;
    let view = node.coordinator.view();
    let partition = view.ring.partition_of(&bucket, &key);
    let primaries = view.ring.primaries(partition).len();
    let preference_list = view
        .ring
        .preference_list(partition)
        .iter()
        .enumerate()
        .map(|(i, name)| Owner {
            address: node.gossip.address_of(name).unwrap_or_default(),
            name: name.to_string(),
            primary: i < primaries,
            reachable: !view.unreachable.contains(*name),
        })
        .collect();
    Ok(Json(RingBody {
        partition,
        preference_list,
    }))
}

/// `/local/kv`: every version this replica holds, tombstones and expired values too.
fn object_json(object: &Object, bucket: &[u8], key: &[u8]) -> SiblingsBody {
    let tombstone = !object.is_empty() && object.values().iter().all(|s| s.deleted);
    SiblingsBody {
        context: chorus_api::bind_context(&object.context().encode(), bucket, key),
        siblings: siblings_body(&object.values(), true),
        tombstone: Some(tombstone),
    }
}

async fn local_kv(State(node): State<Arc<Node>>, uri: Uri) -> Result<Response, ApiError> {
    let (bucket, key) = bucket_and_key(&uri)?;
    match node.replica.get(&bucket, &key) {
        Ok(Some(object)) => Ok(Json(object_json(&object, &bucket, &key)).into_response()),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this node holds nothing for the key",
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage_error",
            e.to_string(),
        )),
    }
}

async fn local_partitions(
    State(node): State<Arc<Node>>,
) -> Result<Json<Vec<LocalPartition>>, ApiError> {
    let storage_error = |e: chorus_core::storage::StorageError| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage_error",
            e.to_string(),
        )
    };
    let view = node.coordinator.view();
    let storage = node.replica.storage();
    let mut out = Vec::new();
    for partition in storage.partitions().map_err(storage_error)? {
        let primary = view.ring.is_primary(partition, &node.name);
        out.push(LocalPartition {
            id: partition,
            keys: storage.key_count(partition).map_err(storage_error)?,
            merkle_root: storage.tree(partition).map_err(storage_error)?.root_hex(),
            role: if primary { "primary" } else { "fallback" }.to_string(),
        });
    }
    Ok(Json(out))
}

async fn status(State(node): State<Arc<Node>>) -> Json<chorus_api::StatusBody> {
    Json(node.status())
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    node.refresh_phi_metrics();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.metrics.render(),
    )
        .into_response()
}

/// 200 while the node serves requests; 503 with the reason once its storage failed, so
/// load balancers and operators stop sending it traffic.
async fn health(State(node): State<Arc<Node>>) -> Response {
    match node.replica.health().failure() {
        None => Json(json!({"status": "ok", "repairing": node.replica.is_repairing()})).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "storage_failed", "error": "storage_failed", "message": format!("this node's storage failed: {reason}")})),
        )
            .into_response(),
    }
}

/// For load balancers: 200 while the node should take client requests, else 503 with the
/// reason (`/health` stays the liveness check: a lonely node is alive, not ready).
async fn ready(State(node): State<Arc<Node>>) -> Response {
    match node.not_ready() {
        None => Json(json!({"status": "ready"})).into_response(),
        Some((code, message)) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).into_response()
        }
    }
}

/// `/admin/*` needs the cluster's admin token (`Authorization: Bearer <admin.token>`),
/// unless the node runs `--insecure`.
fn authorize(node: &Node, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = match &node.admin {
        AdminAuth::Open => return Ok(()),
        AdminAuth::Token(token) => token,
        AdminAuth::Missing(dir) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "admin_disabled",
                format!("this node's credential {} has no admin token; make one with `chorus certs init --force` and copy it to every node", dir.display()),
            ))
        }
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(presented) if crate::server::certs::token_matches(presented.trim(), token) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin calls need Authorization: Bearer <the admin.token of the cluster credential>; `chorus leave` and `chorus remove` send it with --certs DIR",
        )),
    }
}

async fn admin_leave(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    authorize(&node, &headers)?;
    node.leave()
        .await
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "cannot_leave", e.to_string()))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"message": format!("{} is leaving the cluster", node.name)})),
    ))
}

/// `POST /admin/remove/{name}[?data_lost=true]` (see `Membership::remove`).
async fn admin_remove(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    authorize(&node, &headers)?;
    let data_lost = match query.as_deref().unwrap_or("") {
        "" | "data_lost=false" => false,
        "data_lost=true" => true,
        other => {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!("unknown query '{other}': the only parameter is data_lost=true|false"),
            ))
        }
    };
    node.remove(&name, data_lost)
        .map_err(|e| ApiError::bad_request("cannot_remove", e.to_string()))?;
    let message = if data_lost {
        format!("{name} was removed from the cluster and its data declared lost: tombstone reaping resumes; never start it again with its old data directory")
    } else {
        format!("{name} was removed from the cluster; no tombstone is reaped until it returns (its data then reaches the owners) or it is removed again with --data-lost")
    };
    Ok(Json(json!({ "message": message })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode_and_bad_ones_are_refused() {
        assert_eq!(decode_segment("key", "a%2Fb").unwrap(), b"a/b");
        assert_eq!(decode_segment("key", "%E2%9C%93").unwrap(), "✓".as_bytes());
        assert!(decode_segment("key", "").is_err());
        assert!(decode_segment("key", "%ZZ").is_err());
        assert!(decode_segment("key", "abc%2").is_err());
        assert!(decode_segment("key", "%FF").is_err(), "not UTF-8");
        assert!(decode_segment("key", &"a".repeat(1025)).is_err());
        assert!(decode_segment("key", &"a".repeat(1024)).is_ok());
    }

    /// A GET's parameters for its query and its bucket's `props`.
    fn kv_params(
        n: usize,
        timeout: Duration,
        props: Option<&BucketProps>,
        query: Option<&str>,
    ) -> Result<KvParams, ApiError> {
        kv_query(n, timeout, query)?.resolve(n, props, None, 0)
    }

    #[test]
    fn bucket_props_set_defaults_that_the_request_overrides() {
        let timeout = Duration::from_millis(2000);
        let props = BucketProps {
            r: Some("all".into()),
            w: Some("one".into()),
            pw: Some("1".into()),
            ..Default::default()
        };
        let p = kv_params(3, timeout, Some(&props), None).unwrap();
        assert_eq!((p.r, p.w, p.pr, p.pw), (3, 1, 0, 1));
        let p = kv_params(3, timeout, Some(&props), Some("r=1&w=quorum")).unwrap();
        assert_eq!((p.r, p.w, p.pr, p.pw), (1, 2, 0, 1));
    }

    #[test]
    fn kv_params_default_resolve_and_refuse() {
        let timeout = Duration::from_millis(2000);
        let defaults = kv_params(3, timeout, None, None).unwrap();
        assert_eq!(
            (
                defaults.r,
                defaults.w,
                defaults.pr,
                defaults.pw,
                defaults.timeout
            ),
            (2, 2, 0, 0, timeout)
        );
        let p = kv_params(3, timeout, None, Some("r=one&w=all&pw=2&timeout=50")).unwrap();
        assert_eq!(
            (p.r, p.w, p.pw, p.timeout),
            (1, 3, 2, Duration::from_millis(50))
        );
        for bad in [
            "w=4",
            "r=0",
            "w=most",
            "pr=3&r=2",
            "timeout=0",
            "timeout=60001",
            "colour=red",
            "w=1&w=all",
            "r=2&r=2",
        ] {
            let err = kv_params(3, timeout, None, Some(bad))
                .err()
                .unwrap_or_else(|| panic!("'{bad}' was accepted"));
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn bucket_and_key_are_decoded_exactly_once_from_the_raw_path() {
        let parse = |path: &str| bucket_and_key(&path.parse::<Uri>().unwrap());
        assert_eq!(
            parse("/kv/b/a%2Fb").unwrap(),
            (b"b".to_vec(), b"a/b".to_vec())
        );
        assert_eq!(
            parse("/kv/b%2F1/k").unwrap(),
            (b"b/1".to_vec(), b"k".to_vec())
        );
        assert_eq!(
            parse("/kv/b/%2525").unwrap(),
            (b"b".to_vec(), b"%25".to_vec())
        );
        assert_eq!(
            parse("/kv/b/100%25").unwrap(),
            (b"b".to_vec(), b"100%".to_vec())
        );
        assert_eq!(
            parse("/local/kv/%E2%9C%93/x").unwrap(),
            ("✓".as_bytes().to_vec(), b"x".to_vec())
        );
        assert!(
            parse("/kv/b/%25ZZ").is_ok(),
            "an escaped percent followed by ZZ is a valid key"
        );
        assert!(parse("/kv/b/%ZZ").is_err());
        assert!(parse("/kv/b/%FF").is_err());
    }

    #[tokio::test]
    async fn an_empty_bucket_or_key_is_a_bad_request_not_a_missing_endpoint() {
        let code = |e: ApiError| {
            (
                e.status.as_u16(),
                e.body["error"].as_str().unwrap_or_default().to_string(),
            )
        };
        assert_eq!(
            code(no_route("/kv/b/".parse().unwrap()).await),
            (400, "invalid_key".into())
        );
        assert_eq!(
            code(no_route("/kv//k".parse().unwrap()).await),
            (400, "invalid_bucket".into())
        );
        assert_eq!(
            code(no_route("/local/kv/b/".parse().unwrap()).await),
            (400, "invalid_key".into())
        );
        assert_eq!(
            code(no_route("/kv/b/k/extra".parse().unwrap()).await),
            (404, "not_found".into())
        );
        assert_eq!(
            code(no_route("/nowhere".parse().unwrap()).await),
            (404, "not_found".into())
        );
    }
}

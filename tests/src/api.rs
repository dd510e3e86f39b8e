//! Blocking helpers over the client HTTP API for the multi-process tests. They reuse the
//! node's own HTTP client (`chorus_api::client`, one kept-alive connection per node
//! per test thread) on a per-thread current-thread runtime, so a test reads like a script.
//! Every call is bounded by the client's timeout; nothing here retries or sleeps.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use chorus_api::client::{encode_segment, BaseUrl, HttpClient};
pub use chorus_api::CONTEXT_HEADER;
use hyper::Method;
use serde_json::Value;

pub use chorus_api::client::{kv_path, Response};
use chorus_api::placement::{LocalPartition, RingBody};
use chorus_api::{PropsAnswer, StatusBody};

/// Bound of one HTTP request (a coordinator answers within its own `timeout`, 2 s default).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

thread_local! {
    static RUNTIME: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a current-thread runtime");
    static CLIENTS: RefCell<HashMap<String, HttpClient>> = RefCell::new(HashMap::new());
}

/// One request to the node at `base` (`http://127.0.0.1:port`). `path` is sent as is (the
/// caller encodes it), so tests can send malformed escapes on purpose.
pub fn call(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, String> {
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let mut client = CLIENTS.with(|c| c.borrow_mut().remove(base)).map_or_else(
        || BaseUrl::parse(base).map(|b| HttpClient::new(b).with_timeout(REQUEST_TIMEOUT)),
        Ok,
    )?;
    let result = RUNTIME.with(|rt| {
        rt.block_on(client.request(method, path, headers, Bytes::copy_from_slice(body)))
    });
    // A server that refused a body without reading it (413) closes the connection after
    // answering; the next request must not be sent on it.
    let closing = result.as_ref().is_ok_and(|r| {
        r.status == 413
            || r.header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    });
    if !closing {
        CLIENTS.with(|c| c.borrow_mut().insert(base.to_string(), client));
    }
    result.map_err(|e| format!("{method_path}: {e}", method_path = path))
}

pub fn get(base: &str, path: &str) -> Result<Response, String> {
    call(base, "GET", path, &[], b"")
}

/// `/kv/{bucket}/{key}?{query}` with both parts percent-encoded (`query` may be "").
pub fn kv(bucket: impl AsRef<[u8]>, key: impl AsRef<[u8]>, query: &str) -> String {
    let path = kv_path(bucket, key);
    if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    }
}

pub fn put(
    base: &str,
    bucket: &str,
    key: &str,
    value: &[u8],
    query: &str,
    context: Option<&str>,
) -> Result<Response, String> {
    let headers: Vec<(&str, &str)> = context.map(|c| (CONTEXT_HEADER, c)).into_iter().collect();
    call(base, "PUT", &kv(bucket, key, query), &headers, value)
}

/// A PUT that must succeed (204); returns the new context.
pub fn put_ok(
    base: &str,
    bucket: &str,
    key: &str,
    value: &[u8],
    query: &str,
    context: Option<&str>,
) -> String {
    let r = put(base, bucket, key, value, query, context)
        .unwrap_or_else(|e| panic!("PUT {bucket}/{key}: {e}"));
    assert_eq!(
        r.status,
        204,
        "PUT {bucket}/{key} on {base}: {}",
        r.error_message()
    );
    r.header(CONTEXT_HEADER)
        .expect("a PUT answers with a context")
        .to_string()
}

pub fn get_kv(base: &str, bucket: &str, key: &str, query: &str) -> Result<Response, String> {
    get(base, &kv(bucket, key, query))
}

/// GET with `Accept: application/json`: (status, context, sibling values).
pub fn get_json(
    base: &str,
    bucket: &str,
    key: &str,
    query: &str,
) -> Result<(u16, String, Vec<Vec<u8>>), String> {
    let r = call(
        base,
        "GET",
        &kv(bucket, key, query),
        &[("accept", "application/json")],
        b"",
    )?;
    if r.status != 200 && r.status != 300 && r.status != 404 {
        return Err(format!(
            "GET {bucket}/{key}: HTTP {} {}",
            r.status,
            r.error_message()
        ));
    }
    let json = r.json()?;
    let context = json["context"].as_str().unwrap_or_default().to_string();
    Ok((r.status, context, siblings(&json)))
}

pub fn delete(
    base: &str,
    bucket: &str,
    key: &str,
    query: &str,
    context: Option<&str>,
) -> Result<Response, String> {
    let headers: Vec<(&str, &str)> = context.map(|c| (CONTEXT_HEADER, c)).into_iter().collect();
    call(base, "DELETE", &kv(bucket, key, query), &headers, b"")
}

/// The decoded sibling values of a `{"siblings": [{"value": base64}, ...]}` body, sorted.
pub fn siblings(json: &Value) -> Vec<Vec<u8>> {
    let body: chorus_api::SiblingsBody =
        serde_json::from_value(json.clone()).expect("a chorus read answer");
    let mut out: Vec<Vec<u8>> = body
        .siblings
        .into_iter()
        .filter(|s| !s.deleted.unwrap_or(false))
        .map(|s| s.value)
        .collect();
    out.sort();
    out
}

/// This node's own replica of a key (`/local/kv`), `None` on 404.
pub fn local_kv(base: &str, bucket: &str, key: &str) -> Result<Option<Value>, String> {
    let r = get(
        base,
        &format!(
            "/local/kv/{}/{}",
            encode_segment(bucket),
            encode_segment(key)
        ),
    )?;
    match r.status {
        200 => r.json().map(Some),
        404 => Ok(None),
        other => Err(format!("/local/kv: HTTP {other} {}", r.error_message())),
    }
}

/// What one node's replica holds for a key, in short: None, Some(Tombstone) or Some(Values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Local {
    Tombstone,
    Values(Vec<Vec<u8>>),
}

pub fn local(base: &str, bucket: &str, key: &str) -> Result<Option<Local>, String> {
    Ok(local_kv(base, bucket, key)?.map(|j| {
        if j["tombstone"].as_bool().unwrap_or(false) {
            Local::Tombstone
        } else {
            Local::Values(siblings(&j))
        }
    }))
}

pub fn status(base: &str) -> Result<StatusBody, String> {
    let r = get(base, "/status")?;
    if r.status != 200 {
        return Err(format!("/status: HTTP {}", r.status));
    }
    StatusBody::parse(&r.body)
}

/// Members as this node sees them: name -> (state, generation).
pub fn members(base: &str) -> Result<HashMap<String, (String, u64)>, String> {
    Ok(status(base)?
        .members
        .into_iter()
        .map(|m| (m.name, (m.state, m.generation)))
        .collect())
}

/// `PUT /buckets/{bucket}/props` with `body` sent as it is (tests send malformed ones).
pub fn put_props(base: &str, bucket: &str, body: &str) -> Result<Response, String> {
    let path = format!("/buckets/{}/props", encode_segment(bucket));
    call(base, "PUT", &path, &[], body.as_bytes())
}

/// `GET /buckets/{bucket}/props`.
pub fn props(base: &str, bucket: &str) -> Result<PropsAnswer, String> {
    let r = get(base, &format!("/buckets/{}/props", encode_segment(bucket)))?;
    if r.status != 200 {
        return Err(format!(
            "props of {bucket}: HTTP {} {}",
            r.status,
            r.error_message()
        ));
    }
    serde_json::from_slice(&r.body).map_err(|e| format!("props of {bucket}: {e}"))
}

/// The preference list of a key: (name, primary) in order.
pub fn preference_list(base: &str, bucket: &str, key: &str) -> Result<Vec<(String, bool)>, String> {
    let r = get(
        base,
        &format!("/ring/{}/{}", encode_segment(bucket), encode_segment(key)),
    )?;
    let ring: RingBody = serde_json::from_slice(&r.body).map_err(|e| format!("/ring: {e}"))?;
    Ok(ring
        .preference_list
        .into_iter()
        .map(|o| (o.name, o.primary))
        .collect())
}

/// The N primary owners of a key.
pub fn owners(base: &str, bucket: &str, key: &str) -> Result<Vec<String>, String> {
    Ok(preference_list(base, bucket, key)?
        .into_iter()
        .filter(|(_, p)| *p)
        .map(|(n, _)| n)
        .collect())
}

/// `/local/partitions`: (id, role, keys, merkle_root).
pub fn partitions(base: &str) -> Result<Vec<(u64, String, u64, String)>, String> {
    let r = get(base, "/local/partitions")?;
    let list: Vec<LocalPartition> =
        serde_json::from_slice(&r.body).map_err(|e| format!("/local/partitions: {e}"))?;
    Ok(list
        .into_iter()
        .map(|p| (u64::from(p.id), p.role, p.keys, p.merkle_root))
        .collect())
}

/// The sum of every sample of a Prometheus metric (`chorus_<name>`, any labels; counters
/// are also matched with their `_total` suffix).
pub fn metric(base: &str, name: &str) -> Result<f64, String> {
    let r = get(base, "/metrics")?;
    let text = String::from_utf8_lossy(&r.body).to_string();
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let metric_name = series.split('{').next().unwrap_or_default();
        if metric_name == name || metric_name == format!("{name}_total") {
            sum += value
                .parse::<f64>()
                .map_err(|e| format!("metric {line}: {e}"))?;
        }
    }
    Ok(sum)
}

/// Asserts an error answer: the status, and a JSON body `{"error": code, "message": ...}`.
pub fn assert_error(r: &Response, status: u16, code: &str, what: &str) {
    assert_eq!(
        r.status,
        status,
        "{what}: expected HTTP {status}, got {} {:?}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    let json = r
        .json()
        .unwrap_or_else(|e| panic!("{what}: {e}: {:?}", String::from_utf8_lossy(&r.body)));
    assert_eq!(json["error"].as_str(), Some(code), "{what}: {json}");
    assert!(
        json["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: no message in {json}"
    );
}

//! The HTTP face of key listing: `GET /kv/{bucket}?keys=true&limit=N&after=CURSOR`.
//! Parses and bounds the parameters, runs one page of the coverage walk
//! (`chorus_core::listing`) and writes the page as JSON. Holds no listing logic itself.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chorus_api::{KeyPageBody, ListedKey};

use crate::server::http_common::{decode_segment, measured, ApiError, MAX_TIMEOUT_MS};
use crate::server::node::Node;
use chorus_core::listing::{Cursor, KeyPage, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};

struct ListParams {
    limit: usize,
    from: Cursor,
    timeout: Duration,
}

pub async fn kv_list(
    State(node): State<Arc<Node>>,
    uri: Uri,
    RawQuery(query): RawQuery,
) -> Response {
    measured(&node.clone(), "list", async move {
        let raw = uri
            .path()
            .strip_prefix("/kv/")
            .ok_or_else(|| ApiError::bad_request("invalid_path", "expected /kv/{bucket}"))?;
        let bucket = decode_segment("bucket", raw)?;
        let ring_size = node.coordinator.view().ring.ring_size();
        let p = list_params(query.as_deref(), ring_size, node.limits.default_timeout)?;
        let page = node
            .coordinator
            .list_keys(&bucket, p.from, p.limit, p.timeout)
            .await;
        Ok(Json(page_json(&page)).into_response())
    })
    .await
}

fn list_params(
    query: Option<&str>,
    ring_size: u32,
    default_timeout: Duration,
) -> Result<ListParams, ApiError> {
    let bad = |message: String| ApiError::bad_request("invalid_parameter", message);
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| bad(format!("cannot parse the query string: {e}")))?;
    let mut params = ListParams {
        limit: DEFAULT_LIST_LIMIT,
        from: Cursor::default(),
        timeout: default_timeout,
    };
    let mut listing = false;
    let mut seen = Vec::new();
    for (name, value) in pairs {
        if seen.contains(&name) {
            return Err(bad(format!("parameter '{name}' is given more than once")));
        }
        seen.push(name.clone());
        match name.as_str() {
            "keys" if value == "true" => listing = true,
            "keys" => return Err(bad(format!("keys: '{value}' (only keys=true lists)"))),
            "limit" => {
                params.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
                    .ok_or_else(|| {
                        bad(format!("limit: '{value}' is not in 1..={MAX_LIST_LIMIT}"))
                    })?
            }
            "after" => {
                params.from = Cursor::decode(&value, ring_size)
                    .map_err(|e| ApiError::bad_request("invalid_cursor", e.to_string()))?
            }
            "timeout" => {
                let ms: u64 = value
                    .parse()
                    .ok()
                    .filter(|ms| (1..=MAX_TIMEOUT_MS).contains(ms))
                    .ok_or_else(|| bad(format!("timeout: '{value}' is not a number of milliseconds in 1..={MAX_TIMEOUT_MS}")))?;
                params.timeout = Duration::from_millis(ms);
            }
            other => return Err(bad(format!("unknown parameter '{other}' for a listing"))),
        }
    }
    if !listing {
        return Err(bad(
            "GET /kv/{bucket} lists keys only with ?keys=true".into()
        ));
    }
    Ok(params)
}

fn page_json(page: &KeyPage) -> KeyPageBody {
    KeyPageBody {
        keys: page.keys.iter().map(|k| ListedKey::new(k)).collect(),
        next: page.next.as_ref().map(Cursor::encode),
        complete: page.uncovered.is_empty(),
        uncovered_partitions: page.uncovered.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_parameters_are_bounded_and_checked() {
        let t = Duration::from_millis(2000);
        let p = list_params(Some("keys=true"), 64, t).unwrap();
        assert_eq!(
            (p.limit, p.from, p.timeout),
            (DEFAULT_LIST_LIMIT, Cursor::default(), t)
        );
        let cursor = Cursor {
            partition: 3,
            after: Some(b"k".to_vec()),
        };
        let q = format!("keys=true&limit=10000&after={}&timeout=5", cursor.encode());
        let p = list_params(Some(&q), 64, t).unwrap();
        assert_eq!(
            (p.limit, p.from, p.timeout),
            (10_000, cursor, Duration::from_millis(5))
        );
        for bad in [
            None,
            Some("keys=false"),
            Some("keys=true&limit=0"),
            Some("keys=true&limit=10001"),
            Some("keys=true&after=%21"),
            Some("keys=true&keys=true"),
            Some("keys=true&r=2"),
        ] {
            assert!(list_params(bad, 64, t).is_err(), "{bad:?}");
        }
    }
}

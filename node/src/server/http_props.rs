//! Bucket properties over HTTP (`GET`/`PUT /buckets/{bucket}/props`).
//!
//! Must not: hold the properties' rules (validation, resolution, storage and the loop that
//! keeps every node's cache in step are `chorus_core::bucket_props`), or apply them to
//! requests (`http.rs` does).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::server::http::{decode_segment, measured, read_body, ApiError};
use crate::server::node::Node;
use chorus_core::bucket_props::{BucketProps, StampedProps};

fn bucket_of(uri: &Uri) -> Result<Vec<u8>, ApiError> {
    let raw = uri
        .path()
        .strip_prefix("/buckets/")
        .and_then(|rest| rest.strip_suffix("/props"))
        .ok_or_else(|| ApiError::bad_request("invalid_path", "expected /buckets/{bucket}/props"))?;
    decode_segment("bucket", raw)
}

fn version_json(v: &StampedProps) -> Value {
    json!({"props": v.props, "stamp": v.stamp, "set_by": v.set_by})
}

/// The winning properties, the node defaults they leave, and any concurrent change that
/// lost (until a change is written over it).
fn props_json(bucket: &[u8], versions: &[StampedProps], n: usize) -> Value {
    let winner = versions.first();
    let props = winner.map(|v| v.props.clone()).unwrap_or_default();
    json!({
        "bucket": String::from_utf8_lossy(bucket),
        "props": props,
        "stamp": winner.map(|v| v.stamp),
        "set_by": winner.map(|v| v.set_by.clone()),
        "defaults": {"r": n / 2 + 1, "w": n / 2 + 1, "pr": 0, "pw": 0},
        "conflicts": versions.iter().skip(1).map(version_json).collect::<Vec<_>>(),
    })
}

pub async fn props_get(State(node): State<Arc<Node>>, uri: Uri) -> Response {
    measured(&node.clone(), "props", async move {
        let bucket = bucket_of(&uri)?;
        let timeout = node.limits.default_timeout;
        let (versions, _) = node.coordinator.read_bucket_props(&bucket, timeout).await?;
        Ok(Json(props_json(&bucket, &versions, node.coordinator.n())).into_response())
    })
    .await
}

pub async fn props_put(State(node): State<Arc<Node>>, uri: Uri, body: Body) -> Response {
    measured(&node.clone(), "props", async move {
        let bucket = bucket_of(&uri)?;
        let body = read_body(&node, body).await?;
        let props: BucketProps = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "invalid_props",
                format!("the body is not a properties object (r, w, pr, pw, max_siblings): {e}"),
            )
        })?;
        let n = node.coordinator.n();
        props
            .validate(n)
            .map_err(|e| ApiError::bad_request("invalid_props", e))?;
        let timeout = node.limits.default_timeout;
        let written = node
            .coordinator
            .write_bucket_props(&bucket, props, timeout)
            .await?;
        publish_digest(&node);
        Ok((StatusCode::OK, Json(props_json(&bucket, &[written], n))).into_response())
    })
    .await
}

fn publish_digest(node: &Node) {
    chorus_core::bucket_props::publish_digest(&node.coordinator, &node.gossip);
}

//! Bucket properties over HTTP (`GET`/`PUT /buckets/{bucket}/props`) and the loop that
//! keeps this node's cache of them in step with the cluster: it gossips the cache's
//! digest and reloads the table (listed and read at a quorum) when a live member's
//! digest differs, and at least every [`RELOAD_EVERY`].
//!
//! Must not: hold the properties' rules (validation, resolution and storage are
//! `chorus_core::bucket_props`), or apply them to requests (`http.rs` does).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::server::http::{decode_segment, measured, read_body, ApiError};
use crate::server::node::Node;
use chorus_core::bucket_props::{BucketProps, StampedProps};

/// Gossiped key-value: the digest of a node's properties table.
pub const PROPS_KV: &str = "bucket_props";
/// A node reloads the table at least this often, even when every digest agrees.
const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// Digests are compared this often.
const CHECK_EVERY: Duration = Duration::from_secs(1);

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
    node.gossip
        .set_local_kv(PROPS_KV, &node.coordinator.props().digest());
}

/// Keeps the cache in step: reload when a live member gossips another digest, and every
/// [`RELOAD_EVERY`] (a change can land on a quorum that missed this node's cache).
pub async fn sync_loop(node: Arc<Node>) {
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    let mut loaded_at: Option<tokio::time::Instant> = None;
    loop {
        ticker.tick().await;
        publish_digest(&node);
        let mine = node.coordinator.props().digest();
        let differs = node.gossip.members().iter().any(|m| {
            !m.is_self
                && m.state == chorus_gossip::MemberState::Alive
                && m.kv.get(PROPS_KV).is_some_and(|d| *d != mine)
        });
        let due = loaded_at.is_none_or(|t| t.elapsed() >= RELOAD_EVERY);
        if !differs && !due {
            continue;
        }
        match node
            .coordinator
            .load_bucket_props(node.limits.default_timeout)
            .await
        {
            Ok(table) => {
                node.coordinator.props().replace(table);
                loaded_at = Some(tokio::time::Instant::now());
                publish_digest(&node);
            }
            Err(e) => tracing::debug!("bucket properties not reloaded: {e}"),
        }
    }
}

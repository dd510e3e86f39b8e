//! Bucket properties over HTTP (`GET`/`PUT /buckets/{bucket}/props`): the typed bodies of
//! `chorus_api::props` in and out, converted to and from the core's `BucketProps`.
//!
//! Must not: hold the properties' rules (validation, storage and the loop that keeps every
//! node's cache in step are `chorus_core::bucket_props`), or apply them to
//! requests (`chorus_core::request_options` does, for HTTP and RESP alike).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::server::http_common::{decode_segment, measured, read_body, ApiError};
use crate::server::node::Node;
use chorus_api::{PropsAnswer, PropsBody, PropsDefaults, PropsVersion};
use chorus_core::bucket_props::{BucketProps, StampedProps};

fn bucket_of(uri: &Uri) -> Result<Vec<u8>, ApiError> {
    let raw = uri
        .path()
        .strip_prefix("/buckets/")
        .and_then(|rest| rest.strip_suffix("/props"))
        .ok_or_else(|| ApiError::bad_request("invalid_path", "expected /buckets/{bucket}/props"))?;
    decode_segment("bucket", raw)
}

/// The wire form of a bucket's properties.
fn body_of(props: &BucketProps) -> PropsBody {
    PropsBody {
        max_siblings: props.max_siblings,
        pr: props.pr.clone(),
        pw: props.pw.clone(),
        r: props.r.clone(),
        ttl: props.ttl,
        w: props.w.clone(),
        unknown: Default::default(),
    }
}

/// The properties a `PUT` body sets (not yet validated against N); a field the node does
/// not know is refused.
fn props_of(body: PropsBody) -> Result<BucketProps, String> {
    body.check_fields()?;
    Ok(BucketProps {
        r: body.r,
        w: body.w,
        pr: body.pr,
        pw: body.pw,
        max_siblings: body.max_siblings,
        ttl: body.ttl,
    })
}

/// The winning properties, the node defaults they leave, and any concurrent change that
/// lost (until a change is written over it).
fn answer(bucket: &[u8], versions: &[StampedProps], n: usize) -> PropsAnswer {
    let winner = versions.first();
    let version = |v: &StampedProps| PropsVersion {
        props: body_of(&v.props),
        set_by: v.set_by.clone(),
        stamp: v.stamp,
    };
    PropsAnswer {
        bucket: String::from_utf8_lossy(bucket).into_owned(),
        conflicts: versions.iter().skip(1).map(version).collect(),
        defaults: PropsDefaults {
            pr: 0,
            pw: 0,
            r: n / 2 + 1,
            w: n / 2 + 1,
        },
        props: winner.map(|v| body_of(&v.props)).unwrap_or_default(),
        set_by: winner.map(|v| v.set_by.clone()),
        stamp: winner.map(|v| v.stamp),
    }
}

pub async fn props_get(State(node): State<Arc<Node>>, uri: Uri) -> Response {
    measured(&node.clone(), "props", async move {
        let bucket = bucket_of(&uri)?;
        let timeout = node.limits.default_timeout;
        let (versions, _) = node.coordinator.read_bucket_props(&bucket, timeout).await?;
        Ok(Json(answer(&bucket, &versions, node.coordinator.n())).into_response())
    })
    .await
}

pub async fn props_put(State(node): State<Arc<Node>>, uri: Uri, body: Body) -> Response {
    measured(&node.clone(), "props", async move {
        let bucket = bucket_of(&uri)?;
        let body = read_body(&node, body).await?;
        let props = serde_json::from_slice::<PropsBody>(&body)
            .map_err(|e| e.to_string())
            .and_then(props_of)
            .map_err(|e| {
                ApiError::bad_request(
                    "invalid_props",
                    format!("the body is not a properties object (r, w, pr, pw, max_siblings, ttl): {e}"),
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
        Ok((StatusCode::OK, Json(answer(&bucket, &[written], n))).into_response())
    })
    .await
}

fn publish_digest(node: &Node) {
    chorus_core::props_sync::publish_digest(&node.coordinator, &node.gossip);
}

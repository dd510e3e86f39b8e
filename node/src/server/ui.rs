//! The live dashboard: `GET /ui`, one self-contained page (HTML, CSS and JavaScript
//! embedded in the binary from `ui/dashboard.html`), and `GET /ui/state`, the JSON it
//! polls once a second: this node's view of the members, the ring, healing and traffic.
//! Also the sampler that feeds the traffic history (`ui/history.rs`) once a second.
//!
//! Must not: scan keys or touch storage (every figure comes from memory the node already
//! keeps: membership, ring, transfer progress, hint counts, healing records, metrics), call
//! other nodes, change any state, or make the page load anything from outside.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::server::history::Sample;
use crate::server::node::Node;
use chorus_api::status::MemberStatus;
use chorus_core::coordinator::targets;
use chorus_core::metrics::OpTotals;
use chorus_core::storage::Storage;
use chorus_core::view::ClusterView;

/// Gossiped key under which a node publishes its HTTP address, so every page can link to
/// the same page on every other node.
pub const HTTP_KV: &str = "http";

const DASHBOARD: &str = include_str!("ui/dashboard.html");

/// Inline script and style only; the page may fetch only from the node that served it.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'";

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/ui", get(page))
        .route("/ui/state", get(state))
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        DASHBOARD,
    )
}

async fn state(State(node): State<Arc<Node>>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(state_json(&node)),
    )
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Everything the page shows; see docs/api.md, "`/ui/state` fields".
pub fn state_json(node: &Node) -> Value {
    let status = node.status();
    let view = node.coordinator.view();
    let hints_held = node.replica.storage().hint_owners().unwrap_or_default();
    let members: Vec<Value> = status
        .members
        .iter()
        .map(|m| member_json(m, &hints_held))
        .collect();
    let series = node
        .history
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .series();
    json!({
        "node": node.name,
        "time_ms": unix_ms(),
        "n": status.n,
        "ring_size": status.ring_size,
        "phi_threshold": node.gossip.phi_threshold(),
        "repairing": status.repairing,
        "storage_failure": status.storage_failure,
        "members": members,
        "ring": ring_json(&view, &node.healer.transfer_progress()),
        "transfers": status.transfers,
        "rebuild": status.rebuild,
        "health": health_json(node, &hints_held),
        "traffic": {"interval_ms": SAMPLE_EVERY.as_millis() as u64, "ops": OpTotals::OPS, "series": series},
    })
}

/// A member of `/status`, with the hints this node holds for it and its dashboard's URL.
fn member_json(m: &MemberStatus, hints_held: &[(String, u64)]) -> Value {
    let name = m.name.as_str();
    let kv = |key: &str| m.kv.get(key).cloned();
    let number = |key: &str| kv(key).and_then(|v| v.parse::<u64>().ok());
    let mut out = json!(m);
    let extra = json!({
        "hints_held_here": hints_held.iter().find(|(o, _)| o == name).map_or(0, |(_, n)| *n),
        "pending_hints": number(chorus_core::healing::PENDING_HINTS_KEY),
        "pending_transfer": number(chorus_core::healing::PENDING_TRANSFER_KEY),
        "storage": kv(chorus_core::membership::STORAGE_KV),
        "http": kv(HTTP_KV),
        "ui_url": kv(HTTP_KV).and_then(|http| ui_url(&http, &m.address)),
    });
    if let (Some(out), Value::Object(extra)) = (out.as_object_mut(), extra) {
        out.extend(extra);
    }
    out
}

/// `http://<http address>/ui`; a wildcard bind address (0.0.0.0, ::) is replaced by the
/// host of the member's QUIC address, which peers do reach.
fn ui_url(http: &str, quic: &str) -> Option<String> {
    let mut http: std::net::SocketAddr = http.parse().ok()?;
    if http.ip().is_unspecified() {
        if let Ok(quic) = quic.parse::<std::net::SocketAddr>() {
            http.set_ip(quic.ip());
        }
    }
    Some(format!("http://{http}/ui"))
}

/// Every partition with its primaries, the fallbacks standing in for unreachable ones (as
/// the coordinator picks them), and the keys this node still has to hand over for it.
fn ring_json(view: &ClusterView, transfers: &HashMap<u32, u64>) -> Value {
    let partitions: Vec<Value> = (0..view.ring.ring_size())
        .map(|p| {
            let standing_in: Vec<Value> = targets(view, p)
                .into_iter()
                .filter_map(|t| {
                    t.hint_for
                        .map(|owner| json!({"fallback": t.name, "for": owner}))
                })
                .collect();
            json!({
                "id": p,
                "owners": view.ring.primaries(p),
                "standing_in": standing_in,
                "transfer_keys_left": transfers.get(&p),
            })
        })
        .collect();
    json!({"members": view.ring.members(), "partitions": partitions})
}

fn health_json(node: &Node, hints_held: &[(String, u64)]) -> Value {
    let m = &node.metrics;
    let disagreeing: Vec<Value> = node
        .healer
        .disagreements()
        .into_iter()
        .map(|(partition, peer, segments)| json!({"partition": partition, "peer": peer, "segments": segments}))
        .collect();
    json!({
        "hints_held": hints_held.iter().map(|(owner, hints)| json!({"owner": owner, "hints": hints})).collect::<Vec<_>>(),
        "hints_queued_total": m.hints_queued.get(),
        "hints_delivered_total": m.hints_delivered.get(),
        "hints_dropped_total": m.hints_dropped.get(),
        "aae_exchanges_total": m.aae_exchanges.get(),
        "aae_keys_repaired_total": m.aae_keys_repaired.get(),
        "read_repairs_total": m.read_repairs.get(),
        "disagreeing_partitions": disagreeing,
        "tombstones_awaiting_reap": node.healer.tombstones_awaiting_reap(),
    })
}

/// How often the sampler records the traffic history.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Records one [`Sample`] of the node's figures every [`SAMPLE_EVERY`], forever.
pub async fn sample_loop(node: Arc<Node>) {
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticker.tick().await;
        let sample = sample(&node, unix_ms());
        node.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(sample);
    }
}

fn sample(node: &Node, t_ms: u64) -> Sample {
    let m = &node.metrics;
    let hints = node.replica.storage().hint_owners().unwrap_or_default();
    Sample {
        t_ms,
        ops: std::array::from_fn(|i| m.ops.snapshot(i)),
        quorum_failures: std::array::from_fn(|i| m.quorum_failures_of(OpTotals::OPS[i])),
        aae_exchanges: m.aae_exchanges.get(),
        aae_keys_repaired: m.aae_keys_repaired.get(),
        hints_queued: m.hints_queued.get(),
        hints_delivered: m.hints_delivered.get(),
        hints_pending: hints.iter().map(|(_, n)| n).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ui_urls_replace_a_wildcard_host_with_the_quic_host() {
        assert_eq!(
            ui_url("127.0.0.1:8001", "127.0.0.1:7001").as_deref(),
            Some("http://127.0.0.1:8001/ui")
        );
        assert_eq!(
            ui_url("0.0.0.0:8001", "10.0.0.5:7001").as_deref(),
            Some("http://10.0.0.5:8001/ui")
        );
        assert_eq!(
            ui_url("[::]:8001", "[::1]:7001").as_deref(),
            Some("http://[::1]:8001/ui")
        );
        assert_eq!(ui_url("nonsense", "127.0.0.1:7001"), None);
    }

    #[test]
    fn the_page_is_self_contained() {
        for outside in ["http://", "https://", "//cdn", "@import", "src=\""] {
            assert!(
                !DASHBOARD.contains(outside),
                "dashboard.html refers to {outside}"
            );
        }
    }
}

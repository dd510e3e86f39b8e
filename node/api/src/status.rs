//! The body of `GET /status`: the answering node, its members as it sees them, and its
//! transfers and rebuild ([`StatusBody`]).
//!
//! Owns the wire form, read and written by the same types: the node serializes them, the
//! CLI, tools and tests parse them. Fields are declared in alphabetical order, so a body
//! serializes byte for byte as the `json!` maps it replaced. Fields nodes added after the
//! first build default when absent, so an older node's answer still parses.
//! Must not: compute any of it (the node's `Node::status` does).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusBody {
    /// Every member this node knows, itself included.
    pub members: Vec<MemberStatus>,
    /// The replication factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// The answering node's name.
    pub node: String,
    /// Why this node's last tombstone-reaping round was paused (a removed member that may
    /// return with data, an unreachable member, one with data to hand over); `null` when
    /// reaping runs.
    #[serde(default)]
    pub reaping_paused: Option<String>,
    #[serde(default)]
    /// This node's partition streams.
    pub rebuild: RebuildStatus,
    /// Whether this node runs `--repair` and has not yet found its partitions equal to
    /// the other owners'.
    #[serde(default)]
    pub repairing: bool,
    /// Partitions in the ring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_size: Option<u32>,
    /// Why this node's storage failed, `null` while it works.
    #[serde(default)]
    pub storage_failure: Option<String>,
    /// Partitions this node still has to hand over to their new owners.
    #[serde(default)]
    pub transfers: Vec<Transfer>,
}

/// One member as the answering node sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Its QUIC address.
    pub address: String,
    /// Grows on every restart.
    pub generation: u64,
    #[serde(default)]
    /// The member's latest heartbeat counter.
    pub heartbeat: u64,
    /// Since the answering node last saw its heartbeat rise; `null` for itself.
    pub heartbeat_age_ms: Option<u64>,
    #[serde(default)]
    /// Whether this entry is the answering node.
    pub is_self: bool,
    /// What it gossips about itself (pending hints, storage state, its HTTP address, ...).
    #[serde(default)]
    pub kv: BTreeMap<String, String>,
    /// The member's name.
    pub name: String,
    /// Suspicion of failure; an infinite phi is sent as `f64::MAX` (JSON has no infinity).
    pub phi: f64,
    /// Whether the answering node can reach it (absent in old answers: assumed reachable).
    #[serde(default = "reachable_by_default")]
    pub reachable: bool,
    /// Removed by an operator, and its data may still come back: no tombstone is reaped
    /// until it returns or is removed again with `--data-lost`. Its state is `left`.
    #[serde(default)]
    pub removed: bool,
    /// Its share of the ring's partitions, 0..=1.
    pub ring_share: f64,
    /// `alive`, `suspect`, `down`, `leaving` or `left`.
    pub state: String,
}

fn reachable_by_default() -> bool {
    true
}

/// A partition this node still has to hand over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Keys still to hand over.
    pub keys_left: u64,
    /// The partition being handed over.
    pub partition: u32,
}

/// This node's partition streams (a rebuild after its data was lost or it joined).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RebuildStatus {
    /// Bytes streamed so far, all partitions together.
    pub bytes_done: u64,
    /// Seconds left at the rate seen so far; `null` when nothing streams or no rate is
    /// known yet.
    #[serde(default)]
    pub eta_s: Option<f64>,
    /// Keys streamed so far, all partitions together.
    pub keys_done: u64,
    /// The pending partitions with their progress.
    pub partitions: Vec<RebuildPartition>,
    /// Partitions queued or streaming.
    pub partitions_pending: u64,
}

/// One partition queued or streaming.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildPartition {
    /// Bytes of this partition streamed so far.
    pub bytes_done: u64,
    /// Keys of this partition streamed so far.
    pub keys_done: u64,
    /// The source's key count at its last page (0 before the first).
    pub keys_total: u64,
    /// The partition.
    pub partition: u32,
    /// The owner it streams from, `null` while queued.
    pub peer: Option<String>,
    /// Whether it is streaming now (else queued).
    pub streaming: bool,
}

impl StatusBody {
    /// Parses a `/status` answer.
    pub fn parse(body: &[u8]) -> Result<StatusBody, String> {
        serde_json::from_slice(body).map_err(|e| format!("not a chorus /status answer: {e}"))
    }

    /// The member called `name`, if this node lists it.
    pub fn member(&self, name: &str) -> Option<&MemberStatus> {
        self.members.iter().find(|m| m.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_round_trips_in_the_shape_nodes_send() {
        let text = r#"{"members":[{"address":"127.0.0.1:7001","generation":3,"heartbeat":9,"heartbeat_age_ms":null,"is_self":true,"kv":{"http":"127.0.0.1:8001"},"name":"n1","phi":0.0,"reachable":true,"removed":false,"ring_share":0.5,"state":"alive"}],"n":3,"node":"n1","reaping_paused":null,"rebuild":{"bytes_done":0,"eta_s":null,"keys_done":0,"partitions":[],"partitions_pending":0},"repairing":false,"ring_size":64,"storage_failure":null,"transfers":[{"keys_left":4,"partition":7}]}"#;
        let status = StatusBody::parse(text.as_bytes()).unwrap();
        assert_eq!(status.member("n1").unwrap().kv["http"], "127.0.0.1:8001");
        assert_eq!(serde_json::to_string(&status).unwrap(), text);
    }

    #[test]
    fn an_older_answer_parses_and_one_without_members_does_not() {
        let old = r#"{"node":"n1","members":[{"name":"n2","address":"a","state":"down","phi":1.7976931348623157e308,"generation":1,"heartbeat_age_ms":5,"ring_share":1.0}]}"#;
        let status = StatusBody::parse(old.as_bytes()).unwrap();
        let n2 = status.member("n2").unwrap();
        assert!(n2.reachable && !n2.is_self && !n2.removed && n2.phi == f64::MAX);
        assert_eq!(status.reaping_paused, None);
        assert_eq!((status.n, status.rebuild.partitions_pending), (None, 0));
        let e = StatusBody::parse(br#"{"node":"n1"}"#).unwrap_err();
        assert!(e.contains("members"), "{e}");
    }
}

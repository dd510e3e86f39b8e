//! The bodies that say where data lives: `GET /ring/{bucket}/{key}` ([`RingBody`]) and
//! `GET /local/partitions` (a list of [`LocalPartition`]).
//!
//! Owns the wire form, read and written by the same types. Fields are declared in
//! alphabetical order, so a body serializes byte for byte as the `json!` maps it replaced.
//! Must not: compute placement (that is the ring's and the node's).

use serde::{Deserialize, Serialize};

/// `GET /ring/{bucket}/{key}`: the key's partition and its preference list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingBody {
    /// The partition the key falls in.
    pub partition: u32,
    /// The N primary owners first, in ring order, then the fallbacks.
    pub preference_list: Vec<Owner>,
}

/// One node of a preference list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Its QUIC address (empty when the answering node does not know it).
    pub address: String,
    /// The member's name.
    pub name: String,
    /// A primary owner, not a fallback.
    pub primary: bool,
    /// Whether the answering node can reach it (absent in old answers: assumed reachable).
    #[serde(default = "reachable_by_default")]
    pub reachable: bool,
}

fn reachable_by_default() -> bool {
    true
}

impl RingBody {
    /// The names of the primary owners, in order.
    pub fn primaries(&self) -> Vec<String> {
        self.preference_list
            .iter()
            .filter(|o| o.primary)
            .map(|o| o.name.clone())
            .collect()
    }
}

/// One partition this node holds (`GET /local/partitions` answers a list of them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalPartition {
    /// The partition's id.
    pub id: u32,
    /// Keys this node stores in it.
    pub keys: u64,
    /// The root of its Merkle tree, hex.
    pub merkle_root: String,
    /// `primary` or `fallback`: whether this node owns it or holds it for another.
    pub role: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_and_partition_bodies_keep_their_shape() {
        let ring = r#"{"partition":17,"preference_list":[{"address":"127.0.0.1:7002","name":"n2","primary":true,"reachable":true},{"address":"","name":"n1","primary":false,"reachable":false}]}"#;
        let body: RingBody = serde_json::from_str(ring).unwrap();
        assert_eq!(body.primaries(), vec!["n2"]);
        assert_eq!(serde_json::to_string(&body).unwrap(), ring);
        let old: RingBody = serde_json::from_str(
            r#"{"partition":1,"preference_list":[{"name":"n1","address":"a","primary":true}]}"#,
        )
        .unwrap();
        assert!(old.preference_list[0].reachable);
        let local = r#"[{"id":3,"keys":10,"merkle_root":"ab","role":"primary"}]"#;
        let parts: Vec<LocalPartition> = serde_json::from_str(local).unwrap();
        assert_eq!(serde_json::to_string(&parts).unwrap(), local);
    }
}

//! The gossip wire format: a versioned message enum and its MessagePack encoding.
//!
//! Owns: the shape of every message and the exact encoded size used for message
//! budgets. Must not: decide what to send (that is `membership`) or touch a socket.
//! A change of shape is a new `GossipMessage` variant, never an edit of `V1`.

use std::collections::BTreeMap;
use std::io;

use serde::{Deserialize, Serialize};

use crate::config::ClusterConfig;
use crate::error::GossipError;

/// Every gossip message, by format version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum GossipMessage {
    /// The first (and current) format.
    V1(MessageV1),
}

impl GossipMessage {
    /// The bytes to send: compact MessagePack (`rmp_serde::to_vec`). The bound
    /// `Config::max_message_bytes` holds for exactly this encoding.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("gossip messages always serialize")
    }

    /// Decodes bytes from `encode`. A receiver should refuse frames larger than its
    /// `max_message_bytes` before calling this.
    pub fn decode(bytes: &[u8]) -> Result<GossipMessage, GossipError> {
        rmp_serde::from_slice(bytes).map_err(|e| GossipError::Decode(e.to_string()))
    }

    /// The exact length of [`GossipMessage::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        encoded_len(self)
    }
}

/// A message of format 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageV1 {
    /// The sender's cluster settings: a receiver with other settings refuses the message.
    pub cluster: ClusterConfig,
    /// The sender.
    pub from: Peer,
    /// What it says.
    pub payload: Payload,
}

/// Who sent a message, with the sender's own stamp: every message is also a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The sender's member name.
    pub name: String,
    /// The sender's node-to-node address.
    pub address: String,
    /// The sender's own stamp when it sent the message.
    pub stamp: Stamp,
}

/// How recent one node's knowledge of a member is. Records compare by
/// (generation, tombstone, version); the heartbeat is merged by max within a generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// The member's incarnation.
    pub generation: u64,
    /// Whether the record is a tombstone (left or removed).
    pub tombstone: bool,
    /// The member's body version within the generation.
    pub version: u64,
    /// The member's heartbeat within the generation.
    pub heartbeat: u64,
}

impl Stamp {
    /// Order of member records: a newer generation replaces an older one; within a
    /// generation a tombstone beats anything live, then the owner's version decides.
    pub fn rank(&self) -> (u64, bool, u64) {
        (self.generation, self.tombstone, self.version)
    }
}

/// The body of a message: one step of a push-pull round, or a refusal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Payload {
    /// Round opener: the sender's stamps for the members in `digest`'s name range.
    Syn {
        /// The sender's stamps of one name range.
        digest: Digest,
    },
    /// Reply to `Syn`: what the Syn's sender lacks, and the names whose records the
    /// replier wants in full.
    SynAck {
        /// Records newer here than in the digest.
        updates: Vec<MemberUpdate>,
        /// Names whose records are newer in the digest.
        wants: Vec<String>,
    },
    /// Reply to `SynAck`: the wanted records.
    Ack {
        /// The records asked for.
        updates: Vec<MemberUpdate>,
    },
    /// The sender refused our message and merged nothing. `alive_members` (how many live
    /// members the refuser knows) lets the smaller side be the one that gives up.
    Reject {
        /// What was wrong.
        kind: RejectKind,
        /// The same, as a sentence for the refused node's operator.
        reason: String,
        /// Live members the refuser knows.
        alive_members: u32,
    },
}

/// Why a message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectKind {
    /// Different `ClusterConfig`.
    ClusterConfig,
    /// The sender's name is already taken, at the same generation, by another address.
    NameConflict,
}

/// Stamps for a contiguous slice of the sender's members, sorted by name: names in
/// [start, end) (None = unbounded) that the digest does not list are unknown to the
/// sender. Slicing keeps a digest within the message bound at any cluster size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Digest {
    /// First name of the range (inclusive); `None` from the first name.
    pub start: Option<String>,
    /// End of the range (exclusive); `None` to the last name.
    pub end: Option<String>,
    /// The sender's stamps of the members in the range, sorted by name.
    pub entries: Vec<DigestEntry>,
}

impl Digest {
    /// Whether `name` falls in this digest's range.
    pub fn covers(&self, name: &str) -> bool {
        self.start.as_deref().is_none_or(|s| name >= s)
            && self.end.as_deref().is_none_or(|e| name < e)
    }
}

/// One member's stamp in a digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestEntry {
    /// The member.
    pub name: String,
    /// How recent the sender's record of it is.
    pub stamp: Stamp,
}

/// One member's news. Without `body` it only advances the heartbeat of a generation the
/// receiver already knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberUpdate {
    /// The member.
    pub name: String,
    /// Its generation.
    pub generation: u64,
    /// Its heartbeat within that generation.
    pub heartbeat: u64,
    /// Its full record, when the receiver needs it.
    pub body: Option<MemberBody>,
}

/// What a member says about itself (all but the heartbeat, which changes every round).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberBody {
    /// Its node-to-node address.
    pub address: String,
    /// Bumped by the member itself on every change of its body; meaningless across
    /// generations.
    pub version: u64,
    /// Its status.
    pub status: Status,
    /// Its gossiped key-values.
    pub kv: BTreeMap<String, String>,
}

/// What a member said about itself (or, for `Removed`, what an operator said about it).
/// `Left` and `Removed` are tombstones: final for their generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// In the cluster, owning partitions.
    Alive,
    /// Leaving: owns nothing, still hands its data over.
    Leaving,
    /// Left the cluster.
    Left,
    /// Removed by an operator.
    Removed,
}

impl Status {
    /// `Left` or `Removed`.
    pub fn is_tombstone(self) -> bool {
        matches!(self, Status::Left | Status::Removed)
    }
}

impl DigestEntry {
    /// Exact encoded length, computed without serializing (digests are built every
    /// round from every member).
    pub(crate) fn encoded_len(&self) -> usize {
        // [name, [generation, tombstone, version, heartbeat]]
        1 + str_len(&self.name)
            + 1
            + uint_len(self.stamp.generation)
            + 1
            + uint_len(self.stamp.version)
            + uint_len(self.stamp.heartbeat)
    }
}

impl MemberUpdate {
    /// Exact encoded length; cheap for heartbeat-only updates, the bulk of every round.
    pub(crate) fn encoded_len(&self) -> usize {
        // [name, generation, heartbeat, body or nil]
        let body = self.body.as_ref().map_or(1, encoded_len);
        1 + str_len(&self.name) + uint_len(self.generation) + uint_len(self.heartbeat) + body
    }
}

/// MessagePack length of a string.
fn str_len(s: &str) -> usize {
    s.len()
        + match s.len() {
            0..32 => 1,
            32..256 => 2,
            256..65536 => 3,
            _ => 5,
        }
}

/// MessagePack length of an unsigned integer (rmp picks the smallest form).
fn uint_len(v: u64) -> usize {
    match v {
        0..128 => 1,
        128..256 => 2,
        256..65536 => 3,
        65536..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// Exact length of `encode`'s output for any serializable value, without allocating.
pub(crate) fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    rmp_serde::encode::write(&mut count, value).expect("gossip values always serialize");
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GossipMessage {
        let stamp = Stamp {
            generation: 7,
            tombstone: false,
            version: 3,
            heartbeat: 99,
        };
        GossipMessage::V1(MessageV1 {
            cluster: ClusterConfig::default(),
            from: Peer {
                name: "n1".into(),
                address: "127.0.0.1:7001".into(),
                stamp,
            },
            payload: Payload::SynAck {
                updates: vec![MemberUpdate {
                    name: "n2".into(),
                    generation: 1,
                    heartbeat: 5,
                    body: Some(MemberBody {
                        address: "127.0.0.1:7002".into(),
                        version: 2,
                        status: Status::Leaving,
                        kv: [("load".to_string(), "0.5".to_string())].into(),
                    }),
                }],
                wants: vec!["n3".into()],
            },
        })
    }

    #[test]
    fn roundtrip_and_exact_length() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(bytes.len(), m.encoded_len());
        assert_eq!(GossipMessage::decode(&bytes).unwrap(), m);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(matches!(
            GossipMessage::decode(&[0xc1, 0x00]),
            Err(GossipError::Decode(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn computed_lengths_match_the_encoder(
            name in "[a-z0-9]{0,300}",
            generation: u64,
            version: u64,
            heartbeat: u64,
            tombstone: bool,
            small in 0u64..70_000,
            with_body: bool,
        ) {
            for (g, h) in [(generation, heartbeat), (small, small / 3), (small * 1000, version)] {
                let entry = DigestEntry { name: name.clone(), stamp: Stamp { generation: g, tombstone, version, heartbeat: h } };
                proptest::prop_assert_eq!(entry.encoded_len(), encoded_len(&entry));
                let body = with_body.then(|| MemberBody { address: name.clone(), version, status: Status::Removed, kv: BTreeMap::new() });
                let update = MemberUpdate { name: name.clone(), generation: g, heartbeat: h, body };
                proptest::prop_assert_eq!(update.encoded_len(), encoded_len(&update));
            }
        }
    }

    #[test]
    fn digest_range_is_half_open() {
        let d = Digest {
            start: Some("b".into()),
            end: Some("d".into()),
            entries: vec![],
        };
        assert!(!d.covers("a") && d.covers("b") && d.covers("c") && !d.covers("d"));
        let all = Digest {
            start: None,
            end: None,
            entries: vec![],
        };
        assert!(all.covers("") && all.covers("zzz"));
    }
}

//! The messages nodes exchange over the transport, versioned so a node can refuse (rather
//! than misread) a peer speaking a format it does not know. Pure data; sending is in
//! `transport`, handling in `replica` and `server`.

use serde::{Deserialize, Serialize};

use chorus_gossip::GossipMessage;

use crate::causality::{Context, Dot};
use crate::object::{Object, Sibling};

pub use crate::object::MAX_MESSAGE_BYTES;

/// Everything on a stream is one `Envelope`. Adding a variant is compatible; changing one
/// needs a `V2`.
#[derive(Debug, Serialize, Deserialize)]
pub enum Envelope {
    V1(Message),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Message {
    /// One-way membership gossip.
    Gossip(GossipMessage),
    Request(Request),
    Response(Response),
}

/// A coordinator's (or healer's) request to one replica.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// The replica's state for a key.
    Get {
        #[serde(with = "serde_bytes")]
        bucket: Vec<u8>,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Be the coordinating replica of a write: mint a dot for `value` over `context`,
    /// persist, and return the resulting state and the dot (`Minted`), so the
    /// coordinator can replicate it and answer the client.
    /// `hint_for`, as for `Merge`: the unreachable primary a fallback stores this for
    /// (a fallback can be the minting replica too, and must then keep the hint).
    /// `over_current`: mint over the replica's own current state instead of `context`
    /// (which is then empty), so the value supersedes every version this replica holds
    /// under its key lock; a RESP `SET`, which carries no context, is written so.
    Coordinate {
        #[serde(with = "serde_bytes")]
        bucket: Vec<u8>,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        context: Context,
        value: Sibling,
        #[serde(default)]
        hint_for: Option<String>,
        #[serde(default)]
        over_current: bool,
        /// The bucket's `max_siblings` property, when it sets one: the replica refuses a
        /// write leaving more (never more than its own `--max-siblings`).
        #[serde(default)]
        max_siblings: Option<u32>,
    },
    /// Merge a state into the replica's own and persist before acknowledging. `hint_for`
    /// names the primary owner a fallback holds this write for (sloppy quorum).
    Merge {
        #[serde(with = "serde_bytes")]
        bucket: Vec<u8>,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        object: Object,
        hint_for: Option<String>,
    },
    /// Anti-entropy: the branch hashes of a partition's tree (the root is their hash).
    TreeBranches { partition: u32 },
    /// Anti-entropy: the leaf hashes under some branches.
    TreeLeaves { partition: u32, branches: Vec<u32> },
    /// Anti-entropy and transfer: every object in some segments of a partition.
    SegmentObjects { partition: u32, segments: Vec<u32> },
    /// Anti-entropy and transfer: merge many objects; answered with `Merged`.
    MergeBatch { objects: Vec<KeyedObject> },
    /// Reaping: drop each key whose state is still exactly this fully replicated tombstone.
    ReapBatch { objects: Vec<KeyedObject> },
    /// Key listing: up to `limit` live keys of `bucket` in `partition` after `after`
    /// (exclusive), in storage order; answered with `Keys` (see `listing`).
    ListKeys {
        partition: u32,
        #[serde(with = "serde_bytes")]
        bucket: Vec<u8>,
        after: Option<serde_bytes::ByteBuf>,
        limit: u32,
    },
    /// Rebuild: the objects of `partition` after `after` (a storage key, exclusive), in
    /// storage order, up to about `max_bytes`; answered with `Page` (see `rebuild`).
    PartitionPage {
        partition: u32,
        after: Option<serde_bytes::ByteBuf>,
        max_bytes: u32,
    },
    /// Rebuild: how many keys the replica holds of each partition; answered with `Counts`
    /// in the same order.
    KeyCounts { partitions: Vec<u32> },
    /// Several `Get`s and `Merge`s for one replica in one message (see `batching`), each
    /// answered as if it came alone, in order, in a `Batch` answer; a write in it is
    /// acknowledged only when every write in it is durable. Nothing else may be batched,
    /// and a batch holds at most `MAX_BATCH_REQUESTS`.
    Batch { requests: Vec<Request> },
}

/// Most requests one `Request::Batch` may carry.
pub const MAX_BATCH_REQUESTS: usize = 256;

/// An object with its bucket and key, for batches.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyedObject {
    #[serde(with = "serde_bytes")]
    pub bucket: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub object: Object,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// Answer to `Get`: `None` when the replica holds nothing for the key.
    Object(Option<Object>),
    /// Answer to `Coordinate`: the state now stored, which the coordinator replicates,
    /// and the dot the write got (the client's answer context adds it). It replaced the
    /// first build's `Stored(Object)` in the same place, so an older node fails to decode
    /// it rather than misreading it.
    Minted {
        object: Object,
        dot: Dot,
    },
    Branches(Vec<[u8; 32]>),
    Leaves(Vec<(u32, Vec<[u8; 32]>)>),
    Objects(Vec<KeyedObject>),
    /// Answer to `Merge` (1), `MergeBatch` (keys changed) and `ReapBatch` (keys dropped).
    Merged(usize),
    /// Answer to `ListKeys`: the keys, and the last key read when the replica stopped
    /// before the partition's end (the next request resumes after it).
    Keys {
        keys: Vec<serde_bytes::ByteBuf>,
        resume: Option<serde_bytes::ByteBuf>,
    },
    /// Answer to `PartitionPage`: objects in storage order, the last storage key read when
    /// the replica stopped before the partition's end (the next page starts after it),
    /// the stored bytes the page holds, and the keys the replica holds of the partition.
    Page {
        objects: Vec<KeyedObject>,
        resume: Option<serde_bytes::ByteBuf>,
        bytes: u64,
        keys: u64,
    },
    /// Answer to `KeyCounts`.
    Counts(Vec<u64>),
    /// The write was refused and nothing was stored (e.g. too many siblings).
    Refused {
        code: String,
        message: String,
    },
    /// The replica failed before it stored anything (a refused or malformed request, a
    /// storage error before the write, failed storage).
    Failed(String),
    /// Answer to `Batch`: one answer per request, in order.
    Batch(Vec<Response>),
    /// The replica failed after the write may have reached its journal (its fsync, or a
    /// storage error once the version was applied): a restart may replay it, so it may
    /// have minted. Not "nothing stored": a coordinator reads it as it reads no answer,
    /// and never has another replica mint the write.
    ///
    /// Added last (variants are encoded by name, so the others are unchanged). A node of
    /// an older build cannot decode a message holding it: `rpc::decode` fails on the
    /// unknown variant, and the caller's peers (`QuicPeers::call` in the binary) turn a
    /// `DecodeError` into `PeerError::NoAnswer`, the same safe reading.
    OutcomeUnknown(String),
}

pub fn encode(message: Message) -> Vec<u8> {
    rmp_serde::to_vec(&Envelope::V1(message)).expect("encoding to a Vec cannot fail")
}

/// A message from another node that could not be decoded (a different version, a bug,
/// or an attacker holding the cluster credential): it is refused, never half-applied.
#[derive(Debug, thiserror::Error)]
#[error("undecodable message ({len} bytes): {reason}")]
pub struct DecodeError {
    pub len: usize,
    pub reason: String,
}

pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    match rmp_serde::from_slice::<Envelope>(bytes) {
        Ok(Envelope::V1(message)) => Ok(message),
        Err(e) => Err(DecodeError {
            len: bytes.len(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a node of an older build decodes an answer into: the envelope and message
    /// shapes as they are, and a `Response` that predates `OutcomeUnknown` (two of its
    /// variants stand for all of them).
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    enum OlderEnvelope {
        V1(OlderMessage),
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    enum OlderMessage {
        Gossip(serde::de::IgnoredAny),
        Request(serde::de::IgnoredAny),
        Response(OlderResponse),
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    enum OlderResponse {
        Failed(String),
        Batch(Vec<OlderResponse>),
    }

    #[test]
    fn an_older_node_cannot_decode_an_unknown_outcome_and_so_reads_no_answer() {
        let older =
            |r: Response| rmp_serde::from_slice::<OlderEnvelope>(&encode(Message::Response(r)));
        assert!(older(Response::Failed("disk".into())).is_ok());
        assert!(older(Response::Batch(vec![Response::Failed("disk".into())])).is_ok());
        let unknown = || Response::OutcomeUnknown("fsync failed".into());
        let e = older(unknown()).unwrap_err();
        assert!(e.to_string().contains("OutcomeUnknown"), "{e}");
        assert!(older(Response::Batch(vec![unknown()])).is_err());
        // This build decodes it.
        assert!(matches!(
            decode(&encode(Message::Response(unknown()))),
            Ok(Message::Response(Response::OutcomeUnknown(_)))
        ));
    }
}

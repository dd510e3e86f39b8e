//! Why a healing or rebuild step stopped, and whose fault it was.
//!
//! Must not: decide what happens next (every step is retried next round).

use crate::object::ObjectError;
use crate::peers::PeerError;
use crate::replica::ReplicaError;
use crate::storage::StorageError;

/// Why a healing step stopped. Every step is retried next round, so these are logged, not
/// returned to anyone; the kinds say whose fault it was.
#[derive(Debug, thiserror::Error)]
pub enum HealError {
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("local storage: {0}")]
    Storage(#[from] StorageError),
    #[error("local replica: {0}")]
    Replica(#[from] ReplicaError),
    #[error("stored object: {0}")]
    Object(#[from] ObjectError),
    /// The peer answered, but not with what the protocol says it must.
    #[error("{peer} {reason}")]
    BadAnswer { peer: String, reason: String },
}

pub fn bad_answer(peer: &str, reason: impl Into<String>) -> HealError {
    HealError::BadAnswer {
        peer: peer.to_string(),
        reason: reason.into(),
    }
}

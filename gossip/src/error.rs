//! Errors returned to the caller of this crate. Owns the wording operators see; must not
//! carry I/O errors (this crate does no I/O).

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum GossipError {
    #[error("invalid gossip configuration: {0}")]
    InvalidConfig(String),
    #[error(
        "cannot remove {0}: it is this node; use `leave` to take this node out of the cluster"
    )]
    RemoveSelf(String),
    #[error("cannot remove {0}: no member of that name is known to this node")]
    UnknownMember(String),
    #[error("cannot remove {name}: it is {state} as seen from this node; only a down member can be removed (a live node should `leave`)")]
    NotDown { name: String, state: String },
    #[error("gossiped key-values of this node would take {size} bytes encoded, over the limit of {limit}")]
    KvTooLarge { size: usize, limit: usize },
    #[error("undecodable gossip message: {0}")]
    Decode(String),
}

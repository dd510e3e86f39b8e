//! Errors returned to the caller of this crate. Owns the wording operators see; must not
//! carry I/O errors (this crate does no I/O).

use thiserror::Error;

/// Why a call into this crate was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum GossipError {
    /// A configuration `Config::validate` refuses, with the reasons.
    #[error("invalid gossip configuration: {0}")]
    InvalidConfig(String),
    /// `remove` named this node itself.
    #[error(
        "cannot remove {0}: it is this node; use `leave` to take this node out of the cluster"
    )]
    RemoveSelf(String),
    /// `remove` named a member this node does not know.
    #[error("cannot remove {0}: no member of that name is known to this node")]
    UnknownMember(String),
    /// `remove` named a member that is not down.
    #[error("cannot remove {name}: it is {state} as seen from this node; only a down member can be removed (a live node should `leave`)")]
    NotDown {
        /// The member named.
        name: String,
        /// Its state as this node sees it.
        state: String,
    },
    /// `set_local_kv` would take this node's key-values over `max_kv_bytes`.
    #[error("gossiped key-values of this node would take {size} bytes encoded, over the limit of {limit}")]
    KvTooLarge {
        /// The encoded size they would take.
        size: usize,
        /// `Config::max_kv_bytes`.
        limit: usize,
    },
    /// Bytes that are not a gossip message of a known version.
    #[error("undecodable gossip message: {0}")]
    Decode(String),
}

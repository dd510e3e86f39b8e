//! chorus-gossip: cluster membership by scuttlebutt push-pull gossip, with a
//! phi-accrual failure detector per member.
//!
//! Owns: who is in the cluster (name, address, generation, heartbeat, state, gossiped
//! key-values), how that spreads, and who is suspected or down. Must not: do I/O, read a
//! clock, use a global RNG, spawn threads, or know about storage and partitions. Time
//! comes in as `now_ms` (a monotonic virtual clock), randomness as `&mut impl Rng`,
//! messages as values; the caller sends the returned [`Outgoing`] messages and acts on
//! the [`Event`]s. See README.md for the protocol.

#![deny(missing_docs)]

mod config;
mod error;
mod membership;
mod phi;
pub mod sim;
mod wire;

pub use config::{ClusterConfig, Config, MAX_ADDRESS_BYTES, MAX_NAME_BYTES, MIN_MESSAGE_BYTES};
pub use error::GossipError;
pub use membership::{Event, MemberState, MemberView, Membership, Outgoing, Stats};
pub use phi::{PhiConfig, PhiDetector};
pub use wire::{
    Digest, DigestEntry, GossipMessage, MemberBody, MemberUpdate, MessageV1, Payload, Peer,
    RejectKind, Stamp, Status,
};

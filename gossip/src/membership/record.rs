//! One member's record as this node holds it, and the rule every change to it obeys.
//!
//! Owns: `Member` (the gossiped fields plus this node's liveness verdict and detector),
//! its stamp and full update, and the progress check (no record goes backwards). Must
//! not: decide how records merge or when liveness changes (`merge`, `liveness`).

use std::collections::BTreeMap;

use crate::phi::{PhiConfig, PhiDetector};
use crate::wire::{MemberBody, MemberUpdate, Stamp, Status};

/// What this node's detector makes of a member (never asked of this node or a tombstone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Liveness {
    Alive,
    Suspect { since_ms: u64 },
    Down,
}

/// A member's record: what it gossips about itself, and what this node saw of it.
#[derive(Clone, Debug)]
pub(super) struct Member {
    pub(super) address: String,
    pub(super) generation: u64,
    pub(super) heartbeat: u64,
    pub(super) version: u64,
    pub(super) status: Status,
    pub(super) kv: BTreeMap<String, String>,
    pub(super) liveness: Liveness,
    pub(super) detector: PhiDetector,
    /// Local time the heartbeat last rose (or the member was learned).
    pub(super) last_heartbeat_ms: u64,
    /// Local time this node learned of the tombstone; drives forgetting.
    pub(super) tombstoned_at_ms: Option<u64>,
}

impl Member {
    /// A record first seen now (a new member, or a new incarnation of a known one).
    pub(super) fn learned(
        generation: u64,
        heartbeat: u64,
        body: MemberBody,
        phi: PhiConfig,
        now_ms: u64,
    ) -> Member {
        let tombstone = body.status.is_tombstone();
        let mut detector = PhiDetector::new(phi);
        if !tombstone {
            // Being learned counts as the first heartbeat: phi starts from the
            // bootstrap estimate and a member that is in fact dead is suspected after
            // about first_heartbeat_estimate + acceptable_pause.
            detector.heartbeat(now_ms);
        }
        Member {
            address: body.address,
            generation,
            heartbeat,
            version: body.version,
            status: body.status,
            kv: body.kv,
            liveness: Liveness::Alive,
            detector,
            last_heartbeat_ms: now_ms,
            tombstoned_at_ms: tombstone.then_some(now_ms),
        }
    }

    /// How recent this record is, as digests list it.
    pub(super) fn stamp(&self) -> Stamp {
        Stamp {
            generation: self.generation,
            tombstone: self.status.is_tombstone(),
            version: self.version,
            heartbeat: self.heartbeat,
        }
    }

    /// The whole record, for a peer that lacks it.
    pub(super) fn full_update(&self, name: &str) -> MemberUpdate {
        MemberUpdate {
            name: name.to_string(),
            generation: self.generation,
            heartbeat: self.heartbeat,
            body: Some(MemberBody {
                address: self.address.clone(),
                version: self.version,
                status: self.status,
                kv: self.kv.clone(),
            }),
        }
    }
}

/// A member's generation never decreases; within a generation neither its rank
/// (tombstone, version) nor its heartbeat does.
pub(super) fn assert_progress(name: &str, before: Stamp, after: Stamp) {
    assert!(
        after.generation > before.generation
            || (after.generation == before.generation
                && after.rank() >= before.rank()
                && after.heartbeat >= before.heartbeat),
        "member {name} went backwards: {before:?} -> {after:?}"
    );
}

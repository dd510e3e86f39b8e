//! Forgetting tombstones: a member that left or was removed is dropped from the view
//! after `forget_left_after_ms`, leaving a floor that keeps stale copies of it out.
//!
//! Owns: `Floor` and the bound on floors. Must not: forget this node's own record or a
//! removed member whose data may still come back (`Membership::remove`), or keep more
//! than `max_members` floors.

use std::collections::BTreeMap;

use super::Membership;
use crate::wire::{MemberBody, MemberUpdate, Status};

/// What is left of a forgotten tombstone: enough to refuse stale copies of the member
/// and to answer them with the tombstone, but not listed, gossiped or counted.
#[derive(Clone, Debug)]
pub(super) struct Floor {
    pub(super) generation: u64,
    version: u64,
    status: Status,
    address: String,
    forgotten_at_ms: u64,
}

impl Floor {
    /// The tombstone, for a peer still holding a stale copy of the member.
    pub(super) fn tombstone_update(&self, name: &str) -> MemberUpdate {
        MemberUpdate {
            name: name.to_string(),
            generation: self.generation,
            heartbeat: 0,
            body: Some(MemberBody {
                address: self.address.clone(),
                version: self.version,
                status: self.status,
                kv: BTreeMap::new(),
            }),
        }
    }
}

impl Membership {
    /// Replaces tombstones learned `forget_left_after_ms` ago by floors, and drops the
    /// oldest floors past `max_members`; called once a round.
    pub(super) fn forget_tombstones(&mut self, now: u64) {
        let after = self.config.forget_left_after_ms;
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(name, m)| {
                **name != self.config.name
                    && m.status != Status::Removed
                    && m.tombstoned_at_ms.is_some_and(|t| now - t >= after)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            let m = self.members.remove(&name).expect("listed above");
            let floor = Floor {
                generation: m.generation,
                version: m.version,
                status: m.status,
                address: m.address,
                forgotten_at_ms: now,
            };
            self.floors.insert(name, floor);
        }
        while self.floors.len() > self.config.max_members {
            let oldest = self
                .floors
                .iter()
                .min_by_key(|(_, f)| f.forgotten_at_ms)
                .map(|(name, _)| name.clone())
                .expect("floors is non-empty");
            self.floors.remove(&oldest);
        }
    }
}

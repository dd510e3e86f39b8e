//! Digests and deltas: the stamps a round offers its peers, and the records sent to a
//! peer that lacks them, each cut to fit the message bound.
//!
//! Owns: message budgets, digest slices (and the cursor through them), and which records
//! fit a delta. Must not: decide which records a peer needs (`syn` does) or merge what
//! comes back.

use std::ops::Bound;

use super::Membership;
use crate::config::MAX_NAME_BYTES;
use crate::wire::{Digest, DigestEntry, GossipMessage, MemberUpdate, Payload};

/// Room left in every budget for array headers that grow (fixarray to array16 to
/// array32: 4 bytes each) once entries are added to an empty message.
const BUDGET_SLACK: usize = 16;

/// A record to send, in priority order, built only if it fits.
pub(super) enum Candidate<'a> {
    /// A member's whole record.
    Full(&'a str),
    /// Only a member's heartbeat: the peer has the rest.
    Heartbeat(&'a str),
    /// A forgotten member's tombstone.
    Floor(&'a str),
}

impl Membership {
    /// Bytes left for entries in `empty` (the message with its lists empty).
    pub(super) fn budget(&self, empty: &GossipMessage) -> usize {
        self.config
            .max_message_bytes
            .saturating_sub(empty.encoded_len() + BUDGET_SLACK)
    }

    /// Stamps for the next slice of members, from the cursor on, as many as fit.
    pub(super) fn next_digest(&mut self) -> Digest {
        let start = self.digest_cursor.take();
        let empty = self.message(Payload::Syn {
            digest: Digest {
                start: start.clone(),
                end: None,
                entries: Vec::new(),
            },
        });
        // Keep room for the `end` name that cuts the slice short.
        let budget = self.budget(&empty).saturating_sub(MAX_NAME_BYTES + 8);
        let lower = start.as_deref().map_or(Bound::Unbounded, Bound::Included);
        let mut used = 0;
        let mut entries = Vec::new();
        let mut end = None;
        for (name, m) in self.members.range::<str, _>((lower, Bound::Unbounded)) {
            let entry = DigestEntry {
                name: name.clone(),
                stamp: m.stamp(),
            };
            let len = entry.encoded_len();
            if used + len > budget {
                end = Some(name.clone());
                break;
            }
            used += len;
            entries.push(entry);
        }
        assert!(
            end.is_none() || !entries.is_empty(),
            "a digest always makes progress"
        );
        self.digest_cursor = end.clone();
        Digest {
            start,
            end,
            entries,
        }
    }

    /// The records named in a peer's wants, within the message bound.
    pub(super) fn updates_for(&self, wants: &[String]) -> Vec<MemberUpdate> {
        let empty = self.message(Payload::Ack {
            updates: Vec::new(),
        });
        let candidates = wants.iter().filter_map(|name| {
            if let Some((name, _)) = self.members.get_key_value(name.as_str()) {
                Some(Candidate::Full(name.as_str()))
            } else {
                self.floors
                    .get_key_value(name.as_str())
                    .map(|(name, _)| Candidate::Floor(name.as_str()))
            }
        });
        self.fill(candidates, self.budget(&empty))
    }

    /// Builds updates from candidates, in order, skipping any that do not fit; gives up
    /// after a run of misses, when the budget is as good as spent.
    pub(super) fn fill<'a>(
        &self,
        candidates: impl Iterator<Item = Candidate<'a>>,
        budget: usize,
    ) -> Vec<MemberUpdate> {
        const MISSES_BEFORE_FULL: usize = 16;
        let mut used = 0;
        let mut misses = 0;
        let mut updates = Vec::new();
        for candidate in candidates {
            let update = match candidate {
                Candidate::Full(name) => self.members[name].full_update(name),
                Candidate::Heartbeat(name) => {
                    let m = &self.members[name];
                    MemberUpdate {
                        name: name.to_string(),
                        generation: m.generation,
                        heartbeat: m.heartbeat,
                        body: None,
                    }
                }
                Candidate::Floor(name) => self.floors[name].tombstone_update(name),
            };
            let len = update.encoded_len();
            if used + len <= budget {
                used += len;
                misses = 0;
                updates.push(update);
            } else {
                misses += 1;
                if misses == MISSES_BEFORE_FULL {
                    break;
                }
            }
        }
        updates
    }
}

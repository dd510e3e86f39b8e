//! Liveness: what this node makes of each member's heartbeats, and the states operators
//! see.
//!
//! Owns: `MemberState`, heartbeat observation (the only input of the phi detectors), the
//! alive / suspect / down decisions and the count of live members. Must not: merge
//! records or send anything.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::events::{Event, EventQueue};
use super::record::{assert_progress, Liveness, Member};
use super::{Membership, Stats};
use crate::wire::{Stamp, Status};

/// A member's state as shown to operators (`/status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// A member in the ring whose heartbeats arrive (this node is always alive to itself).
    Alive,
    /// Its phi is over the threshold: still reachable, maybe failing.
    Suspect,
    /// Suspect for `down_after_suspect_ms`: requests go to fallbacks.
    Down,
    /// It announced it is leaving; it owns no partitions.
    Leaving,
    /// It left, or an operator removed it (a tombstone until forgotten).
    Left,
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
            MemberState::Leaving => "leaving",
            MemberState::Left => "left",
        })
    }
}

impl Membership {
    /// Moves every watched member between alive, suspect and down by its phi now, with an
    /// event for each change; called once a round.
    pub(super) fn update_liveness(&mut self, now: u64) {
        let threshold = self.config.phi.threshold;
        let down_after = self.config.down_after_suspect_ms;
        for (name, m) in self.members.iter_mut() {
            if *name == self.config.name || m.status.is_tombstone() {
                continue;
            }
            let phi = m.detector.phi(now);
            let next = match m.liveness {
                Liveness::Alive if phi > threshold => Liveness::Suspect { since_ms: now },
                Liveness::Suspect { .. } | Liveness::Down if phi <= threshold => Liveness::Alive,
                Liveness::Suspect { since_ms } if now - since_ms >= down_after => Liveness::Down,
                same => same,
            };
            if next == m.liveness {
                continue;
            }
            let name = name.clone();
            let event = match next {
                Liveness::Alive => Event::Alive { name },
                Liveness::Suspect { .. } => Event::Suspect { name },
                Liveness::Down => Event::Down { name },
            };
            m.liveness = next;
            self.events.push(event, &mut self.stats);
        }
    }

    /// A member's liveness at `now` as the next round would judge it, so that answers
    /// between rounds are not up to a round late.
    pub(super) fn liveness_at(&self, m: &Member, now: u64) -> Liveness {
        match m.liveness {
            Liveness::Alive if m.detector.phi(now) > self.config.phi.threshold => {
                Liveness::Suspect { since_ms: now }
            }
            Liveness::Suspect { since_ms }
                if now - since_ms >= self.config.down_after_suspect_ms =>
            {
                Liveness::Down
            }
            l => l,
        }
    }

    /// What operators see of a member: its own status first, then its liveness.
    pub(super) fn state(&self, name: &str, m: &Member, now: u64) -> MemberState {
        match m.status {
            Status::Left | Status::Removed => MemberState::Left,
            Status::Leaving => MemberState::Leaving,
            Status::Alive if name == self.config.name => MemberState::Alive,
            Status::Alive => match self.liveness_at(m, now) {
                Liveness::Alive => MemberState::Alive,
                Liveness::Suspect { .. } => MemberState::Suspect,
                Liveness::Down => MemberState::Down,
            },
        }
    }

    /// Members counted as live: this node and every non-tombstone member not down.
    pub(super) fn alive_count(&self) -> usize {
        let now = self.now_ms;
        self.members
            .iter()
            .filter(|(name, m)| {
                !m.status.is_tombstone()
                    && (**name == self.config.name || self.liveness_at(m, now) != Liveness::Down)
            })
            .count()
    }
}

/// Takes a heartbeat for `m` if it is news for the generation we know. Only a rising
/// counter feeds the phi detector, however it arrived (directly or relayed).
pub(super) fn observe_heartbeat(
    name: &str,
    m: &mut Member,
    stamp: Stamp,
    now: u64,
    events: &mut EventQueue,
    stats: &mut Stats,
) {
    if m.generation != stamp.generation || stamp.heartbeat <= m.heartbeat {
        return;
    }
    let before = m.stamp();
    m.heartbeat = stamp.heartbeat;
    assert_progress(name, before, m.stamp());
    if m.status.is_tombstone() {
        return;
    }
    m.detector.heartbeat(now);
    m.last_heartbeat_ms = now;
    if m.liveness != Liveness::Alive {
        m.liveness = Liveness::Alive;
        events.push(
            Event::Alive {
                name: name.to_string(),
            },
            stats,
        );
    }
}

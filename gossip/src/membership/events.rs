//! The events the node acts on, and the queue that holds them until the node drains it.
//!
//! Owns: `Event` and the queue's bound (past it the oldest event is dropped and counted).
//! Must not: decide when something is an event (the membership steps do).

use std::collections::VecDeque;

use serde::Serialize;

use super::Stats;

/// What changed, for the node to act on. Events about this node itself are only
/// `Reincarnated` and `Rejected` (and `ConfigMismatch` when we refuse others).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Event {
    /// A member this node did not know.
    Joined {
        /// The member.
        name: String,
    },
    /// A member's phi went over the threshold.
    Suspect {
        /// The member.
        name: String,
    },
    /// A member stayed suspect for `down_after_suspect_ms`.
    Down {
        /// The member.
        name: String,
    },
    /// Back from suspect or down.
    Alive {
        /// The member.
        name: String,
    },
    /// A new incarnation replaced the old one (never reported as the old one failing).
    Restarted {
        /// The member.
        name: String,
        /// Its new generation.
        generation: u64,
    },
    /// A member announced it is leaving.
    Leaving {
        /// The member.
        name: String,
    },
    /// A member finished leaving.
    Left {
        /// The member.
        name: String,
    },
    /// An operator removed a member.
    Removed {
        /// The member.
        name: String,
    },
    /// This node took a new generation in-process: to outrank a dead predecessor's newer
    /// generation (`Config::fresh_identity`), or, removed by an operator while running, to
    /// announce itself leaving while it hands its data over (`handing_over`). The caller
    /// must persist `generation`, so the next start goes past it.
    Reincarnated {
        /// The generation this process now has.
        generation: u64,
        /// Removed while running: hand every key over (as `leave` does), then stop.
        handing_over: bool,
    },
    /// This node was refused by the cluster (other cluster settings, its name taken, or
    /// removed by an operator). It has stopped gossiping; the node should exit with
    /// `reason`.
    Rejected {
        /// Why, as a sentence for the operator.
        reason: String,
    },
    /// This node refused a peer, or ignored a refusal from a smaller group. Reported at
    /// most once a minute per peer address.
    ConfigMismatch {
        /// The peer's address.
        from: String,
        /// What differs, as a sentence for our log.
        reason: String,
    },
}

/// Events not drained yet, oldest first, at most `capacity` of them.
#[derive(Clone, Debug)]
pub(super) struct EventQueue {
    events: VecDeque<Event>,
    capacity: usize,
}

impl EventQueue {
    /// An empty queue that keeps at most `capacity` events.
    pub(super) fn new(capacity: usize) -> EventQueue {
        EventQueue {
            events: VecDeque::new(),
            capacity,
        }
    }

    /// Every event queued, oldest first; the queue is left empty.
    pub(super) fn drain(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    /// Queues `event`, dropping the oldest one when full.
    pub(super) fn push(&mut self, event: Event, stats: &mut Stats) {
        if self.events.len() == self.capacity {
            self.events.pop_front();
            stats.dropped_events += 1;
        }
        self.events.push_back(event);
    }
}

//! Direct reachability: which peers this node cannot reach itself, whatever gossip says.
//!
//! Gossip spreads heartbeats second-hand, so in a non-transitive partition (a reaches b,
//! b reaches c, a does not reach c) a's failure detector keeps calling c alive while every
//! request a sends c times out (issue 25). This table watches the outcome of this node's
//! own calls (the `Peers` seam, below batching: one batch is one call) and marks a peer
//! *directly unreachable* after a streak of failures; the membership shell adds the marked
//! peers to `ClusterView::unreachable`, so fallbacks and hints take over as for a down
//! peer. A marked peer gets no traffic but a probe (`PROBE_EVERY`, a cheap request through
//! the same path); any answer, the probe's or another call's, clears the mark.
//!
//! Deterministic and bounded: the time is an input (tokio's clock in the node, the
//! simulation's virtual one), the table is ordered (a `BTreeMap`), and it holds at most one
//! entry per peer with a current failure streak; a success removes the entry, and
//! [`DirectReach::retain`] drops peers that are no longer members.
//!
//! Must not: decide placement or gossip liveness, send anything, or read a clock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Failed calls in a row (no answer in between) before a peer is marked. One timeout is
/// not enough: a single slow request under load must not route a healthy peer away.
pub const FAILURES_TO_MARK: u32 = 3;
/// ... and the streak must span at least this long from its first failure to the one that
/// marks. Requests in flight together fail together when a healthy peer stalls for a
/// moment (a burst of timeouts within milliseconds); a peer that is really cut off keeps
/// failing past this, while a slow one answers something in between.
pub const MIN_STREAK: Duration = Duration::from_secs(1);
/// A marked peer is probed this often (the `reach_probe` duty's interval).
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// A probe not answered within this counts as one more failure.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a call's outcome changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The peer is now directly unreachable.
    Marked,
    /// The peer answered again: its mark is gone.
    Cleared,
}

#[derive(Clone, Debug)]
struct Streak {
    failures: u32,
    since: Instant,
    marked: bool,
}

/// The direct-reachability table of one node.
#[derive(Default)]
pub struct DirectReach {
    peers: Mutex<BTreeMap<String, Streak>>,
}

impl DirectReach {
    pub fn new() -> DirectReach {
        DirectReach::default()
    }

    /// Records one call to `peer` at `now`: `answered` when any answer came back (a
    /// refusal too: the path works), else it failed (not sent, or no answer in time).
    /// Returns the change, if the call changed the peer's mark.
    pub fn record(&self, peer: &str, answered: bool, now: Instant) -> Option<Change> {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if answered {
            // The common case (no streak) costs one lookup.
            return match peers.remove(peer) {
                Some(Streak { marked: true, .. }) => Some(Change::Cleared),
                _ => None,
            };
        }
        let streak = peers.entry(peer.to_string()).or_insert(Streak {
            failures: 0,
            since: now,
            marked: false,
        });
        streak.failures = streak.failures.saturating_add(1);
        if !streak.marked
            && streak.failures >= FAILURES_TO_MARK
            && now.saturating_duration_since(streak.since) >= MIN_STREAK
        {
            streak.marked = true;
            return Some(Change::Marked);
        }
        None
    }

    /// Whether `peer` is marked directly unreachable.
    pub fn is_marked(&self, peer: &str) -> bool {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(peer)
            .is_some_and(|s| s.marked)
    }

    /// The marked peers, in name order: the ones to probe, and the ones to route around.
    pub fn marked(&self) -> BTreeSet<String> {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, s)| s.marked)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Forgets every peer that is not in `members` (one that left, or was removed).
    pub fn retain(&self, members: &[String]) {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|name, _| members.contains(name));
    }

    /// How many peers the table holds (marked or on a failure streak).
    pub fn len(&self) -> usize {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn consecutive_failures_over_the_streak_mark_a_peer() {
        let (table, t) = (DirectReach::new(), Instant::now());
        assert_eq!(table.record("b", false, at(t, 0)), None);
        assert_eq!(table.record("b", false, at(t, 400)), None);
        assert!(!table.is_marked("b"), "two failures are not enough");
        assert_eq!(table.record("b", false, at(t, 1000)), Some(Change::Marked));
        assert!(table.is_marked("b"));
        assert_eq!(table.marked().into_iter().collect::<Vec<_>>(), ["b"]);
        // Further failures change nothing.
        assert_eq!(table.record("b", false, at(t, 3000)), None);
        assert!(!table.is_marked("c"));
    }

    #[test]
    fn a_burst_of_timeouts_within_the_streak_does_not_mark() {
        // A healthy peer stalls a moment under load: every request in flight times out at
        // once. However many, they do not mark it...
        let (table, t) = (DirectReach::new(), Instant::now());
        for i in 0..50 {
            assert_eq!(table.record("b", false, at(t, i)), None);
        }
        assert!(!table.is_marked("b"));
        // ... and the next answer ends the streak.
        assert_eq!(table.record("b", true, at(t, 900)), None);
        assert_eq!(table.record("b", false, at(t, 1500)), None);
        assert_eq!(table.record("b", false, at(t, 1600)), None);
        assert!(!table.is_marked("b"), "the streak restarted at the answer");
    }

    #[test]
    fn an_answer_between_failures_resets_the_streak() {
        let (table, t) = (DirectReach::new(), Instant::now());
        table.record("b", false, at(t, 0));
        table.record("b", false, at(t, 600));
        table.record("b", true, at(t, 700));
        assert_eq!(table.record("b", false, at(t, 1200)), None);
        assert!(!table.is_marked("b"));
        assert!(table.len() == 1, "one entry per peer");
    }

    #[test]
    fn a_success_clears_the_mark_and_the_entry() {
        let (table, t) = (DirectReach::new(), Instant::now());
        for ms in [0, 500, 1000] {
            table.record("b", false, at(t, ms));
        }
        assert!(table.is_marked("b"));
        // A probe (or any other call) answered.
        assert_eq!(table.record("b", true, at(t, 2000)), Some(Change::Cleared));
        assert!(!table.is_marked("b"));
        assert!(table.is_empty(), "a peer that answers takes no room");
        assert_eq!(table.record("b", true, at(t, 2100)), None);
    }

    #[test]
    fn retain_forgets_peers_that_left() {
        let (table, t) = (DirectReach::new(), Instant::now());
        for ms in [0, 500, 1000] {
            table.record("b", false, at(t, ms));
            table.record("c", false, at(t, ms));
        }
        table.retain(&["a".to_string(), "c".to_string()]);
        assert_eq!(table.marked().into_iter().collect::<Vec<_>>(), ["c"]);
        assert_eq!(table.len(), 1);
    }
}

//! Refusals: messages from nodes that must not join this cluster (other cluster settings,
//! a name another live node holds), and what this node does when it is refused.
//!
//! Owns: the refusal rule (the side that knows fewer live members gives up; a lasting tie
//! goes to the older node), name conflicts, this node's own rejection, and rate-limited
//! mismatch reports. Must not: merge anything from a refused message.

use super::events::Event;
use super::record::Liveness;
use super::{Membership, Outgoing};
use crate::config::ClusterConfig;
use crate::wire::{Payload, Peer, RejectKind};

/// Refusals between sides of equal size are decided (the older side wins) only once they
/// have lasted this long, so a cluster still forming is not decided by whoever came first.
pub(super) const TIE_GRACE_MS: u64 = 10_000;
/// A peer that keeps sending refused messages is reported at most this often.
const MISMATCH_REPORT_INTERVAL_MS: u64 = 60_000;
/// Peers whose refusals are being rate-limited; the oldest is forgotten beyond this.
const MISMATCH_REPORT_PEERS: usize = 64;

/// The fields of a `Payload::Reject`.
pub(super) struct Refusal {
    pub(super) kind: RejectKind,
    pub(super) reason: String,
    pub(super) alive_members: u32,
}

impl Membership {
    /// Refuses a message from a peer with other cluster settings, or with a name it may
    /// not use: the `Reject` to answer it with. `None` lets the message in.
    pub(super) fn refuse(
        &mut self,
        now: u64,
        from_address: &str,
        from: &Peer,
        cluster: &ClusterConfig,
    ) -> Option<Outgoing> {
        if let Some(for_peer) = self.config.cluster.mismatch_for_peer(cluster) {
            let for_us = self
                .config
                .cluster
                .mismatch_for_us(cluster)
                .unwrap_or_default();
            self.stats.refused_messages += 1;
            self.report_mismatch(
                now,
                from_address,
                format!("refused {} at {}: {for_us}", from.name, from.address),
            );
            return Some(self.reject(from, RejectKind::ClusterConfig, for_peer));
        }
        let for_peer = self.check_name(from)?;
        self.stats.refused_messages += 1;
        self.report_mismatch(
            now,
            from_address,
            format!("refused {} at {}: {for_peer}", from.name, from.address),
        );
        Some(self.reject(from, RejectKind::NameConflict, for_peer))
    }

    /// The refusal sent to `to`.
    fn reject(&self, to: &Peer, kind: RejectKind, reason: String) -> Outgoing {
        let alive_members = u32::try_from(self.alive_count()).unwrap_or(u32::MAX);
        Outgoing {
            to: to.address.clone(),
            message: self.message(Payload::Reject {
                kind,
                reason,
                alive_members,
            }),
        }
    }

    /// A refusal from a peer. The side that knows fewer live members gives up, so a
    /// misconfigured node joining a cluster exits, while a cluster node whose seed list
    /// names a misconfigured node does not: it answers with its own refusal, which makes
    /// the smaller side give up even if that side never sends gossip itself. Between sides
    /// of the same size the one that started first (lower generation, then lower name)
    /// wins once the tie has lasted `TIE_GRACE_MS`, so two lone nodes with different
    /// settings do not both keep serving as separate clusters (see [`outranks`]). Only the
    /// winning side answers, so refusals never bounce back and forth.
    pub(super) fn on_reject(
        &mut self,
        now: u64,
        from_address: &str,
        from: &Peer,
        cluster: &ClusterConfig,
        Refusal {
            kind,
            reason,
            alive_members,
        }: Refusal,
    ) -> Vec<Outgoing> {
        let ours = self.alive_count();
        let theirs = alive_members as usize;
        // A tie is normal while a cluster forms (a node alone refused by a lone
        // misconfigured seed soon knows more members); only a tie that lasts is decided.
        let tie_lasts = if theirs == ours {
            let since = *self.tied_since_ms.get_or_insert(now);
            now.saturating_sub(since) >= TIE_GRACE_MS
        } else {
            self.tied_since_ms = None;
            false
        };
        let our_name = self.config.name.clone();
        let us = (self.config.generation, our_name.as_str());
        let them = (from.stamp.generation, from.name.as_str());
        if theirs > ours || (tie_lasts && outranks((theirs, them.0, them.1), (ours, us.0, us.1))) {
            self.reject_self(reason);
            return Vec::new();
        }
        let what = match kind {
            RejectKind::ClusterConfig => self
                .config
                .cluster
                .mismatch_for_us(cluster)
                .unwrap_or(reason),
            RejectKind::NameConflict => reason,
        };
        self.report_mismatch(
            now,
            from_address,
            format!("ignored a refusal from a peer knowing {alive_members} live members (this node knows {ours}): {what}"),
        );
        match self.config.cluster.mismatch_for_peer(cluster) {
            Some(for_peer)
                if kind == RejectKind::ClusterConfig
                    && outranks((ours, us.0, us.1), (theirs, them.0, them.1)) =>
            {
                vec![self.reject(from, RejectKind::ClusterConfig, for_peer)]
            }
            _ => Vec::new(),
        }
    }

    fn report_mismatch(&mut self, now: u64, from: &str, reason: String) {
        if self
            .mismatch_reported_ms
            .get(from)
            .is_some_and(|t| now - t < MISMATCH_REPORT_INTERVAL_MS)
        {
            return;
        }
        self.mismatch_reported_ms.insert(from.to_string(), now);
        if self.mismatch_reported_ms.len() > MISMATCH_REPORT_PEERS {
            let oldest = self
                .mismatch_reported_ms
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(a, _)| a.clone())
                .expect("non-empty");
            self.mismatch_reported_ms.remove(&oldest);
        }
        self.events.push(
            Event::ConfigMismatch {
                from: from.to_string(),
                reason,
            },
            &mut self.stats,
        );
    }

    /// Checks the sender's claimed identity against ours and the members we know; the
    /// reason to refuse it, phrased for the sender. A sender that is a newer incarnation
    /// of this very node makes this node reject itself instead.
    fn check_name(&mut self, from: &Peer) -> Option<String> {
        let generation = from.stamp.generation;
        if from.name == self.config.name {
            if from.address == self.config.address && generation == self.config.generation {
                return None;
            }
            // A newer incarnation at our own address is our restart (we are a stale
            // process); at another address it is a second process claiming a name this
            // live process holds, and it must not evict us.
            if generation > self.config.generation && from.address == self.config.address {
                self.reject_self(format!(
                    "a newer incarnation of {} (generation {generation}, at {}) is in the cluster; this process (generation {}) must stop",
                    from.name, from.address, self.config.generation
                ));
                return None;
            }
            return Some(format!(
                "name {} is taken by the node at {} (generation {})",
                from.name, self.config.address, self.config.generation
            ));
        }
        let m = self.members.get(&from.name)?;
        let taken =
            m.generation == generation && m.address != from.address && !m.status.is_tombstone();
        (taken || self.held_live_elsewhere(&from.name, &from.address, generation)).then(|| {
            format!(
                "name {} is taken by the live node at {} (generation {}); stop it first or start this node with another --name",
                from.name, m.address, m.generation
            )
        })
    }

    /// Whether a newer incarnation of `name` at `address` would evict a live one elsewhere:
    /// the member is known at another address, not a tombstone, and not suspected. A node
    /// that moved to a new address is accepted once its old incarnation is seen failing.
    pub(super) fn held_live_elsewhere(&self, name: &str, address: &str, generation: u64) -> bool {
        self.members.get(name).is_some_and(|m| {
            generation > m.generation
                && m.address != address
                && !m.status.is_tombstone()
                && self.liveness_at(m, self.now_ms) == Liveness::Alive
        })
    }

    /// Stops this node for good (see `Event::Rejected`); the first reason is kept.
    pub(super) fn reject_self(&mut self, reason: String) {
        if self.rejected.is_none() {
            self.rejected = Some(reason.clone());
            self.events
                .push(Event::Rejected { reason }, &mut self.stats);
        }
    }
}

/// Whether side `a` wins a refusal against side `b`, each given as (live members it knows,
/// generation, name): more live members wins; then the older process (lower generation,
/// started first); then the lower name.
fn outranks(a: (usize, u64, &str), b: (usize, u64, &str)) -> bool {
    use std::cmp::Reverse;
    (a.0, Reverse(a.1), Reverse(a.2)) > (b.0, Reverse(b.1), Reverse(b.2))
}

//! The runtime side of membership: owns the sans-IO gossip state machine, feeds it time
//! (tokio's clock, so a simulation with paused time drives it deterministically) and
//! randomness (a seeded RNG), and after every step republishes the coordinator's view of
//! the ring. Sending the messages it returns is the caller's job.

use std::collections::HashSet;
use std::sync::PoisonError;
use std::sync::{Arc, Mutex, RwLock};

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::time::Instant;

use chorus_gossip::{Config as GossipConfig, Event, MemberView, Membership, Outgoing};
use chorus_ring::Ring;

use crate::reach::{Change, DirectReach};
use crate::view::ClusterView;

/// Gossiped key-value saying whether a node's storage works (`ok` or `failed`).
pub const STORAGE_KV: &str = "storage";

/// One node's membership, shared by the gossip loop, the RPC handler and the HTTP API.
pub struct Gossip {
    membership: Mutex<Membership>,
    rng: Mutex<StdRng>,
    started: Instant,
    ring_size: u32,
    n: usize,
    pub view: Arc<RwLock<ClusterView>>,
    /// The peers this node's own calls cannot reach, whatever gossip says: part of the
    /// view's unreachable set.
    reach: Arc<DirectReach>,
    /// Set when the cluster refuses this node (config mismatch); the node then exits.
    pub rejected: tokio::sync::watch::Sender<Option<String>>,
    /// The generation this process took in-process (`Event::Reincarnated`), for the
    /// caller to persist so the next start goes past it.
    pub reincarnated: tokio::sync::watch::Sender<Option<u64>>,
    /// Set when an operator removed this node while it ran: it hands every key over (as
    /// `leave` does), then stops.
    pub handing_over: tokio::sync::watch::Sender<bool>,
}

impl Gossip {
    pub fn new(config: GossipConfig, ring_size: u32, n: usize, rng_seed: u64) -> Gossip {
        let name = config.name.clone();
        let membership = Membership::new(config, 0);
        let ring = Ring::new(ring_size, n, [name]).expect("validated ring parameters");
        let view = ClusterView {
            ring: Arc::new(ring),
            unreachable: Arc::new(HashSet::new()),
        };
        Gossip {
            membership: Mutex::new(membership),
            rng: Mutex::new(StdRng::seed_from_u64(rng_seed)),
            started: Instant::now(),
            ring_size,
            n,
            view: Arc::new(RwLock::new(view)),
            reach: Arc::new(DirectReach::new()),
            rejected: tokio::sync::watch::channel(None).0,
            reincarnated: tokio::sync::watch::channel(None).0,
            handing_over: tokio::sync::watch::channel(false).0,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn step(
        &self,
        step: impl FnOnce(&mut Membership, u64, &mut StdRng) -> Vec<Outgoing>,
    ) -> Vec<Outgoing> {
        let now = self.now_ms();
        let mut membership = self
            .membership
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let out = step(
            &mut membership,
            now,
            &mut self.rng.lock().unwrap_or_else(PoisonError::into_inner),
        );
        for event in membership.drain_events() {
            self.log_event(event);
        }
        self.refresh_view(&membership, now);
        out
    }

    fn log_event(&self, event: Event) {
        match event {
            Event::Rejected { reason } => {
                tracing::error!("the cluster refused this node: {reason}");
                self.rejected.send_replace(Some(reason));
            }
            Event::Reincarnated {
                generation,
                handing_over,
            } => {
                if handing_over {
                    tracing::warn!(generation, "an operator removed this node while it was running (cut off, not dead): handing every key over to the owners before stopping, so no write it acknowledged is lost");
                    self.handing_over.send_replace(true);
                } else {
                    tracing::warn!(generation, "a dead predecessor of this node had a newer generation (its clock ran ahead?): this replacement takes generation {generation}");
                }
                self.reincarnated.send_replace(Some(generation));
            }
            Event::ConfigMismatch { from, reason } => {
                tracing::warn!(%from, "refused a node: {reason}")
            }
            other => tracing::info!("membership: {other:?}"),
        }
    }

    fn refresh_view(&self, membership: &Membership, now: u64) {
        let mut members = membership.ring_members();
        members.sort();
        // A member whose storage failed answers no replica request: route around it as if
        // it were down (its own coordinator refuses writes anyway). So is one this node's
        // own calls cannot reach, even while gossip hears of its heartbeats second-hand.
        let direct = self.reach.marked();
        let unreachable: HashSet<String> = members
            .iter()
            .filter(|m| {
                !membership.is_reachable(m, now)
                    || membership.kv_of(m, STORAGE_KV) == Some("failed")
                    || direct.contains(*m)
            })
            .cloned()
            .collect();
        let mut view = self.view.write().unwrap_or_else(PoisonError::into_inner);
        if view.ring.members() != members.as_slice() && !members.is_empty() {
            match Ring::new(self.ring_size, self.n, members.iter().cloned()) {
                Ok(ring) => {
                    tracing::info!(members = ?members, "ring recomputed");
                    if members.len() < self.n {
                        tracing::warn!(members = members.len(), n = self.n, "the cluster has fewer members than --n: a key has only {} replicas, so requests needing more (w=all, or a quorum of {}) fail until more nodes join", members.len(), self.n / 2 + 1);
                    }
                    view.ring = Arc::new(ring);
                }
                Err(e) => tracing::error!("cannot build the ring: {e}"),
            }
        }
        if *view.unreachable != unreachable {
            view.unreachable = Arc::new(unreachable);
        }
    }

    /// The direct-reachability table (`reach.rs`).
    pub fn reach(&self) -> &Arc<DirectReach> {
        &self.reach
    }

    /// Records the outcome of one call to `peer` (`answered`: any answer came back) and,
    /// when it marks or clears the peer, republishes the view at once.
    pub fn record_call(&self, peer: &str, answered: bool) -> Option<Change> {
        let change = self.reach.record(peer, answered, Instant::now());
        if let Some(change) = change {
            match change {
                Change::Marked => tracing::warn!(
                    peer,
                    "{} calls in a row over {:?} got no answer: routing around the peer (directly unreachable from here, whatever gossip says) until it answers a probe",
                    crate::reach::FAILURES_TO_MARK,
                    crate::reach::MIN_STREAK
                ),
                Change::Cleared => tracing::info!(peer, "the peer answers again: reachable"),
            }
            self.republish();
        }
        change
    }

    /// Recomputes and republishes the view from the current membership.
    pub fn republish(&self) {
        let now = self.now_ms();
        let membership = self
            .membership
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.refresh_view(&membership, now);
    }

    /// The members of the ring (sorted), as the view was last published.
    pub fn ring_members(&self) -> Vec<String> {
        self.view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .ring
            .members()
            .to_vec()
    }

    pub fn tick(&self) -> Vec<Outgoing> {
        self.step(|m, now, rng| m.tick(now, rng))
    }

    pub fn handle(&self, from: &str, message: chorus_gossip::GossipMessage) -> Vec<Outgoing> {
        self.step(|m, now, rng| m.handle(now, from, message, rng))
    }

    /// Publishes a key-value about this node to the cluster (e.g. pending hints).
    pub fn set_local_kv(&self, key: &str, value: &str) {
        let mut membership = self
            .membership
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = membership.set_local_kv(key, value) {
            tracing::warn!("cannot gossip {key}: {e}");
        }
    }

    /// Publishes several key-values in one step, so no gossip message carries some of
    /// them without the others.
    pub fn set_local_kvs(&self, pairs: &[(&str, &str)]) {
        let mut membership = self
            .membership
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (key, value) in pairs {
            if let Err(e) = membership.set_local_kv(key, value) {
                tracing::warn!("cannot gossip {key}: {e}");
            }
        }
    }

    /// Whether `name` gossips `key` = `value`.
    pub fn kv_is(&self, name: &str, key: &str, value: &str) -> bool {
        self.membership
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .kv_of(name, key)
            == Some(value)
    }

    pub fn address_of(&self, name: &str) -> Option<String> {
        self.membership
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .address_of(name)
            .map(str::to_string)
    }

    /// The phi above which a peer counts as suspect (`--phi-threshold`).
    pub fn phi_threshold(&self) -> f64 {
        self.membership
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .config()
            .phi
            .threshold
    }

    /// Every member's state now. The view is republished in the same step, so requests
    /// route by what this answer shows from the moment a caller sees it: between gossip
    /// rounds the view would otherwise still send to a member reported down here (a test
    /// that waited for "down" then saw writes go to the dead node instead of a fallback).
    pub fn members(&self) -> Vec<MemberView> {
        let now = self.now_ms();
        let membership = self
            .membership
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.refresh_view(&membership, now);
        membership.members(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_gossip::{ClusterConfig, MemberState};
    use std::time::Duration;

    fn view_of(node: &Gossip) -> ClusterView {
        node.view.read().unwrap().clone()
    }

    fn node(name: &str, seeds: &[&str]) -> Gossip {
        let cluster = ClusterConfig { n: 2, ring_size: 8 };
        let seeds = seeds.iter().map(|s| s.to_string()).collect();
        Gossip::new(GossipConfig::new(name, name, 1, cluster, seeds), 8, 2, 7)
    }

    /// Delivers what `from` sends to `to`, and the answers back, for one round.
    fn exchange(from: &Gossip, from_name: &str, to: &Gossip, to_name: &str) {
        for out in from.tick() {
            for answer in to.handle(from_name, out.message) {
                from.handle(to_name, answer.message);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_reported_down_is_routed_around_before_the_next_gossip_round() {
        let (a, b) = (node("a", &["b"]), node("b", &["a"]));
        for _ in 0..20 {
            tokio::time::advance(Duration::from_millis(500)).await;
            exchange(&a, "a", &b, "b");
            exchange(&b, "b", &a, "a");
        }
        assert_eq!(view_of(&a).ring.members(), ["a", "b"]);
        assert!(view_of(&a).unreachable.is_empty());

        // b falls silent: a's next round finds it suspect (still routed to), and b turns
        // down between rounds, which only the members call sees.
        tokio::time::advance(Duration::from_secs(30)).await;
        a.tick();
        assert!(view_of(&a).unreachable.is_empty());
        tokio::time::advance(Duration::from_secs(3)).await;
        let b_state = a
            .members()
            .into_iter()
            .find(|m| m.name == "b")
            .map(|m| m.state);
        assert_eq!(b_state, Some(MemberState::Down));
        assert!(
            view_of(&a).unreachable.contains("b"),
            "b reported down but still routed to"
        );
    }
}

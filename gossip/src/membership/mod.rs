//! The membership state machine: one node's view of the cluster, the scuttlebutt
//! push-pull exchange that keeps it in step with its peers, and the liveness of every
//! member as judged by its phi detector.
//!
//! Owns: the `Membership` type, its public API, and the control flow of a round (`tick`)
//! and of a received message (`handle`). The steps live in submodules: `record` (one
//! member's record), `merge` (how records merge: newer generation, then tombstone, then
//! version; heartbeat by max), `liveness`, `targets` (peer choice), `digest` (digests,
//! deltas, message budgets), `syn` (answering a digest), `refusal`, `tombstones`
//! (forgetting) and `events`. Must not: do I/O, read a clock, keep unbounded state, or
//! decide anything about data placement (the ring does that from `ring_members`).

use std::collections::BTreeMap;

use rand::Rng;
use serde::Serialize;

use crate::config::{Config, MAX_ADDRESS_BYTES, MAX_NAME_BYTES};
use crate::error::GossipError;
use crate::wire::{
    encoded_len, GossipMessage, MemberBody, MemberUpdate, MessageV1, Payload, Peer, Status,
};

mod digest;
mod events;
mod liveness;
mod merge;
mod record;
mod refusal;
mod syn;
mod targets;
mod tombstones;

pub use events::Event;
use events::EventQueue;
pub use liveness::MemberState;
use record::{assert_progress, Liveness, Member};
use refusal::Refusal;
use tombstones::Floor;

/// One member as this node sees it, for `/status` and the dashboard.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemberView {
    /// The member's name.
    pub name: String,
    /// Its node-to-node address.
    pub address: String,
    /// `left` covers both a member that left and one an operator removed.
    pub state: MemberState,
    /// 0 for this node and for tombstones.
    pub phi: f64,
    /// Its incarnation (bumped on every restart).
    pub generation: u64,
    /// Its heartbeat counter within that generation (one per gossip round).
    pub heartbeat: u64,
    /// Time since this node last saw the member's heartbeat rise; None for this node.
    pub heartbeat_age_ms: Option<u64>,
    /// Its gossiped key-values (see `set_local_kv`).
    pub kv: BTreeMap<String, String>,
    /// Whether this is the node itself.
    pub is_self: bool,
    /// Removed by an operator, and its data may still come back (see
    /// `Membership::remove`): tombstone reaping waits for it.
    pub removed: bool,
}

/// A message for the caller to send.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    /// A peer address, as in `Config::address`.
    pub to: String,
    /// The message.
    pub message: GossipMessage,
}

/// Counters for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Messages refused for other cluster settings or a taken name.
    pub refused_messages: u64,
    /// Records or messages ignored: fields over the size limits, or a body for a known
    /// name and generation at another address (a name conflict; the incumbent wins).
    pub ignored_records: u64,
    /// Unknown members not admitted because `max_members` are known.
    pub refused_members: u64,
    /// Events dropped, oldest first, because nobody drained them.
    pub dropped_events: u64,
}

/// One node's membership state machine: feed it ticks and received messages, send what
/// they return, act on its events.
#[derive(Clone, Debug)]
pub struct Membership {
    config: Config,
    /// Every member known, this node included, sorted by name (digests are name ranges).
    members: BTreeMap<String, Member>,
    floors: BTreeMap<String, Floor>,
    events: EventQueue,
    /// Where the next digest starts when the last one did not cover every member.
    digest_cursor: Option<String>,
    rejected: Option<String>,
    mismatch_reported_ms: BTreeMap<String, u64>,
    /// Since when refusals come from a side exactly as large as ours (see `on_reject`).
    tied_since_ms: Option<u64>,
    now_ms: u64,
    stats: Stats,
}

impl Membership {
    /// Panics on a configuration `Config::validate` refuses.
    pub fn new(config: Config, now_ms: u64) -> Membership {
        if let Err(e) = config.validate() {
            panic!("{e}");
        }
        let me = Member::learned(
            config.generation,
            0,
            MemberBody {
                address: config.address.clone(),
                version: 0,
                status: Status::Alive,
                kv: BTreeMap::new(),
            },
            config.phi,
            now_ms,
        );
        let capacity = 4 * config.max_members + 64;
        Membership {
            members: BTreeMap::from([(config.name.clone(), me)]),
            floors: BTreeMap::new(),
            events: EventQueue::new(capacity),
            digest_cursor: None,
            rejected: None,
            mismatch_reported_ms: BTreeMap::new(),
            tied_since_ms: None,
            now_ms,
            stats: Stats::default(),
            config,
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This node's member name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Why this node was refused, once it was (see `Event::Rejected`).
    pub fn rejected(&self) -> Option<&str> {
        self.rejected.as_deref()
    }

    /// One gossip round; call every `gossip_interval_ms`. Bumps our heartbeat, updates
    /// every member's liveness, forgets old tombstones, and returns a digest for up to
    /// `fanout` peers.
    pub fn tick(&mut self, now_ms: u64, rng: &mut impl Rng) -> Vec<Outgoing> {
        let now = self.advance_clock(now_ms);
        if self.rejected.is_some() {
            return Vec::new();
        }
        self.me_mut().heartbeat += 1;
        self.update_liveness(now);
        self.forget_tombstones(now);
        let targets = self.choose_targets(rng);
        if targets.is_empty() {
            return Vec::new();
        }
        let digest = self.next_digest();
        let message = self.message(Payload::Syn { digest });
        targets
            .into_iter()
            .map(|to| Outgoing {
                to,
                message: message.clone(),
            })
            .collect()
    }

    /// Takes in one message. `from_address` is the transport's idea of the sender and is
    /// only used in reports; replies go to the address the sender declares in the
    /// message, which is where it listens.
    pub fn handle(
        &mut self,
        now_ms: u64,
        from_address: &str,
        msg: GossipMessage,
        rng: &mut impl Rng,
    ) -> Vec<Outgoing> {
        let now = self.advance_clock(now_ms);
        if self.rejected.is_some() {
            return Vec::new();
        }
        let GossipMessage::V1(MessageV1 {
            cluster,
            from,
            payload,
        }) = msg;
        if from.name.is_empty()
            || from.name.len() > MAX_NAME_BYTES
            || from.address.len() > MAX_ADDRESS_BYTES
        {
            self.stats.ignored_records += 1;
            return Vec::new();
        }
        if let Payload::Reject {
            kind,
            reason,
            alive_members,
        } = payload
        {
            let refusal = Refusal {
                kind,
                reason,
                alive_members,
            };
            return self.on_reject(now, from_address, &from, &cluster, refusal);
        }
        if let Some(refusal) = self.refuse(now, from_address, &from, &cluster) {
            return vec![refusal];
        }
        // The sender may have been a newer incarnation of this very node.
        if self.rejected.is_some() {
            return Vec::new();
        }
        self.merge_heartbeat(now, &from);
        match payload {
            Payload::Syn { digest } => vec![self.answer_syn(now, &from, digest, rng)],
            Payload::SynAck { updates, wants } => self.answer_syn_ack(now, &from, updates, &wants),
            Payload::Ack { updates } => {
                self.apply_updates(now, updates);
                Vec::new()
            }
            Payload::Reject { .. } => unreachable!("handled above"),
        }
    }

    /// Takes the records a SynAck brings, then answers its wants with an Ack (none when
    /// nothing is wanted, or when the records ended this process).
    fn answer_syn_ack(
        &mut self,
        now: u64,
        from: &Peer,
        updates: Vec<MemberUpdate>,
        wants: &[String],
    ) -> Vec<Outgoing> {
        self.apply_updates(now, updates);
        if self.rejected.is_some() {
            return Vec::new();
        }
        let updates = self.updates_for(wants);
        if updates.is_empty() {
            return Vec::new();
        }
        let message = self.message(Payload::Ack { updates });
        debug_assert!(message.encoded_len() <= self.config.max_message_bytes);
        vec![Outgoing {
            to: from.address.clone(),
            message,
        }]
    }

    /// The events since the last call, oldest first.
    pub fn drain_events(&mut self) -> Vec<Event> {
        self.events.drain()
    }

    /// Every member known, this node included, tombstones until forgotten; by name.
    pub fn members(&self, now_ms: u64) -> Vec<MemberView> {
        let now = now_ms.max(self.now_ms);
        self.members
            .iter()
            .map(|(name, m)| {
                let is_self = *name == self.config.name;
                let watched = !is_self && !m.status.is_tombstone();
                MemberView {
                    name: name.clone(),
                    address: m.address.clone(),
                    state: self.state(name, m, now),
                    phi: if watched { m.detector.phi(now) } else { 0.0 },
                    generation: m.generation,
                    heartbeat: m.heartbeat,
                    heartbeat_age_ms: (!is_self).then(|| now.saturating_sub(m.last_heartbeat_ms)),
                    kv: m.kv.clone(),
                    is_self,
                    removed: m.status == Status::Removed,
                }
            })
            .collect()
    }

    /// A member's state at `now_ms`; `None` for a name this node does not know.
    pub fn state_of(&self, name: &str, now_ms: u64) -> Option<MemberState> {
        let now = now_ms.max(self.now_ms);
        self.members.get(name).map(|m| self.state(name, m, now))
    }

    /// Names that own partitions, sorted: every member whose own status is alive, however
    /// the detector judges it (a down node keeps its partitions; requests use fallbacks
    /// until it returns or is removed). Leaving and left members own nothing.
    pub fn ring_members(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|(_, m)| m.status == Status::Alive)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Whether requests should go to `name` now: known, not a tombstone, not down.
    /// Suspects count as reachable. This node is always reachable.
    pub fn is_reachable(&self, name: &str, now_ms: u64) -> bool {
        if name == self.config.name {
            return true;
        }
        let now = now_ms.max(self.now_ms);
        self.members
            .get(name)
            .is_some_and(|m| !m.status.is_tombstone() && self.liveness_at(m, now) != Liveness::Down)
    }

    /// One gossiped key-value of a member (see `set_local_kv`).
    pub fn kv_of(&self, name: &str, key: &str) -> Option<&str> {
        self.members.get(name)?.kv.get(key).map(String::as_str)
    }

    /// A known member's node-to-node address.
    pub fn address_of(&self, name: &str) -> Option<&str> {
        self.members.get(name).map(|m| m.address.as_str())
    }

    /// Sets a gossiped key-value of this node (load figures and the like). Refused when
    /// this node's key-values would exceed `max_kv_bytes` encoded.
    pub fn set_local_kv(&mut self, key: &str, value: &str) -> Result<(), GossipError> {
        let limit = self.config.max_kv_bytes;
        let me = self.me_mut();
        if me.status.is_tombstone() || me.kv.get(key).is_some_and(|v| v == value) {
            return Ok(());
        }
        let mut kv = me.kv.clone();
        kv.insert(key.to_string(), value.to_string());
        let size = encoded_len(&kv);
        if size > limit {
            return Err(GossipError::KvTooLarge { size, limit });
        }
        me.kv = kv;
        me.version += 1;
        Ok(())
    }

    /// Marks this node leaving: it stops owning partitions everywhere once this spreads.
    pub fn leave(&mut self) {
        let me = self.me_mut();
        if me.status == Status::Alive {
            me.status = Status::Leaving;
            me.version += 1;
        }
    }

    /// Marks this node left (after its hand-off): a tombstone for this generation.
    pub fn left(&mut self) {
        let me = self.me_mut();
        if !me.status.is_tombstone() {
            me.status = Status::Left;
            me.version += 1;
        }
    }

    /// Drops a dead member: it becomes a removed tombstone that spreads cluster-wide. Only
    /// a member this node sees as down can be removed. Its data may still come back (a
    /// machine restarted with its disk, or a partition the operator took for a crash), so
    /// the record is kept, marked `removed` in `members`, until that member returns; the
    /// node pauses tombstone reaping meanwhile. With `data_lost` the operator declares
    /// its data gone for good: the member becomes `Left` (forgotten like one that left),
    /// and if it is started again with its old data it must stop. Removing it again with
    /// `data_lost` turns a kept removal into that; any other removal of a tombstone is a
    /// no-op.
    pub fn remove(&mut self, name: &str, data_lost: bool) -> Result<(), GossipError> {
        if name == self.config.name {
            return Err(GossipError::RemoveSelf(name.to_string()));
        }
        let now = self.now_ms;
        let Some(m) = self.members.get(name) else {
            return Err(GossipError::UnknownMember(name.to_string()));
        };
        if m.status.is_tombstone() {
            if m.status == Status::Removed && data_lost {
                self.set_removed(name, Status::Left, now);
            }
            return Ok(());
        }
        if self.liveness_at(m, now) != Liveness::Down {
            let state = self.state(name, m, now).to_string();
            return Err(GossipError::NotDown {
                name: name.to_string(),
                state,
            });
        }
        let status = if data_lost {
            Status::Left
        } else {
            Status::Removed
        };
        self.set_removed(name, status, now);
        self.events.push(
            Event::Removed {
                name: name.to_string(),
            },
            &mut self.stats,
        );
        Ok(())
    }

    /// Makes `name`'s record the tombstone `status` at a new version. A removal with its
    /// data declared lost (`Left`) moves two versions, so it beats a plain removal made
    /// at the same time elsewhere (equal versions of two tombstones would never merge).
    fn set_removed(&mut self, name: &str, status: Status, now: u64) {
        let m = self.members.get_mut(name).expect("callers checked");
        let before = m.stamp();
        m.status = status;
        m.version += if status == Status::Left { 2 } else { 1 };
        m.kv.clear();
        m.tombstoned_at_ms = Some(now);
        assert_progress(name, before, m.stamp());
    }

    /// Members removed by an operator whose data may still come back (see `remove`).
    pub fn removed_awaiting_return(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|(_, m)| m.status == Status::Removed)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Takes a clock reading and returns the time to act on.
    fn advance_clock(&mut self, now_ms: u64) -> u64 {
        // A reading older than one already seen (two tasks racing for the lock) is
        // treated as that reading: time never goes backwards in here.
        self.now_ms = self.now_ms.max(now_ms);
        self.now_ms
    }

    /// This node's own record.
    fn me(&self) -> &Member {
        self.members
            .get(&self.config.name)
            .expect("this node is always a member")
    }

    /// This node's own record, to change.
    fn me_mut(&mut self) -> &mut Member {
        self.members
            .get_mut(&self.config.name)
            .expect("this node is always a member")
    }

    /// A message from this node: our cluster config and stamp go with every payload, so
    /// every message is also a heartbeat.
    fn message(&self, payload: Payload) -> GossipMessage {
        GossipMessage::V1(MessageV1 {
            cluster: self.config.cluster,
            from: Peer {
                name: self.config.name.clone(),
                address: self.config.address.clone(),
                stamp: self.me().stamp(),
            },
            payload,
        })
    }
}

#[cfg(test)]
mod tests;

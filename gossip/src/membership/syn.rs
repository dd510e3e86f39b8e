//! Answering a Syn: compare the sender's digest with this node's members and reply with
//! what each side lacks.
//!
//! Owns: reading a digest (heartbeats first, then stamps), what the sender needs (most
//! needed first) and which records to ask for. Must not: trust the digest's shape, or let
//! the answer outgrow the message bound.

use std::cmp::Ordering;
use std::ops::Bound;

use rand::seq::SliceRandom;
use rand::Rng;

use super::digest::Candidate;
use super::liveness::observe_heartbeat;
use super::merge::catch_up_own;
use super::record::Member;
use super::{Membership, Outgoing};
use crate::config::MAX_NAME_BYTES;
use crate::wire::{encoded_len, Digest, DigestEntry, GossipMessage, Payload, Peer, Stamp};

impl Membership {
    /// Reply to a digest: the records the sender lacks (most needed first) and the
    /// names whose records we lack, both within the message bound. The digest's slice is
    /// walked alongside ours in name order, so a round costs no per-entry lookups.
    pub(super) fn answer_syn(
        &mut self,
        now: u64,
        from: &Peer,
        digest: Digest,
        rng: &mut impl Rng,
    ) -> Outgoing {
        let received = ReceivedDigest::new(digest, from);
        // Heartbeats spread through digests alone: take theirs before comparing.
        self.take_heartbeats(now, &received);
        let mut plan = self.plan(&received);
        plan.order(rng);
        let refused = plan.refused;
        let message = self.syn_ack(plan);
        debug_assert!(message.encoded_len() <= self.config.max_message_bytes);
        self.stats.refused_members += refused;
        Outgoing {
            to: from.address.clone(),
            message,
        }
    }

    /// Takes the heartbeats of the members the digest lists; for this node's own record,
    /// catches up with a later copy the sender holds.
    fn take_heartbeats(&mut self, now: u64, received: &ReceivedDigest) {
        let me = self.config.name.as_str();
        if let Some(bounds) = received.bounds() {
            let mut theirs = received.slice.entries.iter().peekable();
            for (name, m) in self.members.range_mut::<str, _>(bounds) {
                while theirs.next_if(|e| e.name < *name).is_some() {}
                if let Some(e) = theirs.next_if(|e| e.name == *name) {
                    if name == me {
                        catch_up_own(name, m, e.stamp);
                    } else {
                        observe_heartbeat(name, m, e.stamp, now, &mut self.events, &mut self.stats);
                    }
                }
            }
        }
        for e in &received.extra {
            if let Some(m) = self.members.get_mut(&e.name) {
                if e.name == me {
                    catch_up_own(me, m, e.stamp);
                } else {
                    observe_heartbeat(&e.name, m, e.stamp, now, &mut self.events, &mut self.stats);
                }
            }
        }
    }

    /// Compares the digest with our members: what the sender needs, what we want.
    fn plan<'a>(&'a self, received: &'a ReceivedDigest) -> Plan<'a> {
        let mut plan = Plan::default();
        if let Some(bounds) = received.bounds() {
            let mut theirs = received.slice.entries.iter().peekable();
            for (name, m) in self.members.range::<str, _>(bounds) {
                while let Some(e) = theirs.next_if(|e| e.name < *name) {
                    self.plan_unknown(e, &mut plan);
                }
                match theirs.next_if(|e| e.name == *name) {
                    Some(e) => self.plan_known(name, m, e.stamp, &mut plan),
                    None => plan.missing.push(name),
                }
            }
            for e in theirs {
                self.plan_unknown(e, &mut plan);
            }
        }
        for e in &received.extra {
            match self.members.get_key_value(&e.name) {
                Some((name, m)) => self.plan_known(name, m, e.stamp, &mut plan),
                None => self.plan_unknown(e, &mut plan),
            }
        }
        plan
    }

    /// The SynAck carrying a plan: the wants (within a quarter of the budget), then as
    /// many records as fit, most needed first.
    fn syn_ack(&self, plan: Plan<'_>) -> GossipMessage {
        let empty = self.message(Payload::SynAck {
            updates: Vec::new(),
            wants: Vec::new(),
        });
        let budget = self.budget(&empty);
        let (wants, used) = wants_within(plan.wants, budget / 4);
        let candidates = plan
            .floors
            .into_iter()
            .map(Candidate::Floor)
            .chain(
                plan.missing
                    .into_iter()
                    .chain(plan.stale)
                    .map(Candidate::Full),
            )
            .chain(
                plan.behind
                    .into_iter()
                    .map(|(_, name)| Candidate::Heartbeat(name)),
            );
        let updates = self.fill(candidates, budget - used);
        self.message(Payload::SynAck { updates, wants })
    }

    /// What the digest's sender needs of a member we know, or we of it.
    fn plan_known<'a>(&self, name: &'a str, m: &Member, stamp: Stamp, plan: &mut Plan<'a>) {
        let ours = m.stamp();
        match ours.rank().cmp(&stamp.rank()) {
            Ordering::Greater if ours.generation > stamp.generation => plan.missing.push(name),
            Ordering::Greater => plan.stale.push(name),
            Ordering::Less => {
                // Of our own record we only want news that ends this process: a newer
                // incarnation or a removal.
                let is_self = name == self.config.name;
                if !is_self
                    || stamp.generation > ours.generation
                    || (stamp.tombstone && !ours.tombstone)
                {
                    plan.wants.push(name);
                }
            }
            Ordering::Equal if ours.heartbeat > stamp.heartbeat => {
                plan.behind.push((ours.heartbeat - stamp.heartbeat, name))
            }
            Ordering::Equal => {}
        }
    }

    /// A member the digest lists and we do not: a forgotten tombstone to answer with, or
    /// a record to ask for.
    fn plan_unknown<'a>(&'a self, e: &'a DigestEntry, plan: &mut Plan<'a>) {
        match self.floors.get_key_value(&e.name) {
            Some((name, f)) if f.generation >= e.stamp.generation => {
                if f.generation > e.stamp.generation || !e.stamp.tombstone {
                    plan.floors.push(name);
                }
            }
            _ if self.members.len() + plan.wants.len() < self.config.max_members => {
                plan.wants.push(&e.name)
            }
            _ => plan.refused += 1,
        }
    }
}

/// Work found while comparing a digest with our members; names borrow from either.
#[derive(Default)]
struct Plan<'a> {
    /// Records the digest's sender lacks outright (unknown, or an older generation).
    missing: Vec<&'a str>,
    /// Records whose body the sender has an older version of.
    stale: Vec<&'a str>,
    /// Heartbeats the sender lags on, with the gap.
    behind: Vec<(u64, &'a str)>,
    /// Forgotten tombstones the sender still has a live copy of.
    floors: Vec<&'a str>,
    /// Members whose records we lack (or whose later copy ends this process).
    wants: Vec<&'a str>,
    /// Members the digest lists that we cannot admit: `max_members` are known.
    refused: u64,
}

impl Plan<'_> {
    /// Puts the plan in sending order: missing and stale records shuffled (what does not
    /// fit this time has its chance next time), heartbeats largest lag first.
    fn order(&mut self, rng: &mut impl Rng) {
        self.missing.shuffle(rng);
        self.stale.shuffle(rng);
        self.behind.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    }
}

/// A received digest in the shape an honest sender gives it: the entries inside its
/// slice sorted and listed once, the rest set aside.
struct ReceivedDigest {
    /// The slice, with the entries inside it.
    slice: Digest,
    /// Entries outside the slice, and the sender's own stamp unless the slice lists it.
    extra: Vec<DigestEntry>,
}

impl ReceivedDigest {
    /// Takes a digest from `from` apart, trusting neither its order nor its slice.
    fn new(digest: Digest, from: &Peer) -> ReceivedDigest {
        let Digest {
            start,
            end,
            mut entries,
        } = digest;
        entries.retain(|e| !e.name.is_empty() && e.name.len() <= MAX_NAME_BYTES);
        // An honest sender lists its slice sorted and once each; put anything else in
        // that shape rather than trust it.
        if !entries.is_sorted_by(|a, b| a.name < b.name) {
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            entries.dedup_by(|a, b| a.name == b.name);
        }
        let slice = Digest {
            start,
            end,
            entries: Vec::new(),
        };
        let has_range = slice_range(&slice).is_some();
        let (inside, mut extra): (Vec<DigestEntry>, Vec<DigestEntry>) = entries
            .into_iter()
            .partition(|e| has_range && slice.covers(&e.name));
        if inside
            .binary_search_by(|e| e.name.as_str().cmp(&from.name))
            .is_err()
        {
            extra.push(DigestEntry {
                name: from.name.clone(),
                stamp: from.stamp,
            });
        }
        ReceivedDigest {
            slice: Digest {
                entries: inside,
                ..slice
            },
            extra,
        }
    }

    /// The slice's name range; `None` when it is empty.
    fn bounds(&self) -> Option<(Bound<&str>, Bound<&str>)> {
        slice_range(&self.slice)
    }
}

/// The name range a digest's slice covers; `None` when its start is not before its end.
fn slice_range(slice: &Digest) -> Option<(Bound<&str>, Bound<&str>)> {
    match (&slice.start, &slice.end) {
        (Some(s), Some(e)) if s >= e => None,
        _ => Some((
            slice
                .start
                .as_deref()
                .map_or(Bound::Unbounded, Bound::Included),
            slice
                .end
                .as_deref()
                .map_or(Bound::Unbounded, Bound::Excluded),
        )),
    }
}

/// The first of `names` that fit in `budget` bytes encoded, and the bytes they take.
fn wants_within(names: Vec<&str>, budget: usize) -> (Vec<String>, usize) {
    let mut used = 0;
    let mut wants = Vec::new();
    for name in names {
        let len = encoded_len(name);
        if used + len > budget {
            break;
        }
        used += len;
        wants.push(name.to_string());
    }
    (wants, used)
}

//! Merging: applying the records peers send to this node's view.
//!
//! Owns: the merge order (newer generation, then tombstone, then version; heartbeat by
//! max), learning members, new incarnations, and what others' copies of this node's own
//! record mean for it. Must not: choose what to send, or accept a record that would move
//! a member backwards (`assert_progress`).

use super::events::Event;
use super::liveness::observe_heartbeat;
use super::record::{assert_progress, Member};
use super::Membership;
use crate::config::{MAX_ADDRESS_BYTES, MAX_NAME_BYTES};
use crate::phi::PhiConfig;
use crate::wire::{encoded_len, MemberBody, MemberUpdate, Peer, Stamp, Status};

impl Membership {
    /// The heartbeat a message's sender declares for itself.
    pub(super) fn merge_heartbeat(&mut self, now: u64, from: &Peer) {
        if from.name == self.config.name {
            return;
        }
        if let Some(m) = self.members.get_mut(&from.name) {
            observe_heartbeat(
                &from.name,
                m,
                from.stamp,
                now,
                &mut self.events,
                &mut self.stats,
            );
        }
    }

    /// Applies records in order, stopping once one of them ends this process.
    pub(super) fn apply_updates(&mut self, now: u64, updates: Vec<MemberUpdate>) {
        for update in updates {
            if self.rejected.is_some() {
                return;
            }
            self.apply_update(now, update);
        }
    }

    /// One record from a peer: ignored when oversized or claiming a live member's name,
    /// learned when new; a newer generation replaces ours, the same one merges into it.
    fn apply_update(&mut self, now: u64, u: MemberUpdate) {
        if self.is_oversized(&u) {
            self.stats.ignored_records += 1;
            return;
        }
        if u.name == self.config.name {
            self.apply_own_record(u);
            return;
        }
        if let Some(body) = &u.body {
            if self.held_live_elsewhere(&u.name, &body.address, u.generation) {
                self.stats.ignored_records += 1;
                return;
            }
        }
        let Some(m) = self.members.get_mut(&u.name) else {
            self.learn(now, u);
            return;
        };
        if u.generation < m.generation {
            return;
        }
        let stamp = heartbeat_stamp(u.generation, u.heartbeat);
        let Some(body) = u.body else {
            observe_heartbeat(&u.name, m, stamp, now, &mut self.events, &mut self.stats);
            return;
        };
        let event = if u.generation > m.generation {
            m.replace_incarnation(
                u.name,
                u.generation,
                u.heartbeat,
                body,
                self.config.phi,
                now,
            )
        } else {
            observe_heartbeat(&u.name, m, stamp, now, &mut self.events, &mut self.stats);
            match m.merge_body(&u.name, body, now) {
                BodyMerge::Applied(event) => event,
                BodyMerge::NotNewer => None,
                BodyMerge::AddressConflict => {
                    self.stats.ignored_records += 1;
                    None
                }
            }
        };
        if let Some(event) = event {
            self.events.push(event, &mut self.stats);
        }
    }

    /// Whether a record has a field over the size limits; such a record is ignored whole.
    fn is_oversized(&self, u: &MemberUpdate) -> bool {
        u.name.is_empty()
            || u.name.len() > MAX_NAME_BYTES
            || u.body.as_ref().is_some_and(|b| {
                b.address.len() > MAX_ADDRESS_BYTES || encoded_len(&b.kv) > self.config.max_kv_bytes
            })
    }

    /// A record of a member we do not know.
    fn learn(&mut self, now: u64, u: MemberUpdate) {
        if self
            .floors
            .get(&u.name)
            .is_some_and(|f| f.generation >= u.generation)
        {
            return; // a stale copy of a forgotten tombstone's member
        }
        // A heartbeat alone cannot introduce a member: the digest exchange fetches the
        // record.
        let Some(body) = u.body else { return };
        if self.members.len() >= self.config.max_members {
            self.stats.refused_members += 1;
            return;
        }
        self.floors.remove(&u.name);
        let status = body.status;
        self.members.insert(
            u.name.clone(),
            Member::learned(u.generation, u.heartbeat, body, self.config.phi, now),
        );
        // A tombstone of a member never seen is kept silently, to stop stale copies of
        // it elsewhere.
        if !status.is_tombstone() {
            self.events.push(
                Event::Joined {
                    name: u.name.clone(),
                },
                &mut self.stats,
            );
            if status == Status::Leaving {
                self.events
                    .push(Event::Leaving { name: u.name }, &mut self.stats);
            }
        }
    }

    /// Others' copies of our own record matter when they end this process, or when they
    /// are ahead of it.
    fn apply_own_record(&mut self, u: MemberUpdate) {
        let Some(body) = u.body else {
            let stamp = heartbeat_stamp(u.generation, u.heartbeat);
            let name = self.config.name.clone();
            catch_up_own(&name, self.me_mut(), stamp);
            return;
        };
        let me = self.me();
        let newer = u.generation > me.generation;
        let ours_removed = u.generation == me.generation
            && body.status.is_tombstone()
            && !me.status.is_tombstone();
        let next = |g: u64| g.checked_add(1);
        if newer && self.config.fresh_identity && next(u.generation).is_some() {
            // Holding no data of its own, this process is a replacement: the newer
            // generation is a dead predecessor's (perhaps with a clock that ran ahead).
            self.reincarnate(u.generation + 1, Status::Alive);
        } else if newer && body.address != me.address {
            // Another process claiming our name elsewhere: this live one keeps it.
            self.stats.ignored_records += 1;
        } else if newer {
            self.reject_self(format!(
                "a newer incarnation of {} (generation {}, at {}) is in the cluster; this process (generation {}) must stop",
                u.name, u.generation, body.address, me.generation
            ));
        } else if ours_removed && body.status == Status::Removed && next(me.generation).is_some() {
            // Removed while running (a partition the operator took for a crash): what this
            // node acknowledged may be nowhere else, so it hands everything over first.
            let generation = me.generation + 1;
            self.reincarnate(generation, Status::Leaving);
        } else if ours_removed {
            self.reject_self(format!(
                "this node ({}, generation {}) was removed from the cluster by an operator who declared its data lost; wipe its data directory before starting it again",
                u.name, u.generation
            ));
        } else if u.generation == me.generation
            && !body.status.is_tombstone()
            && body.address == me.address
        {
            let stamp = Stamp {
                generation: u.generation,
                tombstone: false,
                version: body.version,
                heartbeat: u.heartbeat,
            };
            let name = self.config.name.clone();
            catch_up_own(&name, self.me_mut(), stamp);
        }
    }

    /// Takes `generation` in-process, with `status`, and tells the caller. The key-values
    /// stay: they describe this same process (its HTTP address, batching, storage), and
    /// what depends on the ring carries the ring it was computed on.
    fn reincarnate(&mut self, generation: u64, status: Status) {
        let name = self.config.name.clone();
        let me = self.me_mut();
        let before = me.stamp();
        me.generation = generation;
        me.heartbeat = 0;
        me.version = 0;
        me.status = status;
        assert_progress(&name, before, me.stamp());
        self.config.generation = generation;
        self.config.fresh_identity = false;
        let handing_over = status == Status::Leaving;
        self.events.push(
            Event::Reincarnated {
                generation,
                handing_over,
            },
            &mut self.stats,
        );
    }
}

/// What became of a body of the generation this node knows.
enum BodyMerge {
    /// Taken, with the event it makes (if any).
    Applied(Option<Event>),
    /// Not newer than ours: nothing changes.
    NotNewer,
    /// Same name and generation at another address: the one known first is kept.
    AddressConflict,
}

impl Member {
    /// A record of a newer generation replaces this one wholesale, detector included (the
    /// old incarnation's silence says nothing about the new one). The event is a restart,
    /// or the new incarnation's end if it already left or was removed (none if the old
    /// one had too).
    fn replace_incarnation(
        &mut self,
        name: String,
        generation: u64,
        heartbeat: u64,
        body: MemberBody,
        phi: PhiConfig,
        now: u64,
    ) -> Option<Event> {
        let before = self.stamp();
        let was_tombstone = self.status.is_tombstone();
        let status = body.status;
        *self = Member::learned(generation, heartbeat, body, phi, now);
        assert_progress(&name, before, self.stamp());
        match status {
            Status::Left | Status::Removed if was_tombstone => None,
            Status::Left => Some(Event::Left { name }),
            Status::Removed => Some(Event::Removed { name }),
            Status::Alive | Status::Leaving => Some(Event::Restarted { name, generation }),
        }
    }

    /// A body of the generation we know; applied only if newer.
    fn merge_body(&mut self, name: &str, body: MemberBody, now: u64) -> BodyMerge {
        if (body.status.is_tombstone(), body.version) <= (self.status.is_tombstone(), self.version)
        {
            return BodyMerge::NotNewer;
        }
        if !body.status.is_tombstone() && body.address != self.address {
            return BodyMerge::AddressConflict;
        }
        let before = self.stamp();
        let old = self.status;
        self.version = body.version;
        self.status = body.status;
        if body.status.is_tombstone() {
            self.kv.clear();
            self.tombstoned_at_ms = Some(now);
        } else {
            self.kv = body.kv;
        }
        assert_progress(name, before, self.stamp());
        let name = name.to_string();
        BodyMerge::Applied(match (old, body.status) {
            (Status::Alive, Status::Leaving) => Some(Event::Leaving { name }),
            (Status::Alive | Status::Leaving, Status::Left) => Some(Event::Left { name }),
            (Status::Alive | Status::Leaving, Status::Removed) => Some(Event::Removed { name }),
            _ => None,
        })
    }
}

/// The stamp of a heartbeat-only update: no tombstone and version 0, so that only the
/// heartbeat can move a record forward.
fn heartbeat_stamp(generation: u64, heartbeat: u64) -> Stamp {
    Stamp {
        generation,
        tombstone: false,
        version: 0,
        heartbeat,
    }
}

/// Others hold a later heartbeat or version of our own generation than we do: this
/// process restarted without a new generation (or its generation source went wrong).
/// Jump past their copy so our news is news again, as SWIM's refutation does; otherwise
/// peers would ignore us as stale until our counters caught up.
pub(super) fn catch_up_own(name: &str, me: &mut Member, stamp: Stamp) {
    if stamp.generation != me.generation || stamp.tombstone {
        return;
    }
    let before = me.stamp();
    me.heartbeat = me.heartbeat.max(stamp.heartbeat);
    if stamp.version > me.version {
        me.version = stamp.version + 1;
    }
    assert_progress(name, before, me.stamp());
}

//! The invariants a scenario is judged by, over the client history and every replica's
//! state. Each check returns human sentences naming the write, key and node involved.
//!
//! - Every value in any state (a read's answer or a replica's storage) was written by a
//!   client, to that key, as that kind (value or tombstone).
//! - A write is minted once: its value carries one dot everywhere it appears.
//! - Siblings are only concurrent writes: no state holds a value next to a value whose
//!   write's context *vector* saw it. (A value named only by an extra dot of a context
//!   may survive as a spurious sibling when the minting replica had not received it:
//!   counting it as seen would count older dots of its actor too; see `causality`.)
//! - An acknowledged write with `w` is, at the moment of the ack, in at least `w` replicas'
//!   storage (or already superseded there).
//! - A value carries the expiry its write was given, wherever it appears; no read shows a
//!   value as live once its expiry is past by every node's clock (`workload`).
//! - After heal and quiescence: every acknowledged write is in the final state or was
//!   superseded by a write whose client had been shown it (`Write::knew`: observation,
//!   not the server's contexts; a tombstone, or a value whose TTL is past on every
//!   node's clock, may also have been reaped); no value superseded by an acknowledged
//!   write's context vector is back (an expired value still supersedes: the reaper must
//!   not let an older version return); every replica agrees.

use std::collections::BTreeMap;
use std::sync::Arc;

use chorus_core::causality::Context;
use chorus_core::object::{decode_object, storage_key, Object};
use chorus_core::storage::{MemoryStorage, Storage};

use super::workload::{id_of, value_of, Dot, History, Outcome, Write, BUCKET};

/// Whether a context's version vector covers a dot: the supersession a replica always
/// applies, whatever it has received.
fn vector_covers(context: &Context, dot: Dot) -> bool {
    context.counter(dot.0) >= dot.1
}

/// A node's stored state of a key, read straight from its disk.
pub fn stored(disk: &MemoryStorage, ring_size: u32, key: &str) -> Option<Object> {
    let partition = chorus_ring::partition_of(ring_size, BUCKET, key.as_bytes());
    let bytes = disk
        .get(partition, &storage_key(BUCKET, key.as_bytes()))
        .expect("memory storage")?;
    Some(decode_object(&bytes).expect("stored objects decode"))
}

/// Checks one observed state of `key` (seen at `place`).
pub fn check_state(history: &mut History, key: &str, object: &Object, place: &str) {
    let dotted = object.dotted_values();
    history.max_siblings = history.max_siblings.max(dotted.len());
    let mut problems = Vec::new();
    let mut ids = Vec::new();
    for (actor, counter, sibling) in &dotted {
        let dot = (*actor, *counter);
        let Some(id) = id_of(&sibling.value) else {
            problems.push(format!(
                "{place}: key {key} holds a value no client wrote: {:?}",
                String::from_utf8_lossy(&sibling.value)
            ));
            continue;
        };
        match history.writes.get(&id) {
            None => problems.push(format!("{place}: key {key} holds w{id}, which no client wrote")),
            Some(w) if w.key != key || w.deleted != sibling.deleted => {
                problems.push(format!("{place}: key {key} holds w{id} (deleted: {}), but it was written to {} (deleted: {})", sibling.deleted, w.key, w.deleted))
            }
            Some(w) if w.expires_at_ms != sibling.expires_at_ms => problems.push(format!(
                "{place}: key {key} holds w{id} expiring at {:?}, but it was written expiring at {:?}",
                sibling.expires_at_ms, w.expires_at_ms
            )),
            Some(w) => {
                if let Outcome::Refused(why) = &w.outcome {
                    problems.push(format!("{place}: key {key} holds w{id}, which was refused ({why})"));
                }
            }
        }
        match history.seen_dots.get(&id) {
            Some(seen) if *seen != dot => problems.push(format!("{place}: write w{id} on {key} was minted twice: dots {seen:?} and {dot:?} (one client write became two versions)")),
            Some(_) => {}
            None => {
                history.seen_dots.insert(id, dot);
            }
        }
        ids.push((id, dot));
    }
    for (i, (a, dot_a)) in ids.iter().enumerate() {
        for (j, (b, _)) in ids.iter().enumerate() {
            if i == j {
                continue;
            }
            if a == b {
                problems.push(format!("{place}: key {key} holds w{a} twice"));
                continue;
            }
            if let Some(wb) = history.writes.get(b) {
                if vector_covers(&wb.context, *dot_a) {
                    problems.push(format!("{place}: key {key} holds w{a} as a sibling of w{b}, whose context saw it (not concurrent)"));
                }
            }
        }
    }
    problems.dedup();
    history.violations.extend(problems);
}

/// At the moment write `write` is acknowledged: at least `w` disks hold it (or a state that
/// already superseded it). Catches a replica that acknowledges before it stores.
pub fn check_ack(
    disks: &[(String, Arc<MemoryStorage>)],
    ring_size: u32,
    write: &Write,
    object: &Object,
    violations: &mut Vec<String>,
) {
    let value = value_of(write.id);
    let Some((actor, counter, _)) = object
        .dotted_values()
        .into_iter()
        .find(|(_, _, s)| s.value == value)
    else {
        return; // reported by the client as an ack without its value
    };
    let holders: Vec<&str> = disks
        .iter()
        .filter(|(_, disk)| {
            stored(disk, ring_size, &write.key)
                .is_some_and(|s| s.context().counter(actor) >= counter)
        })
        .map(|(name, _)| name.as_str())
        .collect();
    if holders.len() < write.w {
        violations.push(format!(
            "write w{} on {} was acknowledged with w={} but only {} replica(s) store it ({holders:?}): acknowledged before persisted",
            write.id,
            write.key,
            write.w,
            holders.len()
        ));
    }
}

/// After quiescence, at `true_now` (Unix ms, unskewed): no acknowledged write lost (a value
/// may be gone once its TTL is past by every node's clock), none superseded come back.
pub fn check_final(history: &mut History, finals: &BTreeMap<String, Object>, true_now: u64) {
    let mut problems = Vec::new();
    let writes: Vec<Write> = history.writes.values().cloned().collect();
    for w in &writes {
        let Outcome::Acked(dot) = w.outcome else {
            continue;
        };
        let state = finals.get(&w.key);
        let present = state.is_some_and(|s| {
            s.dotted_values()
                .iter()
                .any(|(a, c, v)| (*a, *c) == dot && v.value == value_of(w.id))
        });
        if present {
            continue;
        }
        // Superseded only by a write (that may have been stored) whose client was shown it.
        let superseded = writes.iter().any(|o| {
            o.key == w.key && o.knew.contains(&w.id) && !matches!(o.outcome, Outcome::Refused(_))
        });
        if superseded {
            continue;
        }
        if w.deleted {
            history.tombstones_reaped += 1;
            continue; // a tombstone may have been reaped once every replica had it
        }
        let skew = super::MAX_CLOCK_SKEW_MS as u64;
        if w.expires_at_ms.is_some_and(|at| at + skew <= true_now) {
            history.expired += 1;
            continue; // expired on every node, and may have been reaped
        }
        history.lost += 1;
        problems.push(format!(
            "acknowledged write w{} on {} (dot {dot:?}, w={}, at {} ms via {}) is lost: not in the final state {:?}, and no write's client had been shown it; {}",
            w.id,
            w.key,
            w.w,
            w.invoked_ms,
            w.node,
            state.map(|s| s.values().iter().map(|v| String::from_utf8_lossy(&v.value).into_owned()).collect::<Vec<_>>()),
            dropped_by(&writes, w, dot),
        ));
    }
    for (key, state) in finals {
        for (actor, counter, sibling) in state.dotted_values() {
            let Some(id) = id_of(&sibling.value) else {
                continue;
            };
            for o in &writes {
                if o.key == *key
                    && o.id != id
                    && matches!(o.outcome, Outcome::Acked(_))
                    && vector_covers(&o.context, (actor, counter))
                {
                    problems.push(format!("key {key}: w{id} is in the final state although acknowledged write w{} superseded it (resurrected)", o.id));
                }
            }
        }
    }
    history.violations.extend(problems);
}

/// The first write whose context covered a lost write's dot (the server's claim, used
/// only to name a suspect), with what its client had actually been shown.
fn dropped_by(writes: &[Write], lost: &Write, dot: Dot) -> String {
    let mut suspects = writes
        .iter()
        .filter(|o| o.key == lost.key && o.id != lost.id && o.context.covers(dot));
    match suspects.next() {
        None => "no write's context covered its dot: dropped by a replica or a merge".to_string(),
        Some(o) => format!(
            "dropped by w{} (the first of {} writes whose context covered its dot), whose client had been shown only {:?}",
            o.id,
            1 + suspects.count(),
            o.knew
        ),
    }
}

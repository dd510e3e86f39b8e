//! Per-key causality: dotted version vector sets (DVVSets, Almeida et al., "Dotted
//! Version Vectors: Logical Clocks for Optimistic Replication"; the design Riak 2.0
//! adopted in `dvvset.erl`), and the opaque [`Context`] token clients carry from a read
//! to the write that follows it.
//!
//! Owns: which versions of a key supersede which. A write carrying the context of a read
//! replaces exactly the versions that read saw; anything it did not see stays as a
//! sibling. Merging two replica states ([`Dvvs::sync`]) never drops a version the other
//! side has not superseded, whatever the merge order.
//!
//! Must not: do I/O, read clocks or use randomness. Causality never looks at wall time,
//! because a wall clock is how last-write-wins stores lose acknowledged writes. It does
//! not interpret values either: a tombstone is a value like any other here.
//!
//! Representation. A state is a list of entries `(actor, counter, values)` sorted by
//! actor. `counter` says the state has seen the dots `(actor, 1..=counter)`; `values`
//! holds the still-live values among the newest of them, newest first: `values[i]` has
//! the dot `(actor, counter - i)`. Everything below `counter - values.len()` (the entry's
//! *floor*) was seen and superseded. Live dots of one actor always form such a top
//! range, because a context is a version vector: covering a dot covers every older dot
//! of the same actor.
//!
//! The one assumption everything rests on: a dot names one value cluster-wide. Only the
//! replica owning an [`ActorId`] mints its dots, and it mints them on top of its own
//! state, which must still hold every dot it minted before for that key (see
//! [`Dvvs::update`]). Riak's anonymous values (written without any dot) are not needed:
//! our coordinators always mint a dot, so they are left out.

use std::fmt;
use std::io::Cursor;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Most actors a state or a context may name. An actor is a node that coordinated a
/// write of the key, so honest states stay far below; the bound only stops hostile input.
pub const MAX_ACTORS: usize = 1024;

/// Most values (siblings) a state may hold before it is rejected as corrupt or hostile.
/// This is a hard limit for validation, far above the soft limit the node should enforce
/// on writes (Riak warns at 25 and refuses writes at 100 siblings): a merge can at most
/// add up the siblings of its inputs, so states below a soft limit stay below this one.
pub const MAX_SIBLINGS: usize = 4096;

/// Largest counter a state may hold. A counter grows by one per write, so 2^62 cannot be
/// reached honestly; the bound keeps `counter + 1` from overflowing. (A write on a state
/// already at the limit yields a state that validation refuses: a loud failure for an
/// impossible case, rather than a wrapped counter that would reuse dots.)
pub const MAX_COUNTER: u64 = 1 << 62;

/// Largest counter a client context may carry. Lower than [`MAX_COUNTER`] so that a
/// forged context can push a key's counter up but never near overflow; 2^48 writes to
/// one key (about 9 years at a million writes a second) is not reachable honestly.
pub const MAX_CONTEXT_COUNTER: u64 = 1 << 48;

/// Longest context token accepted. [`MAX_ACTORS`] entries encode to about 26 KiB.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// Version of the context token format; bumped if its layout ever changes.
const CONTEXT_VERSION: u8 = 1;

/// Nesting depth the token decoder accepts: the format nests three levels deep, so
/// anything deeper is garbage and is refused before it can recurse.
const TOKEN_MAX_DEPTH: usize = 8;

/// Identity of a replica that mints dots: random, generated when a node creates its data
/// directory, so a wiped node never reuses the dots of its previous life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ActorId(pub u64);

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Why a context token was refused. Every message is a sentence a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error("context token is empty")]
    Empty,
    #[error("context token is {len} bytes long, over the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("context token is not URL-safe base64 without padding: {0}")]
    Base64(String),
    #[error("context token does not decode as a chorus context: {0}")]
    Malformed(String),
    #[error("context token has {0} unexpected bytes after its end")]
    TrailingBytes(usize),
    #[error("context token has format version {0}, this node only understands version {CONTEXT_VERSION}")]
    UnsupportedVersion(u8),
    #[error("context token names {count} actors, over the limit of {max}")]
    TooManyActors { count: usize, max: usize },
    #[error("context token names actor {0} twice")]
    DuplicateActor(ActorId),
    #[error("context token has a zero counter for actor {0}")]
    ZeroCounter(ActorId),
    #[error("context token has counter {counter} for actor {actor}, over the limit of {max}")]
    CounterTooLarge {
        actor: ActorId,
        counter: u64,
        max: u64,
    },
}

/// Why a replica state (typically received from another node) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("causal state has actor {actor} after actor {previous}: entries must be sorted by actor without duplicates")]
    Unsorted { previous: ActorId, actor: ActorId },
    #[error("causal state has a zero counter for actor {0}")]
    ZeroCounter(ActorId),
    #[error("causal state has counter {counter} for actor {actor}, over the limit of {max}")]
    CounterTooLarge {
        actor: ActorId,
        counter: u64,
        max: u64,
    },
    #[error("causal state has {values} values for actor {actor} but only {counter} dots")]
    MoreValuesThanDots {
        actor: ActorId,
        values: usize,
        counter: u64,
    },
    #[error("causal state names {count} actors, over the limit of {max}")]
    TooManyActors { count: usize, max: usize },
    #[error("causal state has {count} siblings, over the limit of {max}")]
    TooManySiblings { count: usize, max: usize },
}

/// What a client saw: a version vector, actor -> highest counter seen. Every dot at or
/// below it counts as seen. Opaque to clients ([`Context::encode`]); the default is the
/// empty context of a client that saw nothing (a blind write).
///
/// Invariant: sorted by actor, no duplicates, counters at least 1. Contexts built from
/// a state carry its counters; decoded ones are limited to [`MAX_CONTEXT_COUNTER`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ContextWire", into = "ContextWire")]
pub struct Context {
    vv: Vec<(ActorId, u64)>,
}

/// The versioned layout of a context, on the wire as a msgpack array `[version, vv]`.
#[derive(Serialize, Deserialize)]
struct ContextWire {
    version: u8,
    vv: Vec<(ActorId, u64)>,
}

impl From<Context> for ContextWire {
    fn from(context: Context) -> Self {
        ContextWire {
            version: CONTEXT_VERSION,
            vv: context.vv,
        }
    }
}

impl TryFrom<ContextWire> for Context {
    type Error = ContextError;

    /// Checks what a client could have tampered with. Order is not meaningful, so the
    /// vector is sorted rather than refused; duplicates would be ambiguous, so they are
    /// refused.
    fn try_from(wire: ContextWire) -> Result<Self, ContextError> {
        if wire.version != CONTEXT_VERSION {
            return Err(ContextError::UnsupportedVersion(wire.version));
        }
        let mut vv = wire.vv;
        if vv.len() > MAX_ACTORS {
            return Err(ContextError::TooManyActors {
                count: vv.len(),
                max: MAX_ACTORS,
            });
        }
        vv.sort_unstable();
        for (i, &(actor, counter)) in vv.iter().enumerate() {
            if i > 0 && vv[i - 1].0 == actor {
                return Err(ContextError::DuplicateActor(actor));
            }
            if counter == 0 {
                return Err(ContextError::ZeroCounter(actor));
            }
            if counter > MAX_CONTEXT_COUNTER {
                return Err(ContextError::CounterTooLarge {
                    actor,
                    counter,
                    max: MAX_CONTEXT_COUNTER,
                });
            }
        }
        Ok(Context { vv })
    }
}

impl Context {
    /// The token given to clients: msgpack of the versioned layout, base64 URL-safe
    /// without padding, so it fits in a header or a query string unescaped.
    pub fn encode(&self) -> String {
        let bytes = rmp_serde::to_vec(self).expect("a context always encodes to msgpack");
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Parses a token from a client. Never panics: anything but a token this node could
    /// have produced (up to order) is an error with a readable message.
    pub fn decode(token: &str) -> Result<Context, ContextError> {
        if token.is_empty() {
            return Err(ContextError::Empty);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(ContextError::TooLong {
                len: token.len(),
                max: MAX_TOKEN_LEN,
            });
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|e| ContextError::Base64(e.to_string()))?;
        // Look at the version alone first, so a token from a future format gets a clear
        // "unsupported version" rather than a parse error about its body.
        let (version, _): (u8, serde::de::IgnoredAny) = from_msgpack(&bytes)?;
        if version != CONTEXT_VERSION {
            return Err(ContextError::UnsupportedVersion(version));
        }
        let wire: ContextWire = from_msgpack(&bytes)?;
        Context::try_from(wire)
    }

    pub fn is_empty(&self) -> bool {
        self.vv.is_empty()
    }

    /// Every `(actor, counter)` entry, sorted by actor (for tools such as the chaos checker).
    pub fn entries(&self) -> &[(ActorId, u64)] {
        &self.vv
    }

    /// The highest counter of `actor` this context has seen (0 when none).
    pub fn counter(&self, actor: ActorId) -> u64 {
        match self.vv.binary_search_by_key(&actor, |&(a, _)| a) {
            Ok(i) => self.vv[i].1,
            Err(_) => 0,
        }
    }

    /// True when this context has seen every dot `other` has seen.
    pub fn descends(&self, other: &Context) -> bool {
        other
            .vv
            .iter()
            .all(|&(actor, counter)| self.counter(actor) >= counter)
    }
}

/// Decodes exactly one msgpack value filling all of `bytes`, with a small depth limit.
fn from_msgpack<'de, T: Deserialize<'de>>(bytes: &[u8]) -> Result<T, ContextError> {
    let mut de = rmp_serde::Deserializer::new(Cursor::new(bytes));
    de.set_max_depth(TOKEN_MAX_DEPTH);
    let value = T::deserialize(&mut de).map_err(|e| ContextError::Malformed(e.to_string()))?;
    let used = usize::try_from(de.position()).unwrap_or(usize::MAX);
    match bytes.len().saturating_sub(used) {
        0 => Ok(value),
        extra => Err(ContextError::TrailingBytes(extra)),
    }
}

/// The per-key state replicas store and ship to each other: every live value (sibling)
/// with its dot, and the causal history that says which other values it superseded.
///
/// Invariant (checked by [`Dvvs::validate`] whenever a state is deserialized, so a
/// corrupt or hostile state never exists as a `Dvvs`): entries sorted by actor without
/// duplicates, counters in `1..=MAX_COUNTER`, at most `counter` values per entry, at
/// most [`MAX_ACTORS`] entries and [`MAX_SIBLINGS`] values. `update` and `sync` keep the
/// structural part; the size limits are the node's to enforce on writes (see
/// [`MAX_SIBLINGS`]). The representation is canonical, so `==` compares states by meaning.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "DvvsWire<V>", bound(deserialize = "V: Deserialize<'de>"))]
pub struct Dvvs<V> {
    entries: Vec<Entry<V>>,
}

/// One actor's part of a state: dots `(actor, 1..=counter)` seen; `values` live, newest
/// first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry<V> {
    actor: ActorId,
    counter: u64,
    values: Vec<V>,
}

impl<V> Entry<V> {
    /// Dots at or below the floor were seen and superseded.
    fn floor(&self) -> u64 {
        let len = self.values.len() as u64;
        debug_assert!(len <= self.counter, "an entry holds more values than dots");
        self.counter - len
    }
}

/// Layout of a state as deserialized, before [`Dvvs::validate`] lets it become one.
#[derive(Deserialize)]
struct DvvsWire<V> {
    entries: Vec<Entry<V>>,
}

impl<V> TryFrom<DvvsWire<V>> for Dvvs<V> {
    type Error = StateError;

    fn try_from(wire: DvvsWire<V>) -> Result<Self, StateError> {
        let state = Dvvs {
            entries: wire.entries,
        };
        state.validate()?;
        Ok(state)
    }
}

impl<V> Default for Dvvs<V> {
    fn default() -> Self {
        Dvvs {
            entries: Vec::new(),
        }
    }
}

impl<V> Dvvs<V> {
    /// The state of a key nobody wrote: no history, no values.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the representation invariants (see [`Dvvs`]). Deserialization already
    /// runs it; it is public for states built by other means and for tests.
    pub fn validate(&self) -> Result<(), StateError> {
        if self.entries.len() > MAX_ACTORS {
            return Err(StateError::TooManyActors {
                count: self.entries.len(),
                max: MAX_ACTORS,
            });
        }
        let mut siblings = 0usize;
        for (i, entry) in self.entries.iter().enumerate() {
            let actor = entry.actor;
            if i > 0 && self.entries[i - 1].actor >= actor {
                return Err(StateError::Unsorted {
                    previous: self.entries[i - 1].actor,
                    actor,
                });
            }
            if entry.counter == 0 {
                return Err(StateError::ZeroCounter(actor));
            }
            if entry.counter > MAX_COUNTER {
                return Err(StateError::CounterTooLarge {
                    actor,
                    counter: entry.counter,
                    max: MAX_COUNTER,
                });
            }
            if entry.values.len() as u64 > entry.counter {
                return Err(StateError::MoreValuesThanDots {
                    actor,
                    values: entry.values.len(),
                    counter: entry.counter,
                });
            }
            siblings += entry.values.len();
        }
        if siblings > MAX_SIBLINGS {
            return Err(StateError::TooManySiblings {
                count: siblings,
                max: MAX_SIBLINGS,
            });
        }
        Ok(())
    }

    /// The context to hand a client that read this state: the version vector covering
    /// every dot it has seen (Riak's `join`).
    pub fn context(&self) -> Context {
        Context {
            vv: self.entries.iter().map(|e| (e.actor, e.counter)).collect(),
        }
    }

    /// The siblings: by actor, then newest first. Deterministic, so every replica
    /// holding the same state lists the same values in the same order.
    pub fn values(&self) -> Vec<&V> {
        self.entries.iter().flat_map(|e| e.values.iter()).collect()
    }

    /// Every live value with its dot `(actor, counter)`, in the order of [`Dvvs::values`].
    /// For checkers (the simulation's history checker) that follow one write by its dot.
    pub fn dotted_values(&self) -> Vec<(ActorId, u64, &V)> {
        self.entries
            .iter()
            .flat_map(|e| {
                e.values
                    .iter()
                    .enumerate()
                    .map(move |(i, v)| (e.actor, e.counter - i as u64, v))
            })
            .collect()
    }

    pub fn sibling_count(&self) -> usize {
        self.entries.iter().map(|e| e.values.len()).sum()
    }

    /// True for a state with no history at all, equal to [`Dvvs::new`]. (A state built
    /// by writes and merges that has history also holds a value: every write adds one,
    /// and only a later write, itself live or superseded in turn, removes it.)
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when `self` already holds everything in `other`, i.e. `sync(self, other) ==
    /// self`: read repair sends the merged state to replicas that do not descend it.
    pub fn descends(&self, other: &Self) -> bool {
        // Per actor, sync keeps our entry unchanged exactly when we have seen every dot
        // `other` has seen (counter) and we do not still hold a value `other` already
        // knows to be superseded (floor).
        other
            .entries
            .iter()
            .all(|theirs| match self.entry(theirs.actor) {
                Some(ours) => ours.counter >= theirs.counter && ours.floor() >= theirs.floor(),
                None => false,
            })
    }

    fn entry(&self, actor: ActorId) -> Option<&Entry<V>> {
        self.entries
            .binary_search_by_key(&actor, |e| e.actor)
            .ok()
            .map(|i| &self.entries[i])
    }
}

impl<V: Clone + PartialEq> Dvvs<V> {
    /// The coordinating replica's write. `self` is its local state, `context` what the
    /// client read (empty for a blind write), `actor` the coordinator's own id.
    ///
    /// Every value whose dot `context` covers is discarded: the client saw it (or saw
    /// something that superseded it) and this write replaces it. Values the context does
    /// not cover stay as siblings. The new value gets the dot `(actor, n + 1)` where `n`
    /// is the larger of `actor`'s counter in `self` and in `context`, so it is newer than
    /// every dot of `actor` either has seen.
    ///
    /// The context may come from any replica or from a merge of several (a quorum read):
    /// it is merged in as history, so values this replica has not received yet but the
    /// client saw are recorded as superseded and dropped when they arrive.
    ///
    /// Dots must never be reused, so `self` must hold every dot `actor` minted before
    /// for this key: coordinate on the replica's current stored state, never on a copy
    /// handed off and deleted, or use a fresh `ActorId` after losing data.
    pub fn update(&self, context: &Context, actor: ActorId, value: V) -> Self {
        let seen = Dvvs {
            entries: context
                .vv
                .iter()
                .map(|&(actor, counter)| Entry {
                    actor,
                    counter,
                    values: Vec::new(),
                })
                .collect(),
        };
        let mut next = self.sync(&seen);
        match next.entries.binary_search_by_key(&actor, |e| e.actor) {
            Ok(i) => {
                let entry = &mut next.entries[i];
                entry.counter = entry
                    .counter
                    .checked_add(1)
                    .expect("counters stay far below u64::MAX: states and contexts bound them");
                entry.values.insert(0, value);
            }
            Err(i) => next.entries.insert(
                i,
                Entry {
                    actor,
                    counter: 1,
                    values: vec![value],
                },
            ),
        }
        debug_assert!(
            next.context().descends(&self.context()),
            "a counter shrank in update"
        );
        debug_assert!(
            next.context().descends(context),
            "update forgot part of the context"
        );
        debug_assert_eq!(
            next.context().counter(actor),
            self.context().counter(actor).max(context.counter(actor)) + 1
        );
        next
    }

    /// Merges two replica states (Riak's `sync`): the union of both histories, keeping
    /// every value that the other side has not superseded. Commutative, associative and
    /// idempotent, so replicas converge whatever order merges happen in.
    pub fn sync(&self, other: &Self) -> Self {
        let mut entries = Vec::with_capacity(self.entries.len().max(other.entries.len()));
        let (mut ours, mut theirs) = (
            self.entries.iter().peekable(),
            other.entries.iter().peekable(),
        );
        loop {
            match (ours.peek(), theirs.peek()) {
                (Some(a), Some(b)) => match a.actor.cmp(&b.actor) {
                    std::cmp::Ordering::Less => entries.push(ours.next().cloned().expect("peeked")),
                    std::cmp::Ordering::Greater => {
                        entries.push(theirs.next().cloned().expect("peeked"))
                    }
                    std::cmp::Ordering::Equal => {
                        entries.push(merge_entry(a, b));
                        ours.next();
                        theirs.next();
                    }
                },
                (Some(_), None) => {
                    entries.extend(ours.cloned());
                    break;
                }
                (None, _) => {
                    entries.extend(theirs.cloned());
                    break;
                }
            }
        }
        let merged = Dvvs { entries };
        debug_assert!(
            merged.context().descends(&self.context()),
            "a counter shrank in sync"
        );
        debug_assert!(
            merged.context().descends(&other.context()),
            "a counter shrank in sync"
        );
        merged
    }
}

/// Merges one actor's entries from two states.
fn merge_entry<V: Clone>(a: &Entry<V>, b: &Entry<V>) -> Entry<V> {
    debug_assert_eq!(a.actor, b.actor);
    let (high, low) = if a.counter >= b.counter {
        (a, b)
    } else {
        (b, a)
    };
    // `low` has seen only dots `high` has seen too, so any value of `low` still live is
    // also in `high` (a dot names one value): the result's values come from `high`
    // alone. A value of `high` is dropped when `low` has seen its dot but no longer
    // holds it (the dot is at or below `low`'s floor): something `low` saw superseded it.
    let above_low_floor = high.counter - low.floor();
    let keep =
        usize::try_from(above_low_floor).map_or(high.values.len(), |n| n.min(high.values.len()));
    let merged = Entry {
        actor: high.actor,
        counter: high.counter,
        values: high.values[..keep].to_vec(),
    };
    assert!(
        merged.values.len() as u64 <= merged.counter,
        "an entry holds more values than dots"
    );
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;
    use std::collections::BTreeSet;

    // ---------------------------------------------------------------------------------
    // Examples mirroring the eunit tests of Riak's dvvset.erl. Riak's client clock
    // `new(join(C), [V])` is our context `C.context()`; `update(ClientClock, Local, Id)`
    // is `local.update(&context, id, value)`.

    const A: ActorId = ActorId(1);
    const B: ActorId = ActorId(2);
    const C: ActorId = ActorId(3);
    const X: ActorId = ActorId(24);

    type S = Dvvs<&'static str>;

    fn state(entries: &[(ActorId, u64, &[&'static str])]) -> S {
        let s = Dvvs {
            entries: entries
                .iter()
                .map(|&(actor, counter, values)| Entry {
                    actor,
                    counter,
                    values: values.to_vec(),
                })
                .collect(),
        };
        s.validate().expect("example states are valid");
        s
    }

    fn blind() -> Context {
        Context::default()
    }

    #[test]
    fn riak_join() {
        let a1 = S::new().update(&blind(), A, "v1");
        let b1 = a1.update(&a1.context(), B, "v2");
        assert!(S::new().context().is_empty());
        assert_eq!(a1.context().vv, vec![(A, 1)]);
        assert_eq!(b1.context().vv, vec![(A, 1), (B, 1)]);
    }

    #[test]
    fn riak_update() {
        let a0 = S::new().update(&blind(), A, "v1");
        let a1 = a0.update(&a0.context(), A, "v2");
        let a2 = a1.update(&a1.context(), B, "v3");
        let a3 = a1.update(&a0.context(), B, "v4");
        let a4 = a1.update(&a0.context(), A, "v5");
        assert_eq!(a0, state(&[(A, 1, &["v1"])]));
        assert_eq!(a1, state(&[(A, 2, &["v2"])]));
        assert_eq!(a2, state(&[(A, 2, &[]), (B, 1, &["v3"])]));
        assert_eq!(a3, state(&[(A, 2, &["v2"]), (B, 1, &["v4"])]));
        assert_eq!(a4, state(&[(A, 3, &["v5", "v2"])]));
    }

    #[test]
    fn riak_sync() {
        let x = state(&[(X, 1, &[])]);
        let a = S::new().update(&blind(), A, "v1");
        let y = S::new().update(&blind(), B, "v2");
        let a1 = S::new().update(&a.context(), A, "v2");
        let a3 = S::new().update(&a1.context(), B, "v3");
        let a4 = S::new().update(&a1.context(), C, "v3");
        let w = state(&[(A, 1, &[])]);
        let z = state(&[(A, 2, &["v2", "v1"])]);
        assert_eq!(w.sync(&z), state(&[(A, 2, &["v2"])]));
        assert_eq!(w.sync(&z), z.sync(&w));
        assert_eq!(a.sync(&a1), a1.sync(&a));
        assert_eq!(a4.sync(&a3), a3.sync(&a4));
        assert_eq!(
            a4.sync(&a3),
            state(&[(A, 2, &[]), (B, 1, &["v3"]), (C, 1, &["v3"])])
        );
        assert_eq!(x.sync(&a), state(&[(A, 1, &["v1"]), (X, 1, &[])]));
        assert_eq!(x.sync(&a), a.sync(&x));
        assert_eq!(a.sync(&y), state(&[(A, 1, &["v1"]), (B, 1, &["v2"])]));
        assert_eq!(y.sync(&a), a.sync(&y));
    }

    #[test]
    fn riak_sync_update() {
        let a0 = S::new().update(&blind(), A, "v1"); // Mary writes v1 without a context
        let vv1 = a0.context(); // Peter reads v1
        let a1 = a0.update(&blind(), A, "v2"); // Mary writes v2 without a context
        let a2 = a1.update(&vv1, A, "v3"); // Peter writes v3 with the context of v1
        assert_eq!(vv1.vv, vec![(A, 1)]);
        assert_eq!(a1, state(&[(A, 2, &["v2", "v1"])]));
        assert_eq!(a1.sibling_count(), 2);
        // v3 supersedes v1, which Peter saw, and not v2, which he did not.
        assert_eq!(a2, state(&[(A, 3, &["v3", "v2"])]));
        // Resolution: a write with the context of a read of both siblings leaves one.
        let resolved = a2.update(&a2.context(), A, "v4");
        assert_eq!(resolved.values(), vec![&"v4"]);
    }

    #[test]
    fn descends_examples() {
        let a0 = S::new().update(&blind(), A, "v1");
        let a1 = a0.update(&a0.context(), A, "v2");
        let b1 = a0.update(&blind(), B, "v3");
        assert!(a1.descends(&a0) && !a0.descends(&a1));
        assert!(!a1.descends(&b1) && !b1.descends(&a1));
        assert!(a1.sync(&b1).descends(&a1) && a1.sync(&b1).descends(&b1));
        assert!(a0.descends(&S::new()) && !S::new().descends(&a0));
        // Same counters, but `z` still holds v1 which `w` knows was superseded.
        let w = state(&[(A, 2, &["v2"])]);
        let z = state(&[(A, 2, &["v2", "v1"])]);
        assert!(w.descends(&z) && !z.descends(&w));
        assert!(a1.context().descends(&a0.context()) && !a0.context().descends(&a1.context()));
    }

    #[test]
    fn context_from_a_stale_replica_still_supersedes() {
        // Replica A holds v1 (dot B:1 minted by B) and v2; the client read both through
        // a fresher replica, then writes through a replica that has not received v2.
        let at_b = S::new().update(&blind(), B, "v1");
        let fresh = at_b.update(&blind(), B, "v2");
        let written = at_b.update(&fresh.context(), A, "v3");
        assert_eq!(written, state(&[(A, 1, &["v3"]), (B, 2, &[])]));
        // When v2 arrives later it is recognised as superseded.
        assert_eq!(written.sync(&fresh), written);
        assert!(written.descends(&fresh));
    }

    #[test]
    fn new_dot_is_above_what_the_context_saw() {
        // The context saw dots A:1 and A:2 that this copy of the state lacks (a replica
        // that lost them). The new dot must be A:3, not a reused A:1.
        let full = S::new().update(&blind(), A, "v1").update(&blind(), A, "v2");
        let written = S::new().update(&full.context(), A, "v3");
        assert_eq!(written, state(&[(A, 3, &["v3"])]));
        assert_eq!(written.sync(&full), written);
        assert_eq!(full.sync(&written), written);
        // Same when the local copy holds some of them: A:1 here, A:1..=A:3 seen.
        let partial = S::new().update(&blind(), A, "v1");
        let written = partial.update(&written.context(), A, "v4");
        assert_eq!(written, state(&[(A, 4, &["v4"])]));
    }

    // ---------------------------------------------------------------------------------
    // Random histories against a model. The model knows, for each replica, the set of
    // writes in its causal history, and for each write, the writes its context covered
    // (what it superseded). The values a state must hold are then exactly
    // live(H) = H minus everything superseded by some write in H.

    #[derive(Clone, Debug)]
    enum Op {
        /// Quorum read: merge of the replicas in a bitmask (0 means all of them).
        Read(u8),
        /// A write coordinated by a replica, with the context of an earlier read (biased
        /// to recent ones, sometimes stale) or none.
        Write { replica: Index, read: Option<Index> },
        /// One-way repair: `to` merges in the state of `from`.
        Sync { from: Index, to: Index },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => any::<u8>().prop_map(Op::Read),
            3 => (any::<Index>(), proptest::option::weighted(0.7, any::<Index>()))
                .prop_map(|(replica, read)| Op::Write { replica, read }),
            2 => (any::<Index>(), any::<Index>()).prop_map(|(from, to)| Op::Sync { from, to }),
        ]
    }

    /// Distinct random actor ids (random, so sorting differs from replica order).
    fn actors() -> impl Strategy<Value = Vec<ActorId>> {
        proptest::collection::btree_set(any::<u64>(), 3..=3)
            .prop_map(|ids| ids.into_iter().map(ActorId).collect::<Vec<_>>())
            .prop_shuffle()
    }

    fn history() -> impl Strategy<Value = (Vec<ActorId>, Vec<Op>)> {
        (actors(), proptest::collection::vec(op(), 1..40))
    }

    type Writes = BTreeSet<u32>;

    struct Read {
        context: Context,
        values: Writes,
        history: Writes,
    }

    struct Sim {
        actors: Vec<ActorId>,
        states: Vec<Dvvs<u32>>,
        histories: Vec<Writes>,
        /// Per write id: the writes its context covered.
        superseded: Vec<Writes>,
        /// Per write id: its dot.
        dots: Vec<(ActorId, u64)>,
        reads: Vec<Read>,
        /// Every state seen, with its model history, for the algebraic properties.
        pool: Vec<(Dvvs<u32>, Writes)>,
    }

    fn set_of(state: &Dvvs<u32>) -> Writes {
        state.values().into_iter().copied().collect()
    }

    impl Sim {
        fn run(actors: Vec<ActorId>, ops: &[Op]) -> Result<Sim, TestCaseError> {
            let n = actors.len();
            let mut sim = Sim {
                actors,
                states: vec![Dvvs::new(); n],
                histories: vec![Writes::new(); n],
                superseded: Vec::new(),
                dots: Vec::new(),
                reads: Vec::new(),
                pool: Vec::new(),
            };
            for op in ops {
                sim.apply(op)?;
                for i in 0..n {
                    sim.check(&sim.states[i], &sim.histories[i])?;
                    sim.pool
                        .push((sim.states[i].clone(), sim.histories[i].clone()));
                }
            }
            Ok(sim)
        }

        fn live(&self, history: &Writes) -> Writes {
            let dead: Writes = history
                .iter()
                .flat_map(|&w| self.superseded[w as usize].iter().copied())
                .collect();
            history.difference(&dead).copied().collect()
        }

        /// A state agrees with its model history: exactly the live writes as values
        /// (each once), a context covering exactly the history, and valid invariants.
        fn check(&self, state: &Dvvs<u32>, history: &Writes) -> Result<(), TestCaseError> {
            prop_assert_eq!(state.validate(), Ok(()));
            let values = set_of(state);
            prop_assert_eq!(values.len(), state.sibling_count(), "a value is held twice");
            prop_assert_eq!(&values, &self.live(history));
            let context = state.context();
            for (w, &(actor, counter)) in self.dots.iter().enumerate() {
                prop_assert_eq!(
                    context.counter(actor) >= counter,
                    history.contains(&(w as u32))
                );
            }
            Ok(())
        }

        fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
            let n = self.actors.len();
            match op {
                Op::Read(mask) => {
                    let mask = if mask % (1 << n) == 0 {
                        (1 << n) - 1
                    } else {
                        mask % (1 << n)
                    };
                    let mut merged = Dvvs::new();
                    let mut history = Writes::new();
                    for i in (0..n).filter(|i| mask & (1 << i) != 0) {
                        merged = merged.sync(&self.states[i]);
                        history.extend(&self.histories[i]);
                    }
                    self.check(&merged, &history)?;
                    self.reads.push(Read {
                        context: merged.context(),
                        values: set_of(&merged),
                        history: history.clone(),
                    });
                    self.pool.push((merged, history));
                }
                Op::Write { replica, read } => {
                    let r = replica.index(n);
                    let actor = self.actors[r];
                    let w = self.superseded.len() as u32;
                    let read = match read {
                        Some(i) if !self.reads.is_empty() => {
                            let back = i.index(self.reads.len().min(4));
                            Some(&self.reads[self.reads.len() - 1 - back])
                        }
                        _ => None,
                    };
                    let empty = Context::default();
                    let (context, seen, saw) = match read {
                        Some(read) => (&read.context, read.history.clone(), read.values.clone()),
                        None => (&empty, Writes::new(), Writes::new()),
                    };
                    let old = &self.states[r];
                    let new = old.update(context, actor, w);
                    let counter = old.context().counter(actor).max(context.counter(actor)) + 1;
                    prop_assert_eq!(new.context().counter(actor), counter);
                    // Supersedes exactly what the read saw: its values are gone, local
                    // values it did not see remain, next to the new one.
                    let values = set_of(&new);
                    prop_assert!(saw.iter().all(|v| !values.contains(v)));
                    let mut expected: Writes = set_of(old).difference(&seen).copied().collect();
                    expected.insert(w);
                    prop_assert_eq!(values, expected);
                    self.states[r] = new;
                    self.histories[r].extend(&seen);
                    self.histories[r].insert(w);
                    self.superseded.push(seen);
                    self.dots.push((actor, counter));
                }
                Op::Sync { from, to } => {
                    let (from, to) = (from.index(n), to.index(n));
                    self.states[to] = self.states[to].sync(&self.states[from]);
                    let from_history = self.histories[from].clone();
                    self.histories[to].extend(from_history);
                    prop_assert!(self.states[to].descends(&self.states[from]));
                }
            }
            Ok(())
        }
    }

    /// A valid state with few actors and small counters, so entries often collide.
    fn arbitrary_state() -> impl Strategy<Value = Dvvs<u32>> {
        proptest::collection::btree_map(0u64..4, (1u64..5, 0usize..5), 0..4).prop_map(|entries| {
            Dvvs {
                entries: entries
                    .into_iter()
                    .map(|(actor, (counter, len))| Entry {
                        actor: ActorId(actor),
                        counter,
                        values: (0..len.min(counter as usize))
                            .map(|i| (actor * 100 + counter) as u32 - i as u32)
                            .collect(),
                    })
                    .collect(),
            }
        })
    }

    fn merge_in_order(states: &[Dvvs<u32>], order: &[usize]) -> Dvvs<u32> {
        order
            .iter()
            .fold(Dvvs::new(), |acc, &i| acc.sync(&states[i]))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The model agrees after every step, and no acknowledged write is lost by any
        /// merge order: each write is in the final state or superseded by a later write.
        #[test]
        fn histories_match_model_and_lose_nothing(
            (actors, ops) in history(),
            order1 in Just(vec![0usize, 1, 2]).prop_shuffle(),
            order2 in Just(vec![0usize, 1, 2]).prop_shuffle(),
        ) {
            let sim = Sim::run(actors, &ops)?;
            let final1 = merge_in_order(&sim.states, &order1);
            let final2 = merge_in_order(&sim.states, &order2);
            // Pairwise first, then the third: a differently shaped merge tree.
            let final3 = sim.states[order1[2]].sync(&sim.states[order1[0]].sync(&sim.states[order1[1]]));
            prop_assert_eq!(&final1, &final2);
            prop_assert_eq!(&final1, &final3);
            let all: Writes = sim.histories.iter().flatten().copied().collect();
            sim.check(&final1, &all)?;
            let superseded: Writes = sim.superseded.iter().flatten().copied().collect();
            let values = set_of(&final1);
            for w in 0..sim.superseded.len() as u32 {
                prop_assert!(values.contains(&w) != superseded.contains(&w), "write {} lost or resurrected", w);
            }
        }

        /// sync is commutative, associative and idempotent, its result descends both
        /// inputs and holds the live writes of both histories; descends() agrees with
        /// sync(a, b) == a.
        #[test]
        fn sync_is_a_join_and_descends_agrees(
            (actors, ops) in history(),
            picks in proptest::collection::vec((any::<Index>(), any::<Index>(), any::<Index>()), 1..8),
        ) {
            let sim = Sim::run(actors, &ops)?;
            for (i, j, k) in picks {
                let (a, ha) = &sim.pool[i.index(sim.pool.len())];
                let (b, hb) = &sim.pool[j.index(sim.pool.len())];
                let (c, _) = &sim.pool[k.index(sim.pool.len())];
                let ab = a.sync(b);
                prop_assert_eq!(&ab, &b.sync(a));
                prop_assert_eq!(a.sync(&b.sync(c)), ab.sync(c));
                prop_assert_eq!(&a.sync(a), a);
                prop_assert!(ab.descends(a) && ab.descends(b));
                prop_assert!(ab.context().descends(&a.context()));
                prop_assert_eq!(a.descends(b), &ab == a);
                prop_assert_eq!(b.descends(a), &ab == b);
                let both: Writes = ha.union(hb).copied().collect();
                sim.check(&ab, &both)?;
            }
        }

        /// Two writes that did not see each other both survive as siblings, through the
        /// same coordinator or two different ones, whatever the merge order.
        #[test]
        fn concurrent_writes_become_siblings(
            (actors, ops) in history(),
            first in any::<Index>(),
            second in any::<Index>(),
            with_context in any::<bool>(),
        ) {
            let sim = Sim::run(actors, &ops)?;
            let context = match sim.reads.last() {
                Some(read) if with_context => read.context.clone(),
                _ => Context::default(),
            };
            let (r1, r2) = (first.index(3), second.index(3));
            let one = sim.states[r1].update(&context, sim.actors[r1], 1000);
            let base = if r1 == r2 { &one } else { &sim.states[r2] };
            let two = base.update(&context, sim.actors[r2], 1001);
            for merged in [one.sync(&two), two.sync(&one)] {
                let values = set_of(&merged);
                prop_assert!(values.contains(&1000) && values.contains(&1001));
            }
        }

        /// States from the wire: deserialization accepts exactly the valid ones, and
        /// whatever it accepts can be merged and written without a panic.
        #[test]
        fn deserialized_states_are_validated(
            raw in proptest::collection::vec(
                (0u64..6, prop_oneof![Just(0u64), 1u64..6, Just(MAX_COUNTER), Just(u64::MAX)],
                 proptest::collection::vec(any::<u32>(), 0..5)),
                0..5),
        ) {
            let bytes = rmp_serde::to_vec(&(raw.clone(),)).unwrap();
            let parsed = rmp_serde::from_slice::<Dvvs<u32>>(&bytes);
            let sorted = raw.windows(2).all(|w| w[0].0 < w[1].0);
            let sane = raw.iter().all(|(_, n, vs)| *n >= 1 && *n <= MAX_COUNTER && vs.len() as u64 <= *n);
            prop_assert_eq!(parsed.is_ok(), sorted && sane, "{:?}", parsed);
            if let Ok(state) = parsed {
                prop_assert_eq!(&state.sync(&state), &state);
                prop_assert!(state.descends(&state));
                let written = state.update(&state.context(), ActorId(3), 7);
                // A write on a counter already at the limit leaves it (unreachable honestly).
                let at_limit = state.context().counter(ActorId(3)) == MAX_COUNTER;
                prop_assert_eq!(written.validate().is_ok(), !at_limit);
                prop_assert_eq!(written.values(), vec![&7]);
                let again = rmp_serde::from_slice::<Dvvs<u32>>(&rmp_serde::to_vec(&written).unwrap());
                prop_assert_eq!(again.ok(), (!at_limit).then_some(written));
            }
        }

        /// descends() agrees with sync(a, b) == a even on arbitrary valid states, where
        /// the floor matters (in histories, seeing more dots implies a higher floor).
        #[test]
        fn descends_agrees_with_sync_on_arbitrary_states(
            a in arbitrary_state(),
            b in arbitrary_state(),
        ) {
            prop_assert_eq!(a.descends(&b), a.sync(&b) == a);
            prop_assert_eq!(b.descends(&a), b.sync(&a) == b);
        }

        #[test]
        fn context_round_trips(
            vv in proptest::collection::btree_map(any::<u64>(), 1..=MAX_CONTEXT_COUNTER, 0..20),
        ) {
            let context = Context { vv: vv.into_iter().map(|(a, n)| (ActorId(a), n)).collect() };
            let token = context.encode();
            prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            prop_assert_eq!(Context::decode(&token), Ok(context.clone()));
            let via_serde: Context = rmp_serde::from_slice(&rmp_serde::to_vec(&context).unwrap()).unwrap();
            prop_assert_eq!(via_serde, context);
        }

        /// Arbitrary strings, arbitrary bytes behind valid base64, and every prefix of a
        /// valid token: decode never panics, and its errors read as sentences.
        #[test]
        fn decode_never_panics(text in ".{0,200}", bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let valid = Context { vv: vec![(ActorId(u64::MAX), 3), (ActorId(5), 1)] }.encode();
            let candidates = [text.clone(), URL_SAFE_NO_PAD.encode(&bytes), format!("{valid}{text}")]
                .into_iter()
                .chain((0..valid.len()).map(|i| valid[..i].to_string()));
            for token in candidates {
                if let Err(e) = Context::decode(&token) {
                    let message = e.to_string();
                    prop_assert!(message.starts_with("context token "), "{}", message);
                    prop_assert!(!message.contains('\n'));
                }
            }
        }

        /// Well-formed msgpack with hostile content: accepted exactly when valid.
        #[test]
        fn decode_checks_content(
            version in 0u8..3,
            vv in proptest::collection::vec(
                (0u64..5, prop_oneof![Just(0u64), 1u64..10, Just(MAX_CONTEXT_COUNTER),
                                      Just(MAX_CONTEXT_COUNTER + 1), Just(u64::MAX)]),
                0..6),
        ) {
            let token = URL_SAFE_NO_PAD.encode(rmp_serde::to_vec(&(version, &vv)).unwrap());
            let decoded = Context::decode(&token);
            let actors: BTreeSet<u64> = vv.iter().map(|&(a, _)| a).collect();
            let valid = version == CONTEXT_VERSION
                && actors.len() == vv.len()
                && vv.iter().all(|&(_, n)| (1..=MAX_CONTEXT_COUNTER).contains(&n));
            prop_assert_eq!(decoded.is_ok(), valid, "{:?}", decoded);
            if let Ok(context) = decoded {
                let mut sorted = vv.clone();
                sorted.sort_unstable();
                prop_assert_eq!(context.vv, sorted.into_iter().map(|(a, n)| (ActorId(a), n)).collect::<Vec<_>>());
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // Context limits and hostile states, by example.

    #[test]
    fn context_errors_by_example() {
        assert_eq!(Context::decode(""), Err(ContextError::Empty));
        let long = "A".repeat(MAX_TOKEN_LEN + 1);
        assert!(matches!(
            Context::decode(&long),
            Err(ContextError::TooLong { .. })
        ));
        assert!(matches!(
            Context::decode("a=="),
            Err(ContextError::Base64(_))
        ));
        assert!(matches!(
            Context::decode("not base64!"),
            Err(ContextError::Base64(_))
        ));
        fn token<T: Serialize>(value: &T) -> String {
            URL_SAFE_NO_PAD.encode(rmp_serde::to_vec(value).unwrap())
        }
        assert!(matches!(
            Context::decode(&token(&"a string")),
            Err(ContextError::Malformed(_))
        ));
        assert_eq!(
            Context::decode(&token(&(2u8, ()))),
            Err(ContextError::UnsupportedVersion(2))
        );
        assert_eq!(
            Context::decode(&token(&(1u8, vec![(4u64, 1u64), (4, 2)]))),
            Err(ContextError::DuplicateActor(ActorId(4)))
        );
        assert_eq!(
            Context::decode(&token(&(1u8, vec![(4u64, 0u64)]))),
            Err(ContextError::ZeroCounter(ActorId(4)))
        );
        let mut trailing = rmp_serde::to_vec(&(1u8, vec![(4u64, 1u64)])).unwrap();
        trailing.push(0);
        assert_eq!(
            Context::decode(&URL_SAFE_NO_PAD.encode(trailing)),
            Err(ContextError::TrailingBytes(1))
        );
        let mut deep = vec![0x91u8; 10_000]; // arrays of one element, nested 10k deep
        deep.push(0);
        assert!(matches!(
            Context::decode(&URL_SAFE_NO_PAD.encode(deep)),
            Err(ContextError::Malformed(_))
        ));
        let too_many: Vec<(u64, u64)> = (0..=MAX_ACTORS as u64).map(|a| (a, 1)).collect();
        assert_eq!(
            Context::decode(&token(&(1u8, too_many))),
            Err(ContextError::TooManyActors {
                count: MAX_ACTORS + 1,
                max: MAX_ACTORS
            })
        );
    }

    #[test]
    fn largest_context_fits_the_token_limit() {
        let vv = (0..MAX_ACTORS as u64)
            .map(|a| (ActorId(u64::MAX - a), MAX_CONTEXT_COUNTER))
            .rev()
            .collect();
        let context = Context { vv };
        let token = context.encode();
        assert!(token.len() <= MAX_TOKEN_LEN, "{} bytes", token.len());
        assert_eq!(Context::decode(&token), Ok(context));
    }

    #[test]
    fn token_for_three_actors_is_small() {
        let vv = vec![
            (ActorId(0x1b2c_3d4e_5f60_7182), 1_234),
            (ActorId(0x9a8b_7c6d_5e4f_3021), 56),
            (ActorId(0xf0e1_d2c3_b4a5_9687), 7),
        ];
        let token = Context { vv }.encode();
        eprintln!("context token for 3 actors: {} bytes: {token}", token.len());
        assert!(token.len() <= 64, "{} bytes", token.len());
    }

    #[test]
    fn hostile_states_are_rejected_on_deserialization() {
        fn parse(entries: Vec<(u64, u64, Vec<u32>)>) -> Result<Dvvs<u32>, String> {
            rmp_serde::from_slice(&rmp_serde::to_vec(&(entries,)).unwrap())
                .map_err(|e| e.to_string())
        }
        let expect = |entries, error: StateError| {
            let message = parse(entries).unwrap_err();
            assert!(message.contains(&error.to_string()), "{message}");
        };
        assert!(parse(vec![(1, 2, vec![7, 8]), (2, 1, vec![])]).is_ok());
        expect(
            vec![(2, 1, vec![]), (1, 1, vec![])],
            StateError::Unsorted {
                previous: ActorId(2),
                actor: ActorId(1),
            },
        );
        expect(
            vec![(1, 1, vec![]), (1, 2, vec![])],
            StateError::Unsorted {
                previous: ActorId(1),
                actor: ActorId(1),
            },
        );
        expect(vec![(1, 0, vec![])], StateError::ZeroCounter(ActorId(1)));
        expect(
            vec![(1, u64::MAX, vec![])],
            StateError::CounterTooLarge {
                actor: ActorId(1),
                counter: u64::MAX,
                max: MAX_COUNTER,
            },
        );
        expect(
            vec![(1, 1, vec![7, 8])],
            StateError::MoreValuesThanDots {
                actor: ActorId(1),
                values: 2,
                counter: 1,
            },
        );
        let actors = (0..=MAX_ACTORS as u64).map(|a| (a, 1, vec![])).collect();
        expect(
            actors,
            StateError::TooManyActors {
                count: MAX_ACTORS + 1,
                max: MAX_ACTORS,
            },
        );
        let siblings = vec![(1, 10_000, vec![0; MAX_SIBLINGS + 1])];
        expect(
            siblings,
            StateError::TooManySiblings {
                count: MAX_SIBLINGS + 1,
                max: MAX_SIBLINGS,
            },
        );
    }
}

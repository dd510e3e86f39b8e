//! Per-key causality: dotted version vector sets (DVVSets, Almeida et al., "Dotted
//! Version Vectors: Logical Clocks for Optimistic Replication"; the design Riak 2.0
//! adopted in `dvvset.erl`), and the opaque [`Context`] token clients carry from a read
//! (or a write's answer) to the write that follows it.
//!
//! Owns: which versions of a key supersede which. A write carrying a context replaces
//! exactly the versions that context covers; anything else stays as a sibling. Merging
//! two replica states ([`Dvvs::sync`]) never drops a version the other side has not
//! superseded, whatever the merge order. And what a context handed to a client covers
//! ([`Dvvs::write_answer`]): only versions that client was shown.
//!
//! Must not: do I/O, read clocks or use randomness. Causality never looks at wall time,
//! because a wall clock is how last-write-wins stores lose acknowledged writes. It does
//! not interpret values either: a tombstone is a value like any other here.
//!
//! Representation. A state is a list of entries `(actor, counter, values)` sorted by
//! actor. `counter` says the state has seen the dots `(actor, 1..=counter)`; `values`
//! holds the still-live values among them with their dot counters, newest first. A dot
//! at or below `counter` that `values` does not hold was seen and superseded. Live dots
//! of one actor need not be the newest ones: a dotted context (below) supersedes one
//! dot without covering the older dots of the same actor.
//!
//! Contexts. A context is a version vector plus a few extra dots ([`MAX_EXTRA_DOTS`]).
//! A version vector cannot say "a:5 but not a:4", so the context a write answers with
//! is the request's context plus exactly the new dot, unless the write left its value
//! alone in the state (then nothing unseen is left to cover and the state's whole vector
//! is returned). A GET answers with the merged state's vector: it covers what it shows
//! and what those values superseded. [`Dvvs::update`] drops a value whose dot the
//! context covers, but raises the state's counters by the vector part only: an extra dot
//! the minting replica has not received yet then survives as a (spurious) sibling when
//! it arrives, never a lost value.
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
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most actors a state or a context's version vector may name. An actor is a node that
/// coordinated a write of the key, so honest states stay far below; the bound only stops
/// hostile input.
pub const MAX_ACTORS: usize = 1024;

/// Most extra dots a context carries besides its version vector. A write's answer adds
/// one; past the bound the oldest is dropped, which only makes the context cover less (a
/// later write with it leaves a sibling it could have replaced, never drops one).
pub const MAX_EXTRA_DOTS: usize = 32;

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

/// Longest context token accepted. [`MAX_ACTORS`] entries plus [`MAX_EXTRA_DOTS`] dots
/// encode to about 27 KiB.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// Token format versions: 1 is a bare version vector (`[1, vv]`), 2 adds the extra dots
/// (`[2, vv, dots]`). A context without extra dots is still written as version 1.
const CONTEXT_V1: u8 = 1;
const CONTEXT_V2: u8 = 2;

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

/// One version's name: the actor that minted it and its counter.
pub type Dot = (ActorId, u64);

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
    #[error("context token has format version {0}, this node only understands versions {CONTEXT_V1} and {CONTEXT_V2}")]
    UnsupportedVersion(u8),
    #[error("context token names {count} actors, over the limit of {max}")]
    TooManyActors { count: usize, max: usize },
    #[error("context token has {count} extra dots, over the limit of {max}")]
    TooManyDots { count: usize, max: usize },
    #[error("context token names actor {0} twice")]
    DuplicateActor(ActorId),
    #[error("context token has the dot {counter} of actor {actor} twice")]
    DuplicateDot { actor: ActorId, counter: u64 },
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
    #[error("causal state lists {dots} dots for {values} values of actor {actor}")]
    DotCountMismatch {
        actor: ActorId,
        values: usize,
        dots: usize,
    },
    #[error("causal state has live dot {dot} of actor {actor} out of order or outside 1..={counter}: dots must be distinct, newest first")]
    BadDot {
        actor: ActorId,
        dot: u64,
        counter: u64,
    },
    #[error("causal state names {count} actors, over the limit of {max}")]
    TooManyActors { count: usize, max: usize },
    #[error("causal state has {count} siblings, over the limit of {max}")]
    TooManySiblings { count: usize, max: usize },
}

/// What a client saw: a version vector (actor -> highest counter seen; every dot at or
/// below it counts as seen) plus a few extra dots seen without the dots below them.
/// Opaque to clients ([`Context::encode`]); the default is the empty context of a client
/// that saw nothing (a blind write).
///
/// Invariant: the vector is sorted by actor, without duplicates, counters at least 1;
/// the extra dots are distinct, oldest first, at most [`MAX_EXTRA_DOTS`], and each is
/// neither covered by the vector nor next above it (such a dot is folded into the
/// vector). Decoded contexts are limited to [`MAX_CONTEXT_COUNTER`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ContextWire", into = "ContextWire")]
pub struct Context {
    vv: Vec<(ActorId, u64)>,
    dots: Vec<Dot>,
}

/// The versioned layout of a context, on the wire as a msgpack array `[1, vv]` or
/// `[2, vv, dots]`.
#[derive(Serialize, Deserialize)]
struct ContextWire {
    version: u8,
    vv: Vec<(ActorId, u64)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    dots: Vec<Dot>,
}

impl From<Context> for ContextWire {
    fn from(context: Context) -> Self {
        let version = if context.dots.is_empty() {
            CONTEXT_V1
        } else {
            CONTEXT_V2
        };
        ContextWire {
            version,
            vv: context.vv,
            dots: context.dots,
        }
    }
}

/// Refuses a zero counter or one over [`MAX_CONTEXT_COUNTER`].
fn check_context_counter(actor: ActorId, counter: u64) -> Result<(), ContextError> {
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
    Ok(())
}

impl TryFrom<ContextWire> for Context {
    type Error = ContextError;

    /// Checks what a client could have tampered with. Order of the vector is not
    /// meaningful, so it is sorted rather than refused; duplicates would be ambiguous, so
    /// they are refused. Extra dots the vector covers or continues are folded into it.
    fn try_from(wire: ContextWire) -> Result<Self, ContextError> {
        match wire.version {
            CONTEXT_V2 => {}
            CONTEXT_V1 if wire.dots.is_empty() => {}
            CONTEXT_V1 => {
                return Err(ContextError::Malformed(
                    "a version 1 token has no extra dots".into(),
                ))
            }
            other => return Err(ContextError::UnsupportedVersion(other)),
        }
        let mut vv = wire.vv;
        if vv.len() > MAX_ACTORS {
            return Err(ContextError::TooManyActors {
                count: vv.len(),
                max: MAX_ACTORS,
            });
        }
        if wire.dots.len() > MAX_EXTRA_DOTS {
            return Err(ContextError::TooManyDots {
                count: wire.dots.len(),
                max: MAX_EXTRA_DOTS,
            });
        }
        vv.sort_unstable();
        for (i, &(actor, counter)) in vv.iter().enumerate() {
            if i > 0 && vv[i - 1].0 == actor {
                return Err(ContextError::DuplicateActor(actor));
            }
            check_context_counter(actor, counter)?;
        }
        for (i, &(actor, counter)) in wire.dots.iter().enumerate() {
            check_context_counter(actor, counter)?;
            if wire.dots[..i].contains(&(actor, counter)) {
                return Err(ContextError::DuplicateDot { actor, counter });
            }
        }
        let mut context = Context {
            vv,
            dots: Vec::new(),
        };
        for dot in wire.dots {
            context.add_dot(dot);
        }
        debug_assert!(context.is_canonical(), "decoded {context:?}");
        Ok(context)
    }
}

/// The first element of a token's array, read alone, so a token from a future format
/// gets a clear "unsupported version" rather than a parse error about its body.
struct TokenVersion(u8);

impl<'de> Deserialize<'de> for TokenVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct First;
        impl<'de> Visitor<'de> for First {
            type Value = TokenVersion;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array starting with a format version")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TokenVersion, A::Error> {
                let version = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(TokenVersion(version))
            }
        }
        deserializer.deserialize_seq(First)
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
    /// have produced (up to order and folding) is an error with a readable message.
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
        let TokenVersion(version) = from_msgpack(&bytes)?;
        if version != CONTEXT_V1 && version != CONTEXT_V2 {
            return Err(ContextError::UnsupportedVersion(version));
        }
        let wire: ContextWire = from_msgpack(&bytes)?;
        Context::try_from(wire)
    }

    pub fn is_empty(&self) -> bool {
        self.vv.is_empty() && self.dots.is_empty()
    }

    /// The version vector's `(actor, counter)` entries, sorted by actor.
    pub fn entries(&self) -> &[(ActorId, u64)] {
        &self.vv
    }

    /// The extra dots, oldest first.
    pub fn extra_dots(&self) -> &[Dot] {
        &self.dots
    }

    /// The version vector's counter of `actor` (0 when none); extra dots not included.
    pub fn counter(&self, actor: ActorId) -> u64 {
        match self.vv.binary_search_by_key(&actor, |&(a, _)| a) {
            Ok(i) => self.vv[i].1,
            Err(_) => 0,
        }
    }

    /// True when this context has seen the dot.
    pub fn covers(&self, (actor, counter): Dot) -> bool {
        self.counter(actor) >= counter || self.dots.contains(&(actor, counter))
    }

    /// True when this context has seen every dot `other` has seen.
    pub fn descends(&self, other: &Context) -> bool {
        // No extra dot continues the vector (it would be folded), so a vector entry of
        // `other` is covered only by a vector entry at least as high.
        other
            .vv
            .iter()
            .all(|&(actor, counter)| self.counter(actor) >= counter)
            && other.dots.iter().all(|&dot| self.covers(dot))
    }

    /// This context plus one dot: what a write's answer carries (see [`Dvvs::write_answer`]).
    pub fn with_dot(&self, dot: Dot) -> Context {
        let mut context = self.clone();
        context.add_dot(dot);
        debug_assert!(context.is_canonical(), "{self:?} with {dot:?}: {context:?}");
        context
    }

    /// Everything either context has seen (extra dots past the bound dropped, oldest
    /// first, and never a new actor in the vector beyond [`MAX_ACTORS`]: both only make
    /// the result cover less).
    pub fn join(&self, other: &Context) -> Context {
        let mut vv = self.vv.clone();
        for &(actor, counter) in &other.vv {
            match vv.binary_search_by_key(&actor, |&(a, _)| a) {
                Ok(i) => vv[i].1 = vv[i].1.max(counter),
                Err(i) if vv.len() < MAX_ACTORS => vv.insert(i, (actor, counter)),
                Err(_) => {}
            }
        }
        let mut joined = Context {
            vv,
            dots: Vec::new(),
        };
        for &dot in self.dots.iter().chain(&other.dots) {
            joined.add_dot(dot);
        }
        debug_assert!(
            joined.is_canonical(),
            "{self:?} joined {other:?}: {joined:?}"
        );
        debug_assert!(
            self.vv.iter().all(|&(a, n)| joined.counter(a) >= n),
            "a join lowered a counter of its left side"
        );
        joined
    }

    /// The representation invariant (see [`Context`]): the vector sorted by actor without
    /// duplicates, counters at least 1; the extra dots distinct, at most
    /// [`MAX_EXTRA_DOTS`], each neither covered by the vector nor next above it. For
    /// debug assertions wherever a context is built.
    fn is_canonical(&self) -> bool {
        self.vv.windows(2).all(|w| w[0].0 < w[1].0)
            && self.vv.iter().all(|&(_, n)| n >= 1)
            && self.dots.len() <= MAX_EXTRA_DOTS
            && self.dots.iter().enumerate().all(|(i, &(a, n))| {
                n > self.counter(a).saturating_add(1) && !self.dots[..i].contains(&(a, n))
            })
    }

    /// Adds a dot, keeping the invariant: a covered dot changes nothing, one next above
    /// the vector is folded into it (with any extra dots it then reaches), any other is
    /// appended, dropping the oldest past [`MAX_EXTRA_DOTS`].
    fn add_dot(&mut self, (actor, counter): Dot) {
        if self.covers((actor, counter)) {
            return;
        }
        if counter == self.counter(actor) + 1 {
            match self.vv.binary_search_by_key(&actor, |&(a, _)| a) {
                Ok(i) => self.vv[i].1 = counter,
                Err(i) if self.vv.len() < MAX_ACTORS => self.vv.insert(i, (actor, counter)),
                // A new actor past the bound: leaving the dot out only covers less.
                Err(_) => return,
            }
            let mut top = counter;
            while let Some(j) = self.dots.iter().position(|&d| d == (actor, top + 1)) {
                self.dots.remove(j);
                top += 1;
            }
            if top != counter {
                let i = self
                    .vv
                    .binary_search_by_key(&actor, |&(a, _)| a)
                    .expect("just inserted");
                self.vv[i].1 = top;
            }
            return;
        }
        self.push_extra((actor, counter));
    }

    fn push_extra(&mut self, dot: Dot) {
        self.dots.push(dot);
        if self.dots.len() > MAX_EXTRA_DOTS {
            self.dots.remove(0);
        }
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
/// duplicates, counters in `1..=MAX_COUNTER`, each entry's live dots distinct, newest
/// first and in `1..=counter`, at most [`MAX_ACTORS`] entries and [`MAX_SIBLINGS`]
/// values. `update` and `sync` keep the structural part; the size limits are the node's
/// to enforce on writes (see [`MAX_SIBLINGS`]). The representation is canonical, so `==`
/// compares states by meaning.
///
/// Encoding: an entry is the array `[actor, counter, values]` when its live dots are the
/// newest ones (`counter`, `counter - 1`, ...), exactly the layout of the first build, so
/// existing data and its Merkle hashes stay byte-identical; otherwise
/// `[actor, counter, values, dots]`, the dot counters aligned with the values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "DvvsWire<V>", bound(deserialize = "V: Deserialize<'de>"))]
pub struct Dvvs<V> {
    entries: Vec<Entry<V>>,
}

/// One actor's part of a state: dots `(actor, 1..=counter)` seen; `values` live, with
/// their dot counters, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry<V> {
    actor: ActorId,
    counter: u64,
    values: Vec<(u64, V)>,
}

impl<V> Entry<V> {
    /// True when the live dots are the newest ones, `counter` down (the first layout).
    fn is_top_range(&self) -> bool {
        self.values
            .iter()
            .enumerate()
            .all(|(i, &(dot, _))| dot == self.counter - i as u64)
    }

    /// Whether the value with dot `(actor, dot)` is live here.
    fn holds(&self, dot: u64) -> bool {
        // Newest first: larger dots come before.
        self.values.binary_search_by(|&(d, _)| dot.cmp(&d)).is_ok()
    }
}

impl<V: Serialize> Serialize for Entry<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Values<'a, V>(&'a [(u64, V)]);
        impl<V: Serialize> Serialize for Values<'_, V> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(|(_, v)| v))
            }
        }
        struct Dots<'a, V>(&'a [(u64, V)]);
        impl<V> Serialize for Dots<'_, V> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter().map(|(d, _)| d))
            }
        }
        let top = self.is_top_range();
        let mut tuple = serializer.serialize_tuple(if top { 3 } else { 4 })?;
        tuple.serialize_element(&self.actor)?;
        tuple.serialize_element(&self.counter)?;
        tuple.serialize_element(&Values(&self.values))?;
        if !top {
            tuple.serialize_element(&Dots(&self.values))?;
        }
        tuple.end()
    }
}

/// An entry as deserialized: `dots` is absent in the first (top-range) layout.
struct EntryWire<V> {
    actor: ActorId,
    counter: u64,
    values: Vec<V>,
    dots: Option<Vec<u64>>,
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for EntryWire<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for EntryVisitor<V> {
            type Value = EntryWire<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an entry [actor, counter, values] or [actor, counter, values, dots]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EntryWire<V>, A::Error> {
                let missing = |i| de::Error::invalid_length(i, &"3 or 4 elements");
                let actor = seq.next_element()?.ok_or_else(|| missing(0))?;
                let counter = seq.next_element()?.ok_or_else(|| missing(1))?;
                let values = seq.next_element()?.ok_or_else(|| missing(2))?;
                let dots = seq.next_element()?;
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(5, &"3 or 4 elements"));
                }
                Ok(EntryWire {
                    actor,
                    counter,
                    values,
                    dots,
                })
            }
        }
        deserializer.deserialize_seq(EntryVisitor(std::marker::PhantomData))
    }
}

impl<V> EntryWire<V> {
    /// Pairs values with their dots: the listed ones, or the top range below `counter`.
    fn into_entry(self) -> Result<Entry<V>, StateError> {
        let (actor, counter) = (self.actor, self.counter);
        let dots = match self.dots {
            Some(dots) if dots.len() != self.values.len() => {
                return Err(StateError::DotCountMismatch {
                    actor,
                    values: self.values.len(),
                    dots: dots.len(),
                })
            }
            Some(dots) => dots,
            None if self.values.len() as u64 > counter => {
                return Err(StateError::MoreValuesThanDots {
                    actor,
                    values: self.values.len(),
                    counter,
                })
            }
            None => (0..self.values.len() as u64).map(|i| counter - i).collect(),
        };
        Ok(Entry {
            actor,
            counter,
            values: dots.into_iter().zip(self.values).collect(),
        })
    }
}

/// Layout of a state as deserialized, before [`Dvvs::validate`] lets it become one.
#[derive(Deserialize)]
#[serde(bound(deserialize = "V: Deserialize<'de>"))]
struct DvvsWire<V> {
    entries: Vec<EntryWire<V>>,
}

impl<V> TryFrom<DvvsWire<V>> for Dvvs<V> {
    type Error = StateError;

    fn try_from(wire: DvvsWire<V>) -> Result<Self, StateError> {
        let state = Dvvs {
            entries: wire
                .entries
                .into_iter()
                .map(EntryWire::into_entry)
                .collect::<Result<_, _>>()?,
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
            let mut above = entry.counter + 1;
            for &(dot, _) in &entry.values {
                if dot == 0 || dot >= above {
                    return Err(StateError::BadDot {
                        actor,
                        dot,
                        counter: entry.counter,
                    });
                }
                above = dot;
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
    /// every dot it has seen (Riak's `join`). It covers the values shown and what they
    /// superseded, nothing concurrent the client is not shown.
    pub fn context(&self) -> Context {
        Context {
            vv: self.entries.iter().map(|e| (e.actor, e.counter)).collect(),
            dots: Vec::new(),
        }
    }

    /// The highest counter of `actor` this state has seen (0 when none).
    pub fn counter(&self, actor: ActorId) -> u64 {
        self.entry(actor).map_or(0, |e| e.counter)
    }

    /// The siblings: by actor, then newest first. Deterministic, so every replica
    /// holding the same state lists the same values in the same order.
    pub fn values(&self) -> Vec<&V> {
        self.entries
            .iter()
            .flat_map(|e| e.values.iter().map(|(_, v)| v))
            .collect()
    }

    /// Every live value with its dot `(actor, counter)`, in the order of [`Dvvs::values`].
    /// For checkers (the simulation's history checker) that follow one write by its dot.
    pub fn dotted_values(&self) -> Vec<(ActorId, u64, &V)> {
        self.entries
            .iter()
            .flat_map(|e| e.values.iter().map(move |(d, v)| (e.actor, *d, v)))
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
        // `other` has seen (counter) and we do not still hold a value `other` has seen
        // and no longer holds (it knows that value was superseded).
        other
            .entries
            .iter()
            .all(|theirs| match self.entry(theirs.actor) {
                Some(ours) => {
                    ours.counter >= theirs.counter
                        && ours
                            .values
                            .iter()
                            .filter(|&&(dot, _)| dot <= theirs.counter)
                            .all(|&(dot, _)| theirs.holds(dot))
                }
                None => false,
            })
    }

    /// The context a write's answer carries, for the state `self` it minted with `dot`
    /// over the `request` context. It covers only what that client was shown: what the
    /// request covered and its own write. When the write left its value alone in the
    /// state, every other dot the state has seen was superseded by values the client saw
    /// (transitively), so the state's whole vector is safe and keeps the token small;
    /// otherwise a concurrent sibling is live and only the new dot is added (a vector
    /// would cover the sibling too).
    pub fn write_answer(&self, request: &Context, dot: Dot) -> Context {
        let alone = self.sibling_count() == 1
            && self
                .entry(dot.0)
                .is_some_and(|e| e.values.first().is_some_and(|&(d, _)| d == dot.1));
        let answer = if alone {
            self.context().join(request)
        } else {
            request.with_dot(dot)
        };
        // What the client was shown is what its request covered and its own write: the
        // answer covers no other live value (issue 14: a context covering a concurrent
        // sibling lets the client's next write drop it unseen).
        debug_assert!(
            self.dotted_values().iter().all(|&(a, n, _)| {
                (a, n) == dot || request.covers((a, n)) || !answer.covers((a, n))
            }),
            "a write's answer covers a live value its client was not shown"
        );
        // It covers the write itself, unless the vector is at the actor bound and the dot
        // names a new actor (leaving it out only covers less).
        debug_assert!(
            answer.covers(dot) || request.vv.len() >= MAX_ACTORS,
            "a write's answer does not cover the write"
        );
        debug_assert!(
            answer.vv.len() >= MAX_ACTORS
                || request.vv.iter().all(|&(a, n)| answer.counter(a) >= n),
            "a write's answer forgot part of its request's vector"
        );
        answer
    }

    /// Whether the value with `dot` is live in this state.
    fn holds_dot(&self, (actor, counter): Dot) -> bool {
        self.entry(actor).is_some_and(|e| e.holds(counter))
    }

    /// The structural part of the representation invariant (see [`Dvvs`]; the size limits
    /// are the node's to enforce): entries sorted by actor without duplicates, counters at
    /// least 1, each entry's live dots distinct, newest first and in `1..=counter`.
    /// `update` and `sync` keep it; debug builds check that they do.
    fn is_well_formed(&self) -> bool {
        self.entries.windows(2).all(|w| w[0].actor < w[1].actor)
            && self.entries.iter().all(|e| {
                e.counter >= 1
                    && e.values.first().is_none_or(|&(d, _)| d <= e.counter)
                    && e.values.last().is_none_or(|&(d, _)| d >= 1)
                    && e.values.windows(2).all(|w| w[0].0 > w[1].0)
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
    /// client was shown (empty for a blind write), `actor` the coordinator's own id.
    ///
    /// Every value whose dot `context` covers (by its vector or as an extra dot) is
    /// discarded: the client saw it (or saw something that superseded it) and this write
    /// replaces it. Values the context does not cover stay as siblings. The new value
    /// gets the dot `(actor, n + 1)` where `n` is the larger of `actor`'s counter in
    /// `self` and in the context's vector, so it is newer than every dot of `actor`
    /// either has seen.
    ///
    /// The context may come from any replica or from a merge of several (a quorum read):
    /// its vector is merged in as history, so values this replica has not received yet
    /// but the client saw are recorded as superseded and dropped when they arrive. Extra
    /// dots are not: counting `a:5` as seen would also count `a:4`, which the client may
    /// not have seen. A value named by an extra dot that arrives later stays a sibling.
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
        if !context.dots.is_empty() {
            for entry in &mut next.entries {
                let actor = entry.actor;
                entry
                    .values
                    .retain(|&(dot, _)| !context.dots.contains(&(actor, dot)));
            }
        }
        match next.entries.binary_search_by_key(&actor, |e| e.actor) {
            Ok(i) => {
                let entry = &mut next.entries[i];
                entry.counter = entry
                    .counter
                    .checked_add(1)
                    .expect("counters stay far below u64::MAX: states and contexts bound them");
                entry.values.insert(0, (entry.counter, value));
            }
            Err(i) => next.entries.insert(
                i,
                Entry {
                    actor,
                    counter: 1,
                    values: vec![(1, value)],
                },
            ),
        }
        debug_assert!(
            next.context().descends(&self.context()),
            "a counter shrank in update"
        );
        debug_assert!(
            context.vv.iter().all(|&(a, n)| next.counter(a) >= n),
            "update forgot part of the context"
        );
        debug_assert_eq!(
            next.counter(actor),
            self.counter(actor).max(context.counter(actor)) + 1
        );
        let dot = (actor, next.counter(actor));
        // The minted dot is new: the state it is minted on has not seen it, so it names no
        // other value (a reused dot would make a merge take one value for the other).
        debug_assert!(
            self.counter(actor) < dot.1 && !self.holds_dot(dot),
            "minted dot {dot:?} was already seen by the state it is minted on"
        );
        debug_assert!(next.holds_dot(dot), "the minted value is not live");
        debug_assert!(next.is_well_formed(), "update broke the representation");
        debug_assert!(
            next.descends(self),
            "an update does not descend the state it was minted on"
        );
        // Exactly what the context covers is superseded: every covered value is gone, and
        // every value it does not cover stays a sibling.
        debug_assert!(
            next.dotted_values()
                .iter()
                .all(|&(a, n, _)| (a, n) == dot || !context.covers((a, n))),
            "update kept a value its context covers"
        );
        debug_assert!(
            self.dotted_values()
                .iter()
                .all(|&(a, n, _)| context.covers((a, n)) || next.holds_dot((a, n))),
            "update dropped a value its context does not cover"
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
        debug_assert!(merged.is_well_formed(), "sync broke the representation");
        // The merge descends both inputs (no counter shrank, no superseded value came
        // back), and drops a value of either only when the other side superseded it.
        debug_assert!(
            merged.descends(self),
            "a merge does not descend its left input"
        );
        debug_assert!(
            merged.descends(other),
            "a merge does not descend its right input"
        );
        debug_assert!(
            self.dotted_values().iter().all(|&(a, n, _)| {
                merged.holds_dot((a, n)) || (other.counter(a) >= n && !other.holds_dot((a, n)))
            }),
            "a merge dropped a value of its left input that the right had not superseded"
        );
        debug_assert!(
            other.dotted_values().iter().all(|&(a, n, _)| {
                merged.holds_dot((a, n)) || (self.counter(a) >= n && !self.holds_dot((a, n)))
            }),
            "a merge dropped a value of its right input that the left had not superseded"
        );
        debug_assert!(
            merged.sibling_count() <= self.sibling_count() + other.sibling_count(),
            "a merge made up siblings"
        );
        merged
    }
}

/// Merges one actor's entries from two states: a value stays live when both hold it, or
/// when the side lacking it has not seen its dot yet. A dot one side has seen and no
/// longer holds was superseded there. (A dot names one value, so when both hold it,
/// either copy will do.)
fn merge_entry<V: Clone>(a: &Entry<V>, b: &Entry<V>) -> Entry<V> {
    debug_assert_eq!(a.actor, b.actor);
    let mut values = Vec::with_capacity(a.values.len().max(b.values.len()));
    let (mut x, mut y) = (a.values.iter().peekable(), b.values.iter().peekable());
    loop {
        let next = match (x.peek(), y.peek()) {
            (Some(&&(da, _)), Some(&&(db, _))) if da == db => {
                y.next();
                x.next()
            }
            (Some(&&(da, _)), Some(&&(db, _))) if da > db => x.next().filter(|_| da > b.counter),
            (Some(_), Some(&&(db, _))) => y.next().filter(|_| db > a.counter),
            (Some(&&(da, _)), None) => x.next().filter(|_| da > b.counter),
            (None, Some(&&(db, _))) => y.next().filter(|_| db > a.counter),
            (None, None) => break,
        };
        values.extend(next.cloned());
    }
    debug_assert!(
        values.windows(2).all(|w| w[0].0 > w[1].0),
        "merged dots of {:?} are not distinct and newest first",
        a.actor
    );
    Entry {
        actor: a.actor,
        counter: a.counter.max(b.counter),
        values,
    }
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

    /// A state whose live dots are the newest of each actor (the layout of Riak's DVVSet).
    fn state(entries: &[(ActorId, u64, &[&'static str])]) -> S {
        let dotted: Vec<DottedEntry> = entries
            .iter()
            .map(|&(actor, counter, values)| {
                let values = values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (counter - i as u64, *v))
                    .collect();
                (actor, counter, values)
            })
            .collect();
        dotted_state(&dotted)
    }

    /// One entry of an example state: actor, counter, live `(dot, value)`s newest first.
    type DottedEntry = (ActorId, u64, Vec<(u64, &'static str)>);

    /// A state with explicit live dots.
    fn dotted_state(entries: &[DottedEntry]) -> S {
        let s = Dvvs {
            entries: entries
                .iter()
                .map(|(actor, counter, values)| Entry {
                    actor: *actor,
                    counter: *counter,
                    values: values.clone(),
                })
                .collect(),
        };
        s.validate().expect("example states are valid");
        s
    }

    fn blind() -> Context {
        Context::default()
    }

    /// A state built around validation (`Dvvs` fields are private, so only this module
    /// can): the debug assertions of `update` catch a mint over it, which would reuse a
    /// dot. (The merge with the context inside `update` passes the bad entry on first.)
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "sync broke the representation")]
    fn a_mint_over_a_state_holding_a_dot_above_its_counter_fires() {
        // A live value with dot a:2 under a counter of 1: the next mint of `a` is a:2 again.
        let broken: S = Dvvs {
            entries: vec![Entry {
                actor: A,
                counter: 1,
                values: vec![(2, "old")],
            }],
        };
        assert!(broken.validate().is_err(), "validation refuses it");
        broken.update(&blind(), A, "new");
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "sync broke the representation")]
    fn a_sync_of_a_malformed_state_fires() {
        // Live dots oldest first: a merge that passed it on would store it.
        let broken: S = Dvvs {
            entries: vec![Entry {
                actor: A,
                counter: 2,
                values: vec![(1, "v1"), (2, "v2")],
            }],
        };
        broken.sync(&S::new());
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
        // A gap: `g` dropped A:2 but holds A:1, which `w` knows was superseded.
        let g = dotted_state(&[(A, 3, vec![(3, "v3"), (1, "v1")])]);
        let h = dotted_state(&[(A, 3, vec![(3, "v3")])]);
        assert!(h.descends(&g) && !g.descends(&h));
        assert_eq!(g.sync(&h), h);
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
    // Dotted contexts and write answers, by example.

    /// Issue 14's four steps on one key of a 3-replica cluster (replicas' actors A, B, C):
    /// v1 written blind through A, replicated everywhere; v2 written blind through B; v3
    /// written through B with the answer of v2's write. v1 was never shown to that writer,
    /// so it must survive; with the state's whole vector as the answer (the first build)
    /// it was dropped.
    #[test]
    fn a_write_with_its_answer_context_keeps_a_sibling_it_never_saw() {
        let v1 = S::new().update(&blind(), A, "v1");
        let (at_a, at_b) = (v1.clone(), v1.clone());
        let v2 = at_b.update(&blind(), B, "v2");
        let answer = v2.write_answer(&blind(), (B, 1));
        assert!(!answer.covers((A, 1)), "v1 was not shown: {answer:?}");
        assert!(answer.covers((B, 1)));
        let v3 = v2.update(&answer, B, "v3");
        let merged = v3.sync(&at_a);
        assert_eq!(set(&merged), BTreeSet::from(["v1", "v3"]));
        // The bug, put back: the whole state's vector covers v1.
        let old = v2.update(&v2.context(), B, "v3");
        assert_eq!(set(&old.sync(&at_a)), BTreeSet::from(["v3"]));
    }

    fn set(state: &S) -> BTreeSet<&'static str> {
        state.values().into_iter().copied().collect()
    }

    #[test]
    fn an_answer_is_the_whole_vector_when_the_write_left_its_value_alone() {
        let v1 = S::new().update(&blind(), A, "v1");
        let v2 = v1.update(&v1.context(), A, "v2");
        assert_eq!(v2.write_answer(&v1.context(), (A, 2)), v2.context());
        // A request's extra dot the state has not seen stays in the answer.
        let request = Context::default().with_dot((B, 7));
        let v3 = v2.update(&request.join(&v2.context()), A, "v3");
        let answer = v3.write_answer(&request.join(&v2.context()), (A, 3));
        assert_eq!(answer.vv, vec![(A, 3)]);
        assert_eq!(answer.dots, vec![(B, 7)]);
    }

    #[test]
    fn an_extra_dot_drops_one_value_and_leaves_older_ones() {
        // A:1 and A:2 are concurrent siblings; a client shown only A:2 (its own write).
        let s = S::new().update(&blind(), A, "v1").update(&blind(), A, "v2");
        let shown = Context::default().with_dot((A, 2));
        assert_eq!(shown.vv, vec![]);
        assert_eq!(shown.dots, vec![(A, 2)]);
        let w = s.update(&shown, A, "v3");
        assert_eq!(w, dotted_state(&[(A, 3, vec![(3, "v3"), (1, "v1")])]));
        // A replica that still holds A:2 learns it was superseded; A:1 stays live.
        assert_eq!(w.sync(&s), w);
        assert_eq!(s.sync(&w), w);
        // Its encoding lists the dots; a top-range state keeps the first build's layout.
        let bytes = rmp_serde::to_vec(&w).unwrap();
        let back: Dvvs<String> = rmp_serde::from_slice(&bytes).unwrap();
        let dots = |s: Vec<(ActorId, u64, String)>| s;
        assert_eq!(
            dots(
                back.dotted_values()
                    .into_iter()
                    .map(|(a, n, v)| (a, n, v.clone()))
                    .collect()
            ),
            dots(
                w.dotted_values()
                    .into_iter()
                    .map(|(a, n, v)| (a, n, v.to_string()))
                    .collect()
            )
        );
        type Layout = (Vec<(u64, u64, Vec<String>, Vec<u64>)>,);
        let layout: Layout = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(layout.0[0].3, vec![3, 1]);
        let top: (Vec<(u64, u64, Vec<String>)>,) =
            rmp_serde::from_slice(&rmp_serde::to_vec(&s).unwrap()).unwrap();
        assert_eq!(
            top.0,
            vec![(1, 2, vec!["v2".to_string(), "v1".to_string()])]
        );
    }

    /// The first build's entry type, as its nodes decode it: a dotted entry (four
    /// elements) must be refused there, not misread as a top range.
    #[test]
    fn a_first_build_node_refuses_a_dotted_entry() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct FirstBuildEntry {
            actor: u64,
            counter: u64,
            values: Vec<String>,
        }
        let dotted = dotted_state(&[(A, 3, vec![(3, "v3"), (1, "v1")])]);
        let bytes = rmp_serde::to_vec(&dotted).unwrap();
        assert!(rmp_serde::from_slice::<(Vec<FirstBuildEntry>,)>(&bytes).is_err());
        let top = rmp_serde::to_vec(&state(&[(A, 3, &["v3", "v2"])])).unwrap();
        assert!(rmp_serde::from_slice::<(Vec<FirstBuildEntry>,)>(&top).is_ok());
    }

    #[test]
    fn an_extra_dot_the_replica_has_not_seen_leaves_a_sibling_not_a_loss() {
        // Replica A holds v0 (A:1) and v1 (A:2), concurrent. The client was shown only v1
        // (its own write) and writes v2 through B, which has seen nothing of A yet.
        let at_a = S::new().update(&blind(), A, "v0").update(&blind(), A, "v1");
        let shown = Context::default().with_dot((A, 2));
        let at_b = S::new().update(&shown, B, "v2");
        assert_eq!(at_b.counter(A), 0, "extra dots do not raise counters");
        // Counting A:2 as seen would count A:1 too and drop v0, which nobody was shown.
        // So when A's state arrives, v0 stays, and v1 stays too (a spurious sibling).
        assert_eq!(set(&at_b.sync(&at_a)), BTreeSet::from(["v0", "v1", "v2"]));
        // Through A itself, which holds v1, the same write drops exactly v1.
        assert_eq!(
            set(&at_a.update(&shown, A, "v2")),
            BTreeSet::from(["v0", "v2"])
        );
    }

    #[test]
    fn extra_dots_fold_and_are_bounded() {
        let mut c = Context::default();
        for n in (2..=40u64).rev() {
            c = c.with_dot((A, n * 2));
        }
        assert_eq!(c.dots.len(), MAX_EXTRA_DOTS);
        assert_eq!(c.dots[0], (A, 66), "the oldest went first");
        let d = Context::default()
            .with_dot((B, 3))
            .with_dot((B, 2))
            .with_dot((B, 1));
        assert_eq!((d.vv.clone(), d.dots.clone()), (vec![(B, 3)], vec![]));
        assert!(d.descends(&Context::default().with_dot((B, 2))));
        let e = Context::default().with_dot((B, 2));
        assert!(!e.descends(&d) && d.descends(&e));
        assert_eq!(e.join(&d), d);
        assert_eq!(d.join(&e), d);
    }

    // ---------------------------------------------------------------------------------
    // Random histories against a model. The model follows each replica as two sets of
    // write ids: its history H (the writes whose dots its vector covers) and its live
    // writes L. A write with a context adds what the context's vector covers to H and
    // removes it from L, and removes from L the writes its extra dots name; a merge keeps
    // a write live when it is live on one side and no side that has seen it dropped it.
    // States must agree with the model exactly. On top of that, declared properties:
    // a write no longer live was superseded by some write's context; a write whose dot a
    // write's *vector* covered is never live next to it (those siblings are never
    // spurious); and, by observation, a write supersedes only what its client was shown
    // (a read shows its values and what their writers were shown; a write's answer
    // shows the write and what its request was shown) or what was already superseded.

    #[derive(Clone, Debug)]
    enum Source {
        Blind,
        /// The context of an earlier read (biased to recent ones, sometimes stale).
        Read(Index),
        /// The answer of an earlier write, as a client that writes again would use it.
        Answer(Index),
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Quorum read: merge of the replicas in a bitmask (0 means all of them).
        Read(u8),
        /// A write coordinated by a replica.
        Write { replica: Index, source: Source },
        /// One-way repair: `to` merges in the state of `from`.
        Sync { from: Index, to: Index },
    }

    fn op() -> impl Strategy<Value = Op> {
        let source = prop_oneof![
            1 => Just(Source::Blind),
            2 => any::<Index>().prop_map(Source::Read),
            2 => any::<Index>().prop_map(Source::Answer),
        ];
        prop_oneof![
            2 => any::<u8>().prop_map(Op::Read),
            3 => (any::<Index>(), source).prop_map(|(replica, source)| Op::Write { replica, source }),
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

    /// A replica state in the model: history and live writes.
    #[derive(Clone, Debug, Default, PartialEq)]
    struct Model {
        h: Writes,
        l: Writes,
    }

    impl Model {
        fn sync(&self, other: &Model) -> Model {
            let kept = |x: &u32| {
                (!self.h.contains(x) || self.l.contains(x))
                    && (!other.h.contains(x) || other.l.contains(x))
            };
            Model {
                h: self.h.union(&other.h).copied().collect(),
                l: self.l.union(&other.l).copied().filter(kept).collect(),
            }
        }
    }

    /// A context a client holds, and what it was shown.
    #[derive(Clone, Default)]
    struct Held {
        context: Context,
        shown: Writes,
    }

    struct Sim {
        actors: Vec<ActorId>,
        states: Vec<Dvvs<u32>>,
        models: Vec<Model>,
        /// Per write id: the writes its context's vector covered.
        by_vector: Vec<Writes>,
        /// Per write id: the writes it may have superseded: those its vector covered, and
        /// those its extra dots named that its replica had seen.
        superseded: Vec<Writes>,
        /// Per write id: what its request context was shown.
        shown: Vec<Writes>,
        /// Per write id: its dot.
        dots: Vec<Dot>,
        reads: Vec<Held>,
        /// Per write id: the context its answer carried.
        answers: Vec<Held>,
        /// Every state seen, with its model, for the algebraic properties.
        pool: Vec<(Dvvs<u32>, Model)>,
    }

    fn set_of(state: &Dvvs<u32>) -> Writes {
        state.values().into_iter().copied().collect()
    }

    fn recent<'a, T>(items: &'a [T], i: &Index) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[items.len() - 1 - i.index(items.len().min(4))])
    }

    impl Sim {
        fn run(actors: Vec<ActorId>, ops: &[Op]) -> Result<Sim, TestCaseError> {
            let n = actors.len();
            let mut sim = Sim {
                actors,
                states: vec![Dvvs::new(); n],
                models: vec![Model::default(); n],
                by_vector: Vec::new(),
                superseded: Vec::new(),
                shown: Vec::new(),
                dots: Vec::new(),
                reads: Vec::new(),
                answers: Vec::new(),
                pool: Vec::new(),
            };
            for op in ops {
                sim.apply(op)?;
                for i in 0..n {
                    sim.check(&sim.states[i], &sim.models[i])?;
                    sim.pool
                        .push((sim.states[i].clone(), sim.models[i].clone()));
                }
                sim.check_nothing_unseen_lost()?;
            }
            Ok(sim)
        }

        /// The writes a context covers, by its vector and by its extra dots.
        fn covered(&self, context: &Context) -> (Writes, Writes) {
            let ids = 0..self.dots.len() as u32;
            let by_vv = ids
                .clone()
                .filter(|&w| {
                    let (actor, counter) = self.dots[w as usize];
                    context.counter(actor) >= counter
                })
                .collect();
            let by_dot = ids
                .filter(|&w| context.extra_dots().contains(&self.dots[w as usize]))
                .collect();
            (by_vv, by_dot)
        }

        /// A state agrees with its model: exactly the live writes as values (each once),
        /// a vector covering exactly the history, valid invariants; and the declared
        /// properties hold.
        fn check(&self, state: &Dvvs<u32>, model: &Model) -> Result<(), TestCaseError> {
            prop_assert_eq!(state.validate(), Ok(()));
            let values = set_of(state);
            prop_assert_eq!(values.len(), state.sibling_count(), "a value is held twice");
            prop_assert_eq!(&values, &model.l);
            prop_assert_eq!(&self.covered(&state.context()).0, &model.h);
            let superseded: Writes = self.superseded.iter().flatten().copied().collect();
            for x in model.h.difference(&model.l) {
                prop_assert!(
                    superseded.contains(x),
                    "write {} gone, superseded by nobody",
                    x
                );
            }
            for &w in &model.h {
                for x in &self.by_vector[w as usize] {
                    prop_assert!(
                        !model.l.contains(x),
                        "write {} live next to {} whose vector covered it",
                        x,
                        w
                    );
                }
            }
            Ok(())
        }

        /// The checkers' rule: a write missing from the merge of every replica was
        /// superseded by a write whose client had been shown it.
        fn check_nothing_unseen_lost(&self) -> Result<(), TestCaseError> {
            let merged = self.states.iter().fold(Dvvs::new(), |acc, s| acc.sync(s));
            let values = set_of(&merged);
            let shown: Writes = self.shown.iter().flatten().copied().collect();
            for w in self.models.iter().flat_map(|m| &m.h) {
                prop_assert!(
                    values.contains(w) || shown.contains(w),
                    "write {} lost though no client was shown it",
                    w
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
                    let mut model = Model::default();
                    for i in (0..n).filter(|i| mask & (1 << i) != 0) {
                        merged = merged.sync(&self.states[i]);
                        model = model.sync(&self.models[i]);
                    }
                    self.check(&merged, &model)?;
                    let mut shown = set_of(&merged);
                    for &v in &set_of(&merged) {
                        shown.extend(&self.shown[v as usize]);
                    }
                    let context = merged.context();
                    self.reads.push(Held { context, shown });
                    self.pool.push((merged, model));
                }
                Op::Write { replica, source } => self.write(replica.index(n), source)?,
                Op::Sync { from, to } => self.sync(from.index(n), to.index(n))?,
            }
            Ok(())
        }

        fn sync(&mut self, from: usize, to: usize) -> Result<(), TestCaseError> {
            self.states[to] = self.states[to].sync(&self.states[from]);
            self.models[to] = self.models[to].sync(&self.models[from]);
            prop_assert!(self.states[to].descends(&self.states[from]));
            Ok(())
        }

        fn write(&mut self, r: usize, source: &Source) -> Result<(), TestCaseError> {
            let held = match source {
                Source::Blind => None,
                Source::Read(i) => recent(&self.reads, i).cloned(),
                Source::Answer(i) => recent(&self.answers, i).cloned(),
            }
            .unwrap_or_default();
            self.write_held(r, held)
        }

        /// Replica `r` coordinates a write with a context its client holds.
        fn write_held(&mut self, r: usize, held: Held) -> Result<(), TestCaseError> {
            let actor = self.actors[r];
            let w = self.dots.len() as u32;
            let old = &self.states[r];
            let new = old.update(&held.context, actor, w);
            let counter = old.counter(actor).max(held.context.counter(actor)) + 1;
            prop_assert_eq!(new.counter(actor), counter);
            let (by_vv, by_dot) = self.covered(&held.context);
            let model = &mut self.models[r];
            let superseded: Writes = by_dot
                .intersection(&model.h)
                .chain(&by_vv)
                .copied()
                .collect();
            // What this write superseded was shown to its client, or already superseded.
            let dead: Writes = self.superseded.iter().flatten().copied().collect();
            for s in &superseded {
                prop_assert!(
                    held.shown.contains(s) || dead.contains(s),
                    "write {} superseded {} which its client was never shown",
                    w,
                    s
                );
            }
            model.h.extend(&by_vv);
            model.h.insert(w);
            model
                .l
                .retain(|x| !by_vv.contains(x) && !by_dot.contains(x));
            model.l.insert(w);
            let answer = new.write_answer(&held.context, (actor, counter));
            prop_assert!(answer.descends(&held.context) && answer.covers((actor, counter)));
            self.states[r] = new;
            self.by_vector.push(by_vv);
            self.superseded.push(superseded);
            self.dots.push((actor, counter));
            let mut shown = held.shown.clone();
            shown.insert(w);
            self.shown.push(held.shown);
            self.answers.push(Held {
                context: answer,
                shown,
            });
            Ok(())
        }
    }

    /// A valid state with few actors and small counters, so entries often collide, and
    /// arbitrary gaps between live dots. A value is a function of its dot, as the
    /// representation assumes (a dot names one value).
    fn arbitrary_state() -> impl Strategy<Value = Dvvs<u32>> {
        let entry = (1u64..7, proptest::collection::vec(any::<bool>(), 6));
        proptest::collection::btree_map(0u64..4, entry, 0..4).prop_map(|entries| Dvvs {
            entries: entries
                .into_iter()
                .map(|(actor, (counter, live))| Entry {
                    actor: ActorId(actor),
                    counter,
                    values: (1..=counter)
                        .rev()
                        .filter(|&d| live[d as usize - 1])
                        .map(|d| (d, (actor * 100 + d) as u32))
                        .collect(),
                })
                .collect(),
        })
    }

    fn merge_in_order(states: &[Dvvs<u32>], order: &[usize]) -> Dvvs<u32> {
        order
            .iter()
            .fold(Dvvs::new(), |acc, &i| acc.sync(&states[i]))
    }

    /// A state's entries on the wire: the first layout, or with the dots listed.
    #[derive(Clone, Debug, Serialize)]
    #[serde(untagged)]
    enum RawEntry {
        TopRange(u64, u64, Vec<u32>),
        Dotted(u64, u64, Vec<u32>, Vec<u64>),
    }

    fn raw_entry() -> impl Strategy<Value = RawEntry> {
        let actor = 0u64..6;
        let counter = prop_oneof![Just(0u64), 1u64..6, Just(MAX_COUNTER), Just(u64::MAX)];
        let values = proptest::collection::vec(any::<u32>(), 0..5);
        let dots = proptest::collection::vec(prop_oneof![Just(0u64), 1u64..7], 0..5);
        prop_oneof![
            (actor.clone(), counter.clone(), values.clone())
                .prop_map(|(a, n, vs)| RawEntry::TopRange(a, n, vs)),
            (actor, counter, values, dots)
                .prop_map(|(a, n, vs, ds)| RawEntry::Dotted(a, n, vs, ds)),
        ]
    }

    fn raw_entry_is_sane(entry: &RawEntry) -> bool {
        let ok_counter = |n: u64| (1..=MAX_COUNTER).contains(&n);
        match entry {
            RawEntry::TopRange(_, n, vs) => ok_counter(*n) && vs.len() as u64 <= *n,
            RawEntry::Dotted(_, n, vs, ds) => {
                ok_counter(*n)
                    && vs.len() == ds.len()
                    && ds.iter().all(|d| (1..=*n).contains(d))
                    && ds.windows(2).all(|w| w[0] > w[1])
            }
        }
    }

    fn raw_actor(entry: &RawEntry) -> u64 {
        match entry {
            RawEntry::TopRange(a, ..) | RawEntry::Dotted(a, ..) => *a,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The model agrees after every step (including: no write supersedes a value its
        /// client was not shown, however it got its context), and no write is lost by
        /// any merge order: each is in the final state or superseded by a later write.
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
            let model = sim.models.iter().fold(Model::default(), |acc, m| acc.sync(m));
            sim.check(&final1, &model)?;
            let superseded: Writes = sim.superseded.iter().flatten().copied().collect();
            let values = set_of(&final1);
            for w in 0..sim.dots.len() as u32 {
                prop_assert!(values.contains(&w) || superseded.contains(&w), "write {} lost", w);
            }
        }

        /// A client that writes, then writes again with the answer's context, never drops
        /// a concurrent sibling, wherever each write is coordinated: after any history,
        /// a blind write, another client's blind write on a replica that already holds
        /// the first, then the first client's write with its answer on a replica that
        /// holds both.
        #[test]
        fn a_write_with_the_answer_context_never_drops_a_concurrent_sibling(
            (actors, ops) in history(),
            first in any::<Index>(),
            second in any::<Index>(),
            third in any::<Index>(),
        ) {
            let mut sim = Sim::run(actors, &ops)?;
            let (r1, r2, r3) = (first.index(3), second.index(3), third.index(3));
            sim.write_held(r1, Held::default())?;
            let mine = sim.dots.len() - 1;
            sim.sync(r1, r2)?;
            sim.write_held(r2, Held::default())?;
            let theirs = sim.dots.len() - 1;
            for i in 0..3 {
                sim.sync(i, r3)?;
            }
            let answer = sim.answers[mine].clone();
            prop_assert!(!answer.context.covers(sim.dots[theirs]));
            sim.write_held(r3, answer)?;
            let values = set_of(&sim.states[r3]);
            prop_assert!(values.contains(&(theirs as u32)) && !values.contains(&(mine as u32)));
            sim.check_nothing_unseen_lost()?;
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
                let (a, ma) = &sim.pool[i.index(sim.pool.len())];
                let (b, mb) = &sim.pool[j.index(sim.pool.len())];
                let (c, _) = &sim.pool[k.index(sim.pool.len())];
                let ab = a.sync(b);
                prop_assert_eq!(&ab, &b.sync(a));
                prop_assert_eq!(a.sync(&b.sync(c)), ab.sync(c));
                prop_assert_eq!(&a.sync(a), a);
                prop_assert!(ab.descends(a) && ab.descends(b));
                prop_assert!(ab.context().descends(&a.context()));
                prop_assert_eq!(a.descends(b), &ab == a);
                prop_assert_eq!(b.descends(a), &ab == b);
                sim.check(&ab, &ma.sync(mb))?;
            }
        }

        /// The same laws on arbitrary valid states, where live dots have arbitrary gaps.
        #[test]
        fn sync_laws_hold_on_arbitrary_states(
            a in arbitrary_state(),
            b in arbitrary_state(),
            c in arbitrary_state(),
        ) {
            let ab = a.sync(&b);
            prop_assert_eq!(ab.validate(), Ok(()));
            prop_assert_eq!(&ab, &b.sync(&a));
            prop_assert_eq!(a.sync(&b.sync(&c)), ab.sync(&c));
            prop_assert_eq!(&a.sync(&a), &a);
            prop_assert!(ab.descends(&a) && ab.descends(&b));
            prop_assert_eq!(a.descends(&b), ab == a);
            prop_assert_eq!(b.descends(&a), ab == b);
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

        /// States from the wire, in either entry layout: deserialization accepts exactly
        /// the valid ones, and whatever it accepts can be merged and written without a
        /// panic, and written back in the same layout.
        #[test]
        fn deserialized_states_are_validated(raw in proptest::collection::vec(raw_entry(), 0..5)) {
            let bytes = rmp_serde::to_vec(&(raw.clone(),)).unwrap();
            let parsed = rmp_serde::from_slice::<Dvvs<u32>>(&bytes);
            let sorted = raw.windows(2).all(|w| raw_actor(&w[0]) < raw_actor(&w[1]));
            let sane = raw.iter().all(raw_entry_is_sane);
            prop_assert_eq!(parsed.is_ok(), sorted && sane, "{:?}", parsed);
            if let Ok(state) = parsed {
                prop_assert_eq!(&state.sync(&state), &state);
                prop_assert!(state.descends(&state));
                let again = rmp_serde::to_vec(&state).unwrap();
                let top_ranges = raw.iter().all(|e| match e {
                    RawEntry::TopRange(..) => true,
                    RawEntry::Dotted(_, n, _, ds) => !ds.iter().enumerate().all(|(i, d)| *d == n - i as u64),
                });
                if top_ranges {
                    prop_assert_eq!(&again, &bytes, "a valid state is written back byte for byte");
                }
                let written = state.update(&state.context(), ActorId(3), 7);
                // A write on a counter already at the limit leaves it (unreachable honestly).
                let at_limit = state.counter(ActorId(3)) == MAX_COUNTER;
                prop_assert_eq!(written.validate().is_ok(), !at_limit);
                prop_assert_eq!(written.values(), vec![&7]);
                let again = rmp_serde::from_slice::<Dvvs<u32>>(&rmp_serde::to_vec(&written).unwrap());
                prop_assert_eq!(again.ok(), (!at_limit).then_some(written));
            }
        }

        #[test]
        fn context_round_trips(
            vv in proptest::collection::btree_map(any::<u64>(), 1..=MAX_CONTEXT_COUNTER, 0..20),
            dots in proptest::collection::vec((0u64..4, 1..=MAX_CONTEXT_COUNTER), 0..40),
        ) {
            let mut context = Context { vv: vv.into_iter().map(|(a, n)| (ActorId(a), n)).collect(), dots: Vec::new() };
            for (a, n) in dots {
                context.add_dot((ActorId(a), n));
            }
            prop_assert!(context.dots.len() <= MAX_EXTRA_DOTS);
            let token = context.encode();
            prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            prop_assert_eq!(Context::decode(&token), Ok(context.clone()));
            let via_serde: Context = rmp_serde::from_slice(&rmp_serde::to_vec(&context).unwrap()).unwrap();
            prop_assert_eq!(&via_serde, &context);
            prop_assert!(context.descends(&context) && context.join(&context) == context);
        }

        /// join is the least context descending both (on contexts that stay in bounds).
        #[test]
        fn join_descends_both(
            a in proptest::collection::vec((0u64..3, 1u64..6), 0..8),
            b in proptest::collection::vec((0u64..3, 1u64..6), 0..8),
        ) {
            let build = |dots: &[(u64, u64)]| dots.iter().fold(Context::default(), |c, &(a, n)| c.with_dot((ActorId(a), n)));
            let (a, b) = (build(&a), build(&b));
            let ab = a.join(&b);
            prop_assert!(ab.descends(&a) && ab.descends(&b));
            // Equal up to the order of extra dots (which only decides eviction).
            let ba = b.join(&a);
            prop_assert!(ab.descends(&ba) && ba.descends(&ab));
            for actor in 0..3 {
                for n in 1..7 {
                    let dot = (ActorId(actor), n);
                    prop_assert_eq!(ab.covers(dot), a.covers(dot) || b.covers(dot));
                }
            }
        }

        /// Arbitrary strings, arbitrary bytes behind valid base64, and every prefix of a
        /// valid token: decode never panics, and its errors read as sentences.
        #[test]
        fn decode_never_panics(text in ".{0,200}", bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let valid = Context { vv: vec![(ActorId(5), 1), (ActorId(u64::MAX), 3)], dots: vec![(ActorId(9), 4)] }.encode();
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

        /// Well-formed msgpack with hostile content: accepted exactly when valid, and
        /// normalized (vector sorted, dots folded) when accepted.
        #[test]
        fn decode_checks_content(
            version in 0u8..4,
            vv in proptest::collection::vec(
                (0u64..5, prop_oneof![Just(0u64), 1u64..10, Just(MAX_CONTEXT_COUNTER),
                                      Just(MAX_CONTEXT_COUNTER + 1), Just(u64::MAX)]),
                0..6),
            dots in proptest::option::of(proptest::collection::vec(
                (0u64..5, prop_oneof![Just(0u64), 1u64..12, Just(MAX_CONTEXT_COUNTER + 1)]),
                0..5)),
        ) {
            let bytes = match &dots {
                Some(dots) => rmp_serde::to_vec(&(version, &vv, dots)).unwrap(),
                None => rmp_serde::to_vec(&(version, &vv)).unwrap(),
            };
            let decoded = Context::decode(&URL_SAFE_NO_PAD.encode(bytes));
            let actors: BTreeSet<u64> = vv.iter().map(|&(a, _)| a).collect();
            let extra = dots.clone().unwrap_or_default();
            let distinct: BTreeSet<(u64, u64)> = extra.iter().copied().collect();
            let valid = (version == CONTEXT_V2 || (version == CONTEXT_V1 && extra.is_empty()))
                && actors.len() == vv.len()
                && vv.iter().all(|&(_, n)| (1..=MAX_CONTEXT_COUNTER).contains(&n))
                && distinct.len() == extra.len()
                && extra.iter().all(|&(_, n)| (1..=MAX_CONTEXT_COUNTER).contains(&n));
            prop_assert_eq!(decoded.is_ok(), valid, "{:?}", decoded);
            if let Ok(context) = decoded {
                let mut expected = Context { vv: vv.iter().map(|&(a, n)| (ActorId(a), n)).collect(), dots: Vec::new() };
                expected.vv.sort_unstable();
                for &(a, n) in &extra {
                    expected.add_dot((ActorId(a), n));
                }
                prop_assert_eq!(context, expected);
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // Context limits and hostile states, by example.

    fn token<T: Serialize>(value: &T) -> String {
        URL_SAFE_NO_PAD.encode(rmp_serde::to_vec(value).unwrap())
    }

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
        assert!(matches!(
            Context::decode(&token(&"a string")),
            Err(ContextError::Malformed(_))
        ));
        assert_eq!(
            Context::decode(&token(&(3u8, ()))),
            Err(ContextError::UnsupportedVersion(3))
        );
        assert_eq!(
            Context::decode(&token(&(1u8, vec![(4u64, 1u64), (4, 2)]))),
            Err(ContextError::DuplicateActor(ActorId(4)))
        );
        assert_eq!(
            Context::decode(&token(&(1u8, vec![(4u64, 0u64)]))),
            Err(ContextError::ZeroCounter(ActorId(4)))
        );
        assert!(matches!(
            Context::decode(&token(&(1u8, Vec::<(u64, u64)>::new(), vec![(4u64, 3u64)]))),
            Err(ContextError::Malformed(_))
        ));
        assert_eq!(
            Context::decode(&token(&(
                2u8,
                Vec::<(u64, u64)>::new(),
                vec![(4u64, 3u64), (4, 3)]
            ))),
            Err(ContextError::DuplicateDot {
                actor: ActorId(4),
                counter: 3
            })
        );
        assert_eq!(
            Context::decode(&token(&(2u8, Vec::<(u64, u64)>::new(), vec![(4u64, 0u64)]))),
            Err(ContextError::ZeroCounter(ActorId(4)))
        );
        let many: Vec<(u64, u64)> = (0..=MAX_EXTRA_DOTS as u64).map(|a| (a, 5)).collect();
        assert_eq!(
            Context::decode(&token(&(2u8, Vec::<(u64, u64)>::new(), many))),
            Err(ContextError::TooManyDots {
                count: MAX_EXTRA_DOTS + 1,
                max: MAX_EXTRA_DOTS
            })
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
    fn first_build_tokens_still_decode_and_dotless_contexts_keep_their_layout() {
        // A token of the first build, for A:3 and B:1.
        let old = token(&(1u8, vec![(1u64, 3u64), (2, 1)]));
        let context = Context::decode(&old).unwrap();
        assert_eq!(context.vv, vec![(A, 3), (B, 1)]);
        assert_eq!(context.encode(), old);
        // Dots folding into the vector on decode: B:2 continues B:1, A:2 is covered.
        let v2 = token(&(
            2u8,
            vec![(1u64, 3u64), (2, 1)],
            vec![(2u64, 2u64), (1, 2), (3, 9)],
        ));
        let context = Context::decode(&v2).unwrap();
        assert_eq!(context.vv, vec![(A, 3), (B, 2)]);
        assert_eq!(context.dots, vec![(C, 9)]);
    }

    #[test]
    fn a_write_at_the_actor_bound_answers_without_a_new_actor() {
        // A request naming MAX_ACTORS actors: the new dot's actor would be one more, so
        // the answer leaves it out (it covers less) rather than hand out a token every
        // node refuses.
        let vv: Vec<(ActorId, u64)> = (10..10 + MAX_ACTORS as u64)
            .map(|a| (ActorId(a), 1))
            .collect();
        let request = Context {
            vv: vv.clone(),
            dots: Vec::new(),
        };
        let answer = request.with_dot((ActorId(1), 1));
        assert_eq!(answer.vv, vv);
        assert!(Context::decode(&answer.encode()).is_ok());
    }

    #[test]
    fn largest_context_fits_the_token_limit() {
        let vv = (0..MAX_ACTORS as u64)
            .map(|a| (ActorId(u64::MAX - a), MAX_CONTEXT_COUNTER - 10))
            .rev()
            .collect();
        let dots = (0..MAX_EXTRA_DOTS as u64)
            .map(|a| (ActorId(u64::MAX - a), MAX_CONTEXT_COUNTER))
            .collect();
        let context = Context { vv, dots };
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
        let context = Context {
            vv,
            dots: Vec::new(),
        };
        let token = context.encode();
        eprintln!("context token for 3 actors: {} bytes: {token}", token.len());
        assert!(token.len() <= 64, "{} bytes", token.len());
        let dotted = context
            .with_dot((ActorId(0x9a8b_7c6d_5e4f_3021), 99))
            .encode();
        eprintln!("with one extra dot: {} bytes", dotted.len());
        assert!(dotted.len() <= 96, "{} bytes", dotted.len());
    }

    #[test]
    fn hostile_states_are_rejected_on_deserialization() {
        fn parse<T: Serialize>(entries: Vec<T>) -> Result<Dvvs<u32>, String> {
            rmp_serde::from_slice(&rmp_serde::to_vec(&(entries,)).unwrap())
                .map_err(|e| e.to_string())
        }
        fn expect<T: Serialize>(entries: Vec<T>, error: StateError) {
            let message = parse(entries).unwrap_err();
            assert!(message.contains(&error.to_string()), "{message}");
        }
        assert!(parse(vec![(1u64, 2u64, vec![7u32, 8]), (2, 1, vec![])]).is_ok());
        assert!(parse(vec![(1u64, 5u64, vec![7u32, 8], vec![4u64, 1])]).is_ok());
        expect(
            vec![(2u64, 1u64, Vec::<u32>::new()), (1, 1, vec![])],
            StateError::Unsorted {
                previous: ActorId(2),
                actor: ActorId(1),
            },
        );
        expect(
            vec![(1u64, 1u64, Vec::<u32>::new()), (1, 2, vec![])],
            StateError::Unsorted {
                previous: ActorId(1),
                actor: ActorId(1),
            },
        );
        expect(
            vec![(1u64, 0u64, Vec::<u32>::new())],
            StateError::ZeroCounter(ActorId(1)),
        );
        expect(
            vec![(1u64, u64::MAX, Vec::<u32>::new())],
            StateError::CounterTooLarge {
                actor: ActorId(1),
                counter: u64::MAX,
                max: MAX_COUNTER,
            },
        );
        expect(
            vec![(1u64, 1u64, vec![7u32, 8])],
            StateError::MoreValuesThanDots {
                actor: ActorId(1),
                values: 2,
                counter: 1,
            },
        );
        expect(
            vec![(1u64, 5u64, vec![7u32, 8], vec![4u64])],
            StateError::DotCountMismatch {
                actor: ActorId(1),
                values: 2,
                dots: 1,
            },
        );
        for (dots, bad) in [
            (vec![6u64, 1], 6u64),
            (vec![2, 2], 2),
            (vec![1, 3], 3),
            (vec![3, 0], 0),
        ] {
            expect(
                vec![(1u64, 5u64, vec![7u32, 8], dots)],
                StateError::BadDot {
                    actor: ActorId(1),
                    dot: bad,
                    counter: 5,
                },
            );
        }
        assert!(parse(vec![(1u64, 5u64, vec![7u32], vec![4u64], vec![0u64])]).is_err());
        let actors = (0..=MAX_ACTORS as u64)
            .map(|a| (a, 1u64, Vec::<u32>::new()))
            .collect();
        expect(
            actors,
            StateError::TooManyActors {
                count: MAX_ACTORS + 1,
                max: MAX_ACTORS,
            },
        );
        let siblings = vec![(1u64, 10_000u64, vec![0u32; MAX_SIBLINGS + 1])];
        expect(
            siblings,
            StateError::TooManySiblings {
                count: MAX_SIBLINGS + 1,
                max: MAX_SIBLINGS,
            },
        );
    }
}

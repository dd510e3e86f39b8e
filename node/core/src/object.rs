//! What a replica stores for one key: a dotted version vector set of siblings, each a value
//! (or a tombstone) with its content type; how keys and objects are laid out as bytes; and
//! the size limits every object a replica stores or sends obeys ([`Limits`]). Pure data and
//! encoding; no I/O.
//!
//! One rule for limits: a state the decoder would refuse must never be written. The hard
//! limits ([`Limits::HARD`]) are what `Dvvs::validate` enforces plus the size of one
//! node-to-node message; every stored state obeys them. A *new* write must leave a state
//! within half of each ([`OVERSHOOT_MARGIN`]), so the merge of any two states writes can
//! produce (two replicas that took concurrent writes without seeing each other) is still
//! valid. A merge that would cross a hard limit is refused by the replica, never truncated:
//! each side keeps its own versions until a client write with a read's context resolves them.

use serde::{Deserialize, Serialize};

use crate::causality::{Dvvs, MAX_ACTORS, MAX_SIBLINGS};

/// One version of a key's value. A delete is a sibling like any other (`deleted`), so it
/// replicates, merges and supersedes exactly like a write.
///
/// A value written with a TTL carries the wall-clock time it expires at, fixed when the
/// write was minted. Expiry belongs to the version, not to a replica: every copy of it,
/// wherever read repair, a hint, anti-entropy or a restart puts it, is dead from the same
/// moment, and a dead version still supersedes what its write's context covered. The
/// stored bytes never change at expiry (the Merkle trees do not churn); the key leaves the
/// disk when the reaper drops it, as it drops a tombstone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sibling {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub content_type: Option<String>,
    pub deleted: bool,
    /// Unix milliseconds from which this version is dead. Absent from the encoding when
    /// `None`, so values without a TTL encode as the first build's did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

impl Sibling {
    pub fn value(value: Vec<u8>, content_type: Option<String>) -> Self {
        Sibling {
            value,
            content_type,
            deleted: false,
            expires_at_ms: None,
        }
    }
    pub fn tombstone() -> Self {
        Sibling {
            value: Vec::new(),
            content_type: None,
            deleted: true,
            expires_at_ms: None,
        }
    }

    /// This version, dead from `at` (Unix ms) when given.
    pub fn expiring_at(mut self, at: Option<u64>) -> Self {
        self.expires_at_ms = at;
        self
    }

    /// Whether this version has expired by `now_ms` (a tombstone never expires: it is dead
    /// already).
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// Whether a read at `now_ms` shows this version: neither a tombstone nor expired.
    pub fn is_live(&self, now_ms: u64) -> bool {
        !self.deleted && !self.is_expired(now_ms)
    }
}

/// The versions of `object` a read at `now_ms` shows: tombstones and expired values hidden.
pub fn live_siblings(object: &Object, now_ms: u64) -> Vec<&Sibling> {
    object
        .values()
        .into_iter()
        .filter(|s| s.is_live(now_ms))
        .collect()
}

/// Whether `object` holds versions and every one is dead at `now_ms` (tombstones and
/// expired values): what the reaper may drop once every owner holds exactly it.
pub fn is_dead(object: &Object, now_ms: u64) -> bool {
    object.sibling_count() > 0 && object.values().iter().all(|s| !s.is_live(now_ms))
}

pub type Object = Dvvs<Sibling>;

/// Stored objects start with this byte so a future format can be told apart.
const OBJECT_FORMAT_V1: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("stored object has unknown format {0}")]
    UnknownFormat(u8),
    #[error("stored object is corrupt: {0}")]
    Corrupt(String),
    #[error("stored key is corrupt")]
    CorruptKey,
}

/// Largest node-to-node message, request or response; the transport refuses anything
/// longer. Every object a replica stores must fit in one (see `object::MAX_OBJECT_BYTES`),
/// or it could never be replicated, repaired or handed off.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Room a message needs besides one object: the envelope, bucket and key (at most 1 KiB
/// each through HTTP, 60 KiB in storage), a hint owner's name and framing.
const MESSAGE_ROOM: usize = 1024 * 1024;
/// Largest encoded object a replica stores or sends: it must fit one node-to-node message,
/// or it could never be replicated, repaired or handed off.
pub const MAX_OBJECT_BYTES: usize = MAX_MESSAGE_BYTES - MESSAGE_ROOM;
/// A new write must leave its key within `1 / OVERSHOOT_MARGIN` of every hard limit, so two
/// replicas that each took writes up to the write limits, without seeing each other (a
/// partition, or coordinators racing), still merge into a valid state.
pub const OVERSHOOT_MARGIN: usize = 2;
/// Most actors a new write may leave on a key (its history plus the client's context).
pub const WRITE_MAX_ACTORS: usize = MAX_ACTORS / OVERSHOOT_MARGIN;
/// Highest `--max-siblings` a node accepts.
pub const WRITE_MAX_SIBLINGS: usize = MAX_SIBLINGS / OVERSHOOT_MARGIN;
/// Largest encoded object a new write may leave.
pub const WRITE_MAX_OBJECT_BYTES: usize = MAX_OBJECT_BYTES / OVERSHOOT_MARGIN;
/// Longest `Content-Type` a value may carry (the HTTP layer refuses longer ones), so the
/// size of a key at the sibling limit is known from the flags alone.
pub const MAX_CONTENT_TYPE_BYTES: usize = 1024;
/// Encoded bytes a sibling costs beyond its value: its content type and framing.
const SIBLING_OVERHEAD_BYTES: usize = MAX_CONTENT_TYPE_BYTES + 64;
/// Encoded bytes of a key's causal history at most: per actor an id, a counter and framing.
const HISTORY_BYTES: usize = WRITE_MAX_ACTORS * 32;

/// The largest a key written within `--max-value` and `--max-siblings` can encode to; the
/// node refuses to start when it is over [`WRITE_MAX_OBJECT_BYTES`].
pub fn object_bytes_at_limits(max_value: usize, max_siblings: usize) -> usize {
    max_value
        .saturating_add(SIBLING_OVERHEAD_BYTES)
        .saturating_mul(max_siblings)
        .saturating_add(HISTORY_BYTES)
}

/// Why a state may not be stored: which limit it crosses. Each has an error code the HTTP
/// API answers with, and a sentence naming the limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("the write's context names {count} actors, over the limit of {max} a write may carry")]
    ContextActors { count: usize, max: usize },
    #[error("the key would name {count} actors (its history and the write's context), over the limit of {max}")]
    TooManyActors { count: usize, max: usize },
    #[error("the key would have {count} siblings, over the limit of {max}; read it and write back with its context to resolve them")]
    TooManySiblings { count: usize, max: usize },
    #[error("the key would be {bytes} bytes encoded, over the limit of {max} (every object must fit a {MAX_MESSAGE_BYTES}-byte node-to-node message); resolve its siblings or write a smaller value")]
    TooLarge { bytes: usize, max: usize },
    #[error("the state would be invalid: {0}")]
    Invalid(String),
}

impl LimitError {
    /// The `error` code of the HTTP answer.
    pub fn code(&self) -> &'static str {
        match self {
            LimitError::ContextActors { .. } | LimitError::Invalid(_) => "invalid_context",
            LimitError::TooManyActors { .. } => "too_many_actors",
            LimitError::TooManySiblings { .. } => "too_many_siblings",
            LimitError::TooLarge { .. } => "object_too_large",
        }
    }
}

/// Bounds on one key's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub actors: usize,
    pub siblings: usize,
    pub bytes: usize,
}

impl Limits {
    /// What every stored or sent state obeys: the decoder's limits and one message.
    pub const HARD: Limits = Limits {
        actors: MAX_ACTORS,
        siblings: MAX_SIBLINGS,
        bytes: MAX_OBJECT_BYTES,
    };

    /// Checks `object` against these limits and the decoder's invariants; returns its
    /// encoding, which the caller stores (so it is encoded once).
    pub fn check(&self, object: &Object) -> Result<Vec<u8>, LimitError> {
        let actors = object.context().entries().len();
        if actors > self.actors {
            return Err(LimitError::TooManyActors {
                count: actors,
                max: self.actors,
            });
        }
        let siblings = object.sibling_count();
        if siblings > self.siblings {
            return Err(LimitError::TooManySiblings {
                count: siblings,
                max: self.siblings,
            });
        }
        object
            .validate()
            .map_err(|e| LimitError::Invalid(e.to_string()))?;
        let bytes = encode_object(object);
        if bytes.len() > self.bytes {
            return Err(LimitError::TooLarge {
                bytes: bytes.len(),
                max: self.bytes,
            });
        }
        Ok(bytes)
    }
}

pub fn encode_object(object: &Object) -> Vec<u8> {
    let mut bytes = vec![OBJECT_FORMAT_V1];
    rmp_serde::encode::write(&mut bytes, object).expect("encoding to a Vec cannot fail");
    bytes
}

pub fn decode_object(bytes: &[u8]) -> Result<Object, ObjectError> {
    match bytes.split_first() {
        Some((&OBJECT_FORMAT_V1, rest)) => {
            let object: Object =
                rmp_serde::from_slice(rest).map_err(|e| ObjectError::Corrupt(e.to_string()))?;
            object
                .validate()
                .map_err(|e| ObjectError::Corrupt(e.to_string()))?;
            Ok(object)
        }
        Some((&other, _)) => Err(ObjectError::UnknownFormat(other)),
        None => Err(ObjectError::Corrupt("empty".into())),
    }
}

/// Longest TTL a write may carry (ten years): an expiry stays far from `u64` overflow
/// whatever a clock reads.
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 86_400);

/// Longest bucket and longest key, in bytes. The HTTP API refuses longer ones; a replica
/// refuses them in peer requests too (`Replica::handle`), so [`storage_key`] never sees one.
pub const MAX_NAME_BYTES: usize = 1024;

/// Storage key of (bucket, key): the bucket's length first, so no two pairs collide.
/// Callers keep `bucket` within [`MAX_NAME_BYTES`] (asserted: a longer one is a bug here).
pub fn storage_key(bucket: &[u8], key: &[u8]) -> Vec<u8> {
    assert!(
        bucket.len() <= MAX_NAME_BYTES,
        "bucket of {} bytes",
        bucket.len()
    );
    let len = bucket.len() as u16;
    let mut out = Vec::with_capacity(2 + bucket.len() + key.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bucket);
    out.extend_from_slice(key);
    out
}

pub fn split_storage_key(stored: &[u8]) -> Result<(&[u8], &[u8]), ObjectError> {
    let (len, rest) = stored
        .split_first_chunk::<2>()
        .ok_or(ObjectError::CorruptKey)?;
    let len = u16::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(ObjectError::CorruptKey);
    }
    Ok(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causality::{ActorId, Context};

    #[test]
    fn storage_keys_round_trip_and_do_not_collide() {
        let a = storage_key(b"ab", b"c");
        let b = storage_key(b"a", b"bc");
        assert_ne!(a, b);
        assert_eq!(split_storage_key(&a).unwrap(), (&b"ab"[..], &b"c"[..]));
        assert!(split_storage_key(&[0, 9, 1]).is_err());
    }

    #[test]
    fn objects_round_trip_and_garbage_is_an_error() {
        let object = Object::new().update(
            &Context::default(),
            ActorId(7),
            Sibling::value(b"v".to_vec(), None),
        );
        assert_eq!(decode_object(&encode_object(&object)).unwrap(), object);
        // Byte for byte the first build's layout (format 1, entry [actor, counter,
        // values]), so existing data dirs open and their Merkle hashes do not change.
        let first_build = [
            1, 0x91, 0x91, 0x93, 7, 1, 0x91, 0x93, 0xc4, 1, b'v', 0xc0, 0xc2,
        ];
        assert_eq!(encode_object(&object), first_build);
        assert_eq!(decode_object(&first_build).unwrap(), object);
        assert!(decode_object(&[]).is_err());
        assert!(decode_object(&[9, 1, 2]).is_err());
        // A value with a TTL carries its expiry as a fourth field, and only then.
        let expiring = Object::new().update(
            &Context::default(),
            ActorId(7),
            Sibling::value(b"v".to_vec(), None).expiring_at(Some(5)),
        );
        let bytes = encode_object(&expiring);
        assert_eq!(&bytes[..8], &[1, 0x91, 0x91, 0x93, 7, 1, 0x91, 0x94]);
        assert_eq!(decode_object(&bytes).unwrap(), expiring);
        assert!(decode_object(&[1, 0xc1]).is_err());
    }

    #[test]
    fn expired_values_and_tombstones_are_hidden_and_dead_only_together() {
        let write = |state: &Object, actor, sibling| {
            state.sync(&Object::new().update(&Context::default(), ActorId(actor), sibling))
        };
        let expiring = Sibling::value(b"e".to_vec(), None).expiring_at(Some(1_000));
        let state = write(&Object::new(), 1, expiring.clone());
        assert!(expiring.is_live(999) && !expiring.is_live(1_000));
        assert_eq!(live_siblings(&state, 999).len(), 1);
        assert!(live_siblings(&state, 1_000).is_empty());
        assert!(!is_dead(&state, 999) && is_dead(&state, 1_000));
        let with_tombstone = write(&state, 2, Sibling::tombstone());
        assert!(is_dead(&with_tombstone, 1_000));
        let with_value = write(&with_tombstone, 3, Sibling::value(b"v".to_vec(), None));
        assert!(!is_dead(&with_value, u64::MAX));
        assert_eq!(live_siblings(&with_value, u64::MAX)[0].value, b"v");
        assert!(
            !is_dead(&Object::new(), 0),
            "an empty state is absent, not dead"
        );
    }

    fn with_actors(actors: u64, value_bytes: usize) -> Object {
        (0..actors).fold(Object::new(), |state, a| {
            let write = Object::new().update(
                &Context::default(),
                ActorId(a + 1),
                Sibling::value(vec![7; value_bytes], None),
            );
            state.sync(&write)
        })
    }

    #[test]
    fn limits_name_what_they_refuse_and_return_the_encoding() {
        let small = Limits {
            actors: 3,
            siblings: 3,
            bytes: 1000,
        };
        let ok = with_actors(3, 10);
        assert_eq!(small.check(&ok).unwrap(), encode_object(&ok));
        assert_eq!(
            small.check(&with_actors(4, 1)),
            Err(LimitError::TooManyActors { count: 4, max: 3 })
        );
        let big = with_actors(2, 600);
        assert!(matches!(
            small.check(&big),
            Err(LimitError::TooLarge { max: 1000, .. })
        ));
        assert_eq!(
            LimitError::TooLarge { bytes: 1, max: 0 }.code(),
            "object_too_large"
        );
    }

    /// Two states each within the write limits always merge into one within the hard
    /// limits: the overshoot margin covers two replicas growing apart.
    #[test]
    fn two_states_at_the_write_limits_merge_into_a_valid_state() {
        let a = with_actors(WRITE_MAX_ACTORS as u64, 0);
        let b = (0..WRITE_MAX_ACTORS as u64).fold(Object::new(), |state, i| {
            let write = Object::new().update(
                &Context::default(),
                ActorId(1_000_000 + i),
                Sibling::tombstone(),
            );
            state.sync(&write)
        });
        let write_limits = Limits {
            actors: WRITE_MAX_ACTORS,
            siblings: WRITE_MAX_SIBLINGS,
            bytes: WRITE_MAX_OBJECT_BYTES,
        };
        write_limits.check(&a).unwrap();
        write_limits.check(&b).unwrap();
        let merged = a.sync(&b);
        Limits::HARD.check(&merged).unwrap();
        let bytes = encode_object(&merged);
        assert_eq!(decode_object(&bytes).unwrap(), merged);
    }

    #[test]
    fn the_size_at_the_flag_limits_covers_an_encoded_key_at_those_limits() {
        let (value, siblings) = (1000, 20);
        let state = (0..siblings as u64).fold(Object::new(), |state, a| {
            let write = Object::new().update(
                &Context::default(),
                ActorId(a + 1),
                Sibling::value(vec![1; value], Some("x".repeat(MAX_CONTENT_TYPE_BYTES))),
            );
            state.sync(&write)
        });
        assert!(encode_object(&state).len() <= object_bytes_at_limits(value, siblings));
        // The defaults fit; a 1 MiB value with 100 siblings does not.
        assert!(object_bytes_at_limits(1 << 20, 30) <= WRITE_MAX_OBJECT_BYTES);
        assert!(object_bytes_at_limits(1 << 20, 100) > WRITE_MAX_OBJECT_BYTES);
    }
}

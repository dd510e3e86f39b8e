//! What a replica stores for one key: a dotted version vector set of siblings, each a value
//! (or a tombstone) with its content type; and how keys and objects are laid out as bytes.
//! Pure data and encoding; no I/O.

use serde::{Deserialize, Serialize};

use crate::causality::Dvvs;

/// One version of a key's value. A delete is a sibling like any other (`deleted`), so it
/// replicates, merges and supersedes exactly like a write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sibling {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub content_type: Option<String>,
    pub deleted: bool,
}

impl Sibling {
    pub fn value(value: Vec<u8>, content_type: Option<String>) -> Self {
        Sibling {
            value,
            content_type,
            deleted: false,
        }
    }
    pub fn tombstone() -> Self {
        Sibling {
            value: Vec::new(),
            content_type: None,
            deleted: true,
        }
    }
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
        assert!(decode_object(&[]).is_err());
        assert!(decode_object(&[9, 1, 2]).is_err());
        assert!(decode_object(&[1, 0xc1]).is_err());
    }
}

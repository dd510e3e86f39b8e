//! Bucket properties: per-bucket defaults for `r`, `w`, `pr`, `pw`, `max_siblings` and
//! `ttl` (seconds).
//!
//! Owns: their format and validation, where they live (one object per bucket in the
//! system bucket [`PROPS_BUCKET`], replicated, healed and persisted like any other key;
//! clients cannot name it, as HTTP buckets are UTF-8 and it is not), how concurrent
//! changes resolve (every sibling carries a stamp; the highest `(stamp, set_by)` wins on
//! every node, and the others stay visible until a change written over them), and the
//! node's in-memory cache with its digest. Reading and writing the table through the
//! coordinator, and keeping every node's cache in step, is `props_sync`'s.
//!
//! Must not: decide what a request does with the properties (`request_options` resolves
//! them against a request's own options, for every client front), read the system
//! clock, or reach other nodes (it sits below the coordinator, which caches the table).

use std::collections::BTreeMap;
use std::sync::{PoisonError, RwLock};

use serde::{Deserialize, Serialize};

use crate::object::{Object, WRITE_MAX_SIBLINGS};
use crate::quorum::Quorum;

/// The system bucket holding every bucket's properties (key: the bucket's name). Not
/// valid UTF-8, so no HTTP request can name it.
pub const PROPS_BUCKET: &[u8] = b"\xffchorus.bucket-props";
/// Buckets with properties a cluster keeps at most (each node caches all of them).
pub const MAX_BUCKETS_WITH_PROPS: usize = 10_000;

/// What an operator set for a bucket; `None` leaves the node's default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketProps {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub w: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pw: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_siblings: Option<usize>,
    /// Seconds a value written to the bucket lives unless the write gives its own TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
}

impl BucketProps {
    /// Refuses values no request could use with replication factor `n`.
    pub fn validate(&self, n: usize) -> Result<(), String> {
        let resolve = |name: &str, value: &Option<String>, allow_zero| match value {
            None => Ok(None),
            Some(text) => Quorum::parse(text)
                .and_then(|q| q.resolve(n, allow_zero))
                .map(Some)
                .map_err(|e| format!("{name}: {e}")),
        };
        let r = resolve("r", &self.r, false)?;
        let w = resolve("w", &self.w, false)?;
        let pr = resolve("pr", &self.pr, true)?;
        let pw = resolve("pw", &self.pw, true)?;
        let quorum = n / 2 + 1;
        if pr.unwrap_or(0) > r.unwrap_or(quorum) {
            return Err("pr cannot exceed r".into());
        }
        if pw.unwrap_or(0) > w.unwrap_or(quorum) {
            return Err("pw cannot exceed w".into());
        }
        if let Some(ttl) = self.ttl {
            let max = crate::object::MAX_TTL.as_secs();
            if !(1..=max).contains(&ttl) {
                return Err(format!(
                    "ttl: {ttl} is not a number of seconds in 1..={max}"
                ));
            }
        }
        if let Some(m) = self.max_siblings {
            if !(1..=WRITE_MAX_SIBLINGS).contains(&m) {
                return Err(format!(
                    "max_siblings: {m} is not in 1..={WRITE_MAX_SIBLINGS}"
                ));
            }
        }
        Ok(())
    }
}

/// One stored version of a bucket's properties: a sibling of the system object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampedProps {
    pub props: BucketProps,
    /// One more than the highest stamp the setter's read saw.
    pub stamp: u64,
    /// The node the change was made through (breaks ties between equal stamps).
    pub set_by: String,
}

impl StampedProps {
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("encoding to a Vec cannot fail")
    }
}

/// The live versions of a system object, the winner first (highest `(stamp, set_by)`,
/// then highest encoding: two changes through one node can carry the same stamp when
/// neither's read saw the other), then the others in the same order. Versions that do not
/// decode are skipped.
pub fn versions(object: &Object) -> Vec<StampedProps> {
    let mut out: Vec<StampedProps> = object
        .values()
        .iter()
        .filter(|s| !s.deleted)
        .filter_map(|s| rmp_serde::from_slice(&s.value).ok())
        .collect();
    out.sort_by_cached_key(|v| std::cmp::Reverse((v.stamp, v.set_by.clone(), v.encode())));
    out
}

/// Every bucket's winning properties as this node last loaded them, with a digest that
/// is equal on two nodes exactly when they hold the same table.
#[derive(Default)]
pub struct PropsCache {
    table: RwLock<BTreeMap<Vec<u8>, BucketProps>>,
}

impl PropsCache {
    pub fn get(&self, bucket: &[u8]) -> Option<BucketProps> {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(bucket)
            .cloned()
    }

    pub fn set(&self, bucket: &[u8], props: BucketProps) {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        if props == BucketProps::default() {
            table.remove(bucket);
        } else {
            table.insert(bucket.to_vec(), props);
        }
    }

    pub fn replace(&self, table: BTreeMap<Vec<u8>, BucketProps>) {
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = table;
    }

    /// 16 hex digits of blake3 over the table: gossiped, compared, never trusted.
    pub fn digest(&self) -> String {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let bytes = rmp_serde::to_vec(&*table).expect("encoding to a Vec cannot fail");
        blake3::hash(&bytes).to_hex()[..16].to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causality::{ActorId, Context};
    use crate::object::Sibling;

    fn stamped(w: &str, stamp: u64, set_by: &str) -> Sibling {
        let props = BucketProps {
            w: Some(w.into()),
            ..Default::default()
        };
        let value = StampedProps {
            props,
            stamp,
            set_by: set_by.into(),
        };
        Sibling::value(value.encode(), None)
    }

    #[test]
    fn concurrent_changes_resolve_to_the_same_winner_in_any_merge_order() {
        let empty = Object::new();
        let a = empty.update(&Context::default(), ActorId(1), stamped("all", 2, "n1"));
        let b = empty.update(&Context::default(), ActorId(2), stamped("one", 2, "n2"));
        let c = empty.update(&Context::default(), ActorId(3), stamped("2", 1, "n3"));
        let one = a.sync(&b).sync(&c);
        let other = c.sync(&b).sync(&a);
        for merged in [one, other] {
            let v = versions(&merged);
            assert_eq!(v.len(), 3, "the losers stay visible");
            assert_eq!((v[0].stamp, v[0].set_by.as_str()), (2, "n2"));
            assert_eq!(v[0].props.w.as_deref(), Some("one"));
        }
        // Two changes through one node with one stamp (neither's read saw the other): the
        // same one wins whichever way the states merge (the stored order differs).
        let d = empty.update(&Context::default(), ActorId(4), stamped("one", 3, "n1"));
        let e = empty.update(&Context::default(), ActorId(5), stamped("all", 3, "n1"));
        let (de, ed) = (d.sync(&e), e.sync(&d));
        assert_eq!(versions(&de)[0], versions(&ed)[0]);
        let (swapped_d, swapped_e) = (
            empty.update(&Context::default(), ActorId(5), stamped("one", 3, "n1")),
            empty.update(&Context::default(), ActorId(4), stamped("all", 3, "n1")),
        );
        assert_eq!(
            versions(&de)[0],
            versions(&swapped_d.sync(&swapped_e))[0],
            "the winner depends on which actor minted it"
        );
    }

    #[test]
    fn props_are_validated_against_n() {
        let p = |r: &str, pr: &str| BucketProps {
            r: Some(r.into()),
            pr: Some(pr.into()),
            ..Default::default()
        };
        assert!(p("all", "2").validate(3).is_ok());
        assert!(p("4", "0").validate(3).is_err());
        assert!(p("1", "2").validate(3).is_err());
        let bad = BucketProps {
            max_siblings: Some(0),
            ..Default::default()
        };
        assert!(bad.validate(3).is_err());
        let ttl = |t| serde_json::from_str::<BucketProps>(&format!(r#"{{"ttl": {t}}}"#));
        assert!(ttl(60).unwrap().validate(3).is_ok());
        assert!(ttl(0).unwrap().validate(3).is_err());
        assert!(ttl(crate::object::MAX_TTL.as_secs() + 1)
            .unwrap()
            .validate(3)
            .is_err());
        assert!(serde_json::from_str::<BucketProps>(r#"{"expiry": 5}"#).is_err());
    }

    #[test]
    fn the_digest_follows_the_table() {
        let (a, b) = (PropsCache::default(), PropsCache::default());
        assert_eq!(a.digest(), b.digest());
        let props = BucketProps {
            w: Some("all".into()),
            ..Default::default()
        };
        a.set(b"x", props.clone());
        assert_ne!(a.digest(), b.digest());
        b.set(b"x", props);
        assert_eq!(a.digest(), b.digest());
        a.set(b"x", BucketProps::default());
        assert_eq!(a.get(b"x"), None);
    }
}

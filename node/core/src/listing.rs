//! Key listing: a bounded page of a bucket's live keys, gathered by a coverage plan that
//! asks one primary replica per partition (Riak's coverage queries, with pages).
//!
//! Owns: the listing order (partition, then storage order inside it) and its cursor; the
//! replica-side scan of one partition, bounded in entries read per request and in objects
//! held at once; and the coordinator's walk over the partitions.
//!
//! Must not: read a whole partition in one request, list from a replica being repaired
//! (it may lack keys: `Replica::handle` refuses), or hide a partition it could not cover:
//! the page names every partition no replica answered for.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::coordinator::{targets, Coordinator};
use crate::peers::Peers;
use crate::rpc::{Request, Response};
use crate::scan::PartitionKeys;
use crate::storage::{PartitionId, Storage};
use crate::view::ClusterView;

pub use crate::scan::MAX_LIST_LIMIT;

/// Keys one page holds when the request does not say.
pub const DEFAULT_LIST_LIMIT: usize = 1_000;
/// Where the next page starts: a partition and, inside it, the key after which to go on.
/// Opaque to clients: base64url of a small versioned msgpack array.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub partition: PartitionId,
    pub after: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct CursorWire(u8, PartitionId, Option<serde_bytes::ByteBuf>);

const CURSOR_FORMAT: u8 = 1;

#[derive(Debug, thiserror::Error)]
#[error("invalid cursor: {0}")]
pub struct CursorError(String);

impl Cursor {
    pub fn encode(&self) -> String {
        let wire = CursorWire(
            CURSOR_FORMAT,
            self.partition,
            self.after.clone().map(serde_bytes::ByteBuf::from),
        );
        URL_SAFE_NO_PAD.encode(rmp_serde::to_vec(&wire).expect("encoding to a Vec cannot fail"))
    }

    /// A cursor a page handed out; anything else is an error (never a silent restart).
    pub fn decode(text: &str, ring_size: u32) -> Result<Cursor, CursorError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|e| CursorError(format!("not URL-safe base64: {e}")))?;
        let CursorWire(format, partition, after) =
            rmp_serde::from_slice(&bytes).map_err(|e| CursorError(e.to_string()))?;
        if format != CURSOR_FORMAT {
            return Err(CursorError(format!("unknown format {format}")));
        }
        if partition >= ring_size {
            return Err(CursorError(format!(
                "partition {partition} is past the ring's {ring_size}"
            )));
        }
        let after = after.map(|b| b.into_vec());
        if after
            .as_ref()
            .is_some_and(|k| k.len() > crate::object::MAX_NAME_BYTES)
        {
            return Err(CursorError("its key is longer than a key can be".into()));
        }
        Ok(Cursor { partition, after })
    }
}

/// One page of a listing. `next` is `None` once every partition was visited; `uncovered`
/// names the partitions of this page no primary replica answered for (their keys are
/// missing from it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPage {
    pub keys: Vec<Vec<u8>>,
    pub next: Option<Cursor>,
    pub uncovered: Vec<PartitionId>,
}

enum Coverage {
    Answered(PartitionKeys),
    Uncovered,
    OutOfTime,
}

impl<S: Storage, P: Peers> Coordinator<S, P> {
    /// Up to `limit` live keys of `bucket` from `from` on, in listing order. Stops early
    /// (with a cursor) at the deadline, so a page costs at most `timeout`.
    pub async fn list_keys(
        &self,
        bucket: &[u8],
        from: Cursor,
        limit: usize,
        timeout: Duration,
    ) -> KeyPage {
        let deadline = tokio::time::Instant::now() + timeout;
        let view = self.view();
        let mut cursor = from;
        let mut page = KeyPage::default();
        while cursor.partition < view.ring.ring_size() {
            let wanted = limit.saturating_sub(page.keys.len());
            if wanted == 0 || tokio::time::Instant::now() >= deadline {
                page.next = Some(cursor);
                break;
            }
            match self
                .cover_partition(&view, bucket, &cursor, wanted, deadline)
                .await
            {
                Coverage::Answered(part) => {
                    page.keys.extend(part.keys);
                    cursor = match part.resume {
                        Some(key) => Cursor {
                            partition: cursor.partition,
                            after: Some(key),
                        },
                        None => next_partition(&cursor),
                    };
                }
                Coverage::Uncovered => {
                    page.uncovered.push(cursor.partition);
                    cursor = next_partition(&cursor);
                }
                Coverage::OutOfTime => {
                    page.next = Some(cursor);
                    break;
                }
            }
        }
        self.metrics().list_pages.inc();
        page
    }

    /// Asks the partition's reachable primaries, this node first, until one answers.
    async fn cover_partition(
        &self,
        view: &ClusterView,
        bucket: &[u8],
        cursor: &Cursor,
        limit: usize,
        deadline: tokio::time::Instant,
    ) -> Coverage {
        let mut owners: Vec<String> = targets(view, cursor.partition)
            .into_iter()
            .filter(|t| t.primary)
            .map(|t| t.name)
            .collect();
        if let Some(i) = owners.iter().position(|name| *name == self.name()) {
            owners[..=i].rotate_right(1);
        }
        for owner in owners {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Coverage::OutOfTime;
            }
            let request = Request::ListKeys {
                partition: cursor.partition,
                bucket: bucket.to_vec(),
                after: cursor.after.clone().map(serde_bytes::ByteBuf::from),
                limit: limit as u32,
            };
            if let Ok(Response::Keys { keys, resume }) = self.call(&owner, request, remaining).await
            {
                return Coverage::Answered(PartitionKeys {
                    keys: keys.into_iter().map(|k| k.into_vec()).collect(),
                    resume: resume.map(|k| k.into_vec()),
                    scanned: 0,
                });
            }
        }
        if tokio::time::Instant::now() >= deadline {
            Coverage::OutOfTime
        } else {
            Coverage::Uncovered
        }
    }
}

fn next_partition(cursor: &Cursor) -> Cursor {
    Cursor {
        partition: cursor.partition + 1,
        after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::{encode_object, storage_key, Object, Sibling};
    use crate::scan::{scan_live_keys, SCAN_BUDGET};
    use crate::storage::MemoryStorage;

    /// The clock the scans below read at: a value expiring at `EXPIRED` is dead then.
    const NOW: u64 = 1_000;
    const EXPIRED: Option<u64> = Some(NOW);

    fn put(storage: &MemoryStorage, bucket: &[u8], key: &[u8], deleted: bool) {
        put_expiring(storage, bucket, key, deleted, None)
    }

    fn put_expiring(
        storage: &MemoryStorage,
        bucket: &[u8],
        key: &[u8],
        deleted: bool,
        expires_at: Option<u64>,
    ) {
        let sibling = if deleted {
            Sibling::tombstone()
        } else {
            Sibling::value(b"v".to_vec(), None).expiring_at(expires_at)
        };
        let object =
            Object::new().update(&Default::default(), crate::causality::ActorId(1), sibling);
        storage
            .put(0, &storage_key(bucket, key), &encode_object(&object))
            .unwrap();
    }

    fn all_pages(storage: &MemoryStorage, bucket: &[u8], limit: usize) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        for _ in 0..10_000 {
            let part = scan_live_keys(storage, 0, bucket, after.as_deref(), limit, NOW).unwrap();
            assert!(part.keys.len() <= limit);
            keys.extend(part.keys);
            match part.resume {
                Some(k) => after = Some(k),
                None => return keys,
            }
        }
        panic!("the scan never ended");
    }

    #[test]
    fn pages_list_each_live_key_of_the_bucket_once_in_order_hiding_deleted_and_expired() {
        let storage = MemoryStorage::new();
        for i in 0..500u32 {
            let key = format!("k{i:04}");
            // Every 7th deleted, every 5th expired, every 3rd expiring later.
            let expires_at = match i {
                _ if i % 5 == 0 => EXPIRED,
                _ if i % 3 == 0 => Some(NOW + 1),
                _ => None,
            };
            put_expiring(&storage, b"b", key.as_bytes(), i % 7 == 0, expires_at);
            put(&storage, b"a", key.as_bytes(), false);
            put(&storage, b"bb", key.as_bytes(), false);
        }
        let want: Vec<Vec<u8>> = (0..500u32)
            .filter(|i| i % 7 != 0 && i % 5 != 0)
            .map(|i| format!("k{i:04}").into_bytes())
            .collect();
        for limit in [1, 3, 32, 33, 1000] {
            assert_eq!(all_pages(&storage, b"b", limit), want, "limit {limit}");
        }
        assert!(all_pages(&storage, b"none", 10).is_empty());
    }

    #[test]
    fn a_scan_stops_at_its_budget_and_resumes_where_it_stopped() {
        let storage = MemoryStorage::new();
        for i in 0..(SCAN_BUDGET as u32 + 5) {
            put(&storage, b"b", format!("k{i:06}").as_bytes(), true);
        }
        put(&storage, b"b", b"z", false);
        let first = scan_live_keys(&storage, 0, b"b", None, 10, NOW).unwrap();
        assert!(first.keys.is_empty());
        assert_eq!(first.scanned as usize, SCAN_BUDGET);
        let second = scan_live_keys(&storage, 0, b"b", first.resume.as_deref(), 10, NOW).unwrap();
        assert_eq!((second.keys, second.resume), (vec![b"z".to_vec()], None));
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_errors() {
        let c = Cursor {
            partition: 7,
            after: Some(vec![0, 255, 1]),
        };
        assert_eq!(Cursor::decode(&c.encode(), 64).unwrap(), c);
        assert!(Cursor::decode(&c.encode(), 7).is_err());
        assert!(Cursor::decode("!!", 64).is_err());
        assert!(Cursor::decode("AQID", 64).is_err());
    }
}

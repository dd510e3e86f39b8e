//! Reaping: a dead key (only tombstones and expired values) is dropped once every primary
//! holds exactly it, no node reports pending hints or data awaiting transfer, and a grace
//! period has passed; the first owner of a partition decides, a page per round. It must not
//! reap while it may not see every owner (fewer than N members known, an unreachable
//! member), nor a key any owner holds otherwise.

use std::sync::PoisonError;

use tokio::time::Instant;

use super::{Healer, PENDING_HINTS_KEY, PENDING_TRANSFER_KEY};
use crate::heal_error::HealError;
use crate::object::{split_storage_key, Object};
use crate::peers::Peers;
use crate::rpc::{KeyedObject, Request, Response};
use crate::storage::{PartitionId, Storage};
use crate::view::ClusterView;

/// Entries of one partition in key order, as `Storage::scan` returns them: (storage key,
/// encoded object).
type Page = Vec<(Vec<u8>, Vec<u8>)>;

impl<S: Storage, P: Peers> Healer<S, P> {
    /// Examines one page (`reap_batch` keys) of one partition this node is the first owner
    /// of, and reaps the tombstones there that every primary has held unchanged for the
    /// grace period. A cursor walks the pages and partitions round by round, so a round
    /// costs one page whatever the data size, and every key is examined in turn.
    pub async fn reap_step(&self) -> Result<usize, HealError> {
        let view = self.view();
        // A node that knows fewer than N members (just restarted and not yet reached by
        // gossip, e.g. behind a partition) sees itself as the only owner of everything and
        // would reap alone what other replicas still hold older versions of.
        let knows_a_full_ring = view.ring.members().len() >= view.ring.n();
        if !knows_a_full_ring || !self.cluster_is_settled() || !view.unreachable.is_empty() {
            self.reap_candidates
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
            return Ok(0);
        }
        let Some(partition) = self.next_reap_partition(&view) else {
            return Ok(0);
        };
        let page = self.next_reap_page(partition)?;
        let owners = view.ring.primaries(partition).to_vec();
        debug_assert_eq!(
            owners.first(),
            Some(&self.name),
            "reaping partition {partition}, whose first owner is another node"
        );
        let now = Instant::now();
        let now_ms = self.replica.now_ms();
        let mut ripe = Vec::new();
        for (skey, raw) in page {
            let object = crate::object::decode_object(&raw)?;
            if !crate::object::is_dead(&object, now_ms) {
                continue;
            }
            let (bucket, key) = split_storage_key(&skey)?;
            debug_assert_eq!(self.replica.partition_of(bucket, key), partition);
            let everywhere = self
                .held_by_every_owner(&owners, bucket, key, &object)
                .await;
            if self.ripened(&skey, &object, everywhere, now) {
                ripe.push(KeyedObject {
                    bucket: bucket.to_vec(),
                    key: key.to_vec(),
                    object,
                });
            }
        }
        if ripe.is_empty() {
            return Ok(0);
        }
        let reaped = self.reap_everywhere(&owners, ripe).await;
        if reaped > 0 {
            tracing::info!(
                partition,
                reaped,
                "reaped fully replicated dead keys (tombstones, expired values)"
            );
        }
        Ok(reaped)
    }

    /// The partition the reap cursor is in, among those this node is the first owner of
    /// (the next one when the cursor's is not, the first when it went past the last).
    fn next_reap_partition(&self, view: &ClusterView) -> Option<PartitionId> {
        let firsts: Vec<PartitionId> = view
            .ring
            .primary_partitions(&self.name)
            .into_iter()
            .filter(|&p| view.ring.primaries(p).first() == Some(&self.name))
            .collect();
        let cursor = self
            .reap_cursor
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let partition = match firsts.iter().find(|&&p| p >= cursor.0) {
            Some(&p) => p,
            None => *firsts.first()?,
        };
        Some(partition)
    }

    /// The next page of `partition` (from the cursor's key when the cursor is in it), and
    /// the cursor moved past it: to its last key, or to the next partition after a short
    /// page.
    fn next_reap_page(&self, partition: PartitionId) -> Result<Page, HealError> {
        let after = {
            let cursor = self
                .reap_cursor
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            (cursor.0 == partition).then(|| cursor.1.clone()).flatten()
        };
        let storage = self.replica.storage();
        let page = storage.scan(partition, after.as_deref(), self.config.reap_batch)?;
        *self
            .reap_cursor
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = match page.last() {
            Some((last, _)) if page.len() >= self.config.reap_batch => {
                (partition, Some(last.clone()))
            }
            _ => (partition.wrapping_add(1), None),
        };
        Ok(page)
    }

    /// Whether every other owner holds exactly `object` for the key.
    async fn held_by_every_owner(
        &self,
        owners: &[String],
        bucket: &[u8],
        key: &[u8],
        object: &Object,
    ) -> bool {
        let mut everywhere = true;
        for owner in owners.iter().filter(|o| **o != self.name) {
            let request = Request::Get {
                bucket: bucket.to_vec(),
                key: key.to_vec(),
            };
            match self.call(owner, request).await {
                Ok(Response::Object(Some(theirs))) if theirs == *object => {}
                _ => everywhere = false,
            }
        }
        everywhere
    }

    /// Records that the dead `object` is (or is not) held by every owner at `now`, and
    /// says whether it has been so, unchanged, for the grace period: then it is ripe and
    /// leaves the candidates.
    fn ripened(&self, skey: &[u8], object: &Object, everywhere: bool, now: Instant) -> bool {
        let mut candidates = self
            .reap_candidates
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !everywhere {
            candidates.remove(skey);
            return false;
        }
        let entry = candidates
            .entry(skey.to_vec())
            .or_insert_with(|| (object.clone(), now));
        if entry.0 != *object {
            *entry = (object.clone(), now);
        } else if now.duration_since(entry.1) >= self.config.tombstone_grace {
            candidates.remove(skey);
            return true;
        }
        false
    }

    /// Every owner drops its copy, under the same "only if unchanged" rule. Returns the
    /// keys this node reaped.
    async fn reap_everywhere(&self, owners: &[String], ripe: Vec<KeyedObject>) -> usize {
        let mut reaped = 0;
        for owner in owners {
            match self
                .call(
                    owner,
                    Request::ReapBatch {
                        objects: ripe.clone(),
                    },
                )
                .await
            {
                Ok(Response::Merged(n)) if *owner == self.name => reaped += n,
                Ok(Response::Merged(_)) => {}
                other => tracing::debug!(%owner, "reap failed: {other:?}"),
            }
        }
        reaped
    }

    /// True when every member that may hold data reported no pending hints and no data
    /// awaiting transfer. A member that has not reported yet (e.g. just restarted) counts
    /// as not settled.
    fn cluster_is_settled(&self) -> bool {
        self.gossip
            .members()
            .iter()
            .filter(|m| m.state != chorus_gossip::MemberState::Left)
            .all(|m| {
                [PENDING_HINTS_KEY, PENDING_TRANSFER_KEY]
                    .iter()
                    .all(|k| m.kv.get(*k).is_some_and(|v| v == "0"))
            })
    }
}

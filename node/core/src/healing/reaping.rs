//! Reaping: a dead key (only tombstones and expired values) is dropped once every primary
//! holds exactly it, no node reports pending hints or data awaiting transfer (on the same
//! ring), no removed member may still return with data, and a grace period has passed; the
//! first owner of a partition decides, a page per round. It must not reap while it may not
//! see every owner (fewer than N members known, an unreachable member), nor a key any
//! owner holds otherwise.

use std::sync::PoisonError;

use tokio::time::Instant;

use super::{Healer, PENDING_HINTS_KEY, PENDING_TRANSFER_KEY, TRANSFER_RING_KEY};
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
        if let Some(reason) = self.why_not_reap(&view) {
            self.reap_candidates
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
            *self
                .reaping_paused_because
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(reason);
            return Ok(0);
        }
        *self
            .reaping_paused_because
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
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

    /// Every owner drops its copy, under the same "only if unchanged" rule: the other
    /// owners first, and this node's own replica only if each of them took the batch. An
    /// owner refuses a batch holding a value its own clock does not see expired, so a
    /// reaper whose clock runs ahead never drops its copy of a value its peers still
    /// serve (read repair would put it back, under a retired actor). Returns the keys
    /// this node reaped.
    async fn reap_everywhere(&self, owners: &[String], ripe: Vec<KeyedObject>) -> usize {
        let mut all_took_it = true;
        for owner in owners.iter().filter(|o| **o != self.name) {
            if self.reap_at(owner, &ripe).await.is_none() {
                all_took_it = false;
            }
        }
        if !all_took_it || !owners.contains(&self.name) {
            return 0;
        }
        self.reap_at(&self.name, &ripe).await.unwrap_or(0)
    }

    /// Sends `ripe` to `owner` as a reap batch: the keys it dropped, `None` when it refused
    /// the batch or did not answer.
    async fn reap_at(&self, owner: &str, ripe: &[KeyedObject]) -> Option<usize> {
        let request = Request::ReapBatch {
            objects: ripe.to_vec(),
        };
        match self.call(owner, request).await {
            Ok(Response::Merged(n)) => Some(n),
            other => {
                tracing::debug!(%owner, "reap failed: {other:?}");
                None
            }
        }
    }

    /// Why no tombstone may be reaped now, or `None` when reaping may go on: every member
    /// that may hold data must be reachable, must have reported no pending hints and no
    /// data awaiting transfer, computed on the same ring as ours (a member that just
    /// restarted and knows part of the cluster would report nothing to transfer), and no
    /// member removed by an operator may still return with data (`Membership::remove`):
    /// any of those could bring back a copy older than the tombstone.
    fn why_not_reap(&self, view: &ClusterView) -> Option<String> {
        // A node that knows fewer than N members (just restarted and not yet reached by
        // gossip, e.g. behind a partition) sees itself as the only owner of everything and
        // would reap alone what other replicas still hold older versions of.
        if view.ring.members().len() < view.ring.n() {
            return Some(format!(
                "this node knows {} ring member(s), fewer than N = {}",
                view.ring.members().len(),
                view.ring.n()
            ));
        }
        if !view.unreachable.is_empty() {
            let mut names: Vec<&String> = view.unreachable.iter().collect();
            names.sort();
            return Some(format!("unreachable member(s): {names:?}"));
        }
        let members = self.gossip.members();
        let removed: Vec<&str> = members
            .iter()
            .filter(|m| m.removed)
            .map(|m| m.name.as_str())
            .collect();
        if !removed.is_empty() {
            return Some(format!(
                "removed member(s) {removed:?} may still return with data: reaping resumes once they rejoin, or after `chorus remove NAME --data-lost`"
            ));
        }
        let ring = ring_fingerprint(view.ring.members());
        let unsettled: Vec<&str> = members
            .iter()
            .filter(|m| m.state != chorus_gossip::MemberState::Left)
            .filter(|m| {
                let reported = |k: &str, v: &str| m.kv.get(k).is_some_and(|x| x == v);
                !(reported(PENDING_HINTS_KEY, "0")
                    && reported(PENDING_TRANSFER_KEY, "0")
                    && reported(TRANSFER_RING_KEY, &ring))
            })
            .map(|m| m.name.as_str())
            .collect();
        (!unsettled.is_empty()).then(|| {
            format!("member(s) {unsettled:?} have hints or data to hand over, or have not reported on this ring yet")
        })
    }
}

/// A short fingerprint of a ring's member set: what a member's transfer count was computed
/// on (`TRANSFER_RING_KEY`).
pub(super) fn ring_fingerprint(members: &[String]) -> String {
    let mut hasher = blake3::Hasher::new();
    for name in members {
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
    }
    hasher.finalize().to_hex()[..16].to_string()
}

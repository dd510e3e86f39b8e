//! Ownership transfer: a node holding data for partitions it no longer owns (after a join,
//! a leave or a removal) sends it to the current owners a batch at a time. It must not drop
//! a copy before every owner acknowledged storing it, nor run while hints are pending
//! (hint delivery still needs the local copies).

use std::collections::HashMap;
use std::sync::PoisonError;

use super::{Healer, PENDING_TRANSFER_KEY, TRANSFER_RING_KEY};
use crate::heal_error::HealError;
use crate::object::split_storage_key;
use crate::peers::Peers;
use crate::replica::MAX_BATCH_BYTES;
use crate::rpc::{KeyedObject, Request};
use crate::storage::{PartitionId, Storage};

impl<S: Storage, P: Peers> Healer<S, P> {
    /// Moves one batch of every partition this node holds but does not own to the owners.
    /// Skipped while hints are pending: hint delivery still needs the local copies.
    pub async fn transfer_step(&self) -> Result<u64, HealError> {
        let storage = self.replica.storage();
        if !storage.hint_owners()?.is_empty() {
            return Ok(0);
        }
        let view = self.view();
        let mut moved = 0;
        let mut progress = HashMap::new();
        let mut retired = false;
        for partition in storage.partitions()? {
            if view.ring.is_primary(partition, &self.name) {
                continue;
            }
            let owners: Vec<String> = view.ring.primaries(partition).to_vec();
            let remaining = storage.key_count(partition)?;
            progress.insert(partition, remaining);
            if owners.is_empty() || owners.iter().any(|o| view.unreachable.contains(o)) {
                continue;
            }
            let batch = self.transfer_batch(partition)?;
            let merge = || Request::MergeBatch {
                objects: batch.clone(),
            };
            let acked = self.stored_by(&owners, merge).await;
            if acked < owners.len() {
                continue;
            }
            // Data for a partition this node does not own is dropped only after every
            // owner, none of them this node, acknowledged storing it.
            debug_assert!(
                !owners.is_empty() && acked == owners.len() && !owners.contains(&self.name),
                "a transfer drops its copy without every other owner's ack"
            );
            if !retired {
                self.replica.retire_actor()?;
                retired = true;
            }
            for o in &batch {
                if self
                    .replica
                    .remove_if_unchanged(&o.bucket, &o.key, &o.object)?
                {
                    moved += 1;
                }
            }
            tracing::info!(partition, moved = batch.len(), remaining = remaining.saturating_sub(batch.len() as u64), owners = ?owners, "ownership transfer");
        }
        let left: u64 = progress.values().sum::<u64>().saturating_sub(moved);
        let ring = super::reaping::ring_fingerprint(view.ring.members());
        self.gossip.set_local_kvs(&[
            (PENDING_TRANSFER_KEY, &left.to_string()),
            (TRANSFER_RING_KEY, &ring),
        ]);
        *self
            .transfer_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = progress;
        Ok(moved)
    }

    /// The next batch of `partition` to send: its first `transfer_batch` keys, within one
    /// message.
    fn transfer_batch(&self, partition: PartitionId) -> Result<Vec<KeyedObject>, HealError> {
        let page = self
            .replica
            .storage()
            .scan(partition, None, self.config.transfer_batch)?;
        let mut batch = Vec::with_capacity(page.len());
        let mut bytes = 0;
        for (skey, raw) in &page {
            // A batch is one message: stop before it crosses the batch bound (it always
            // holds one object, and every stored object fits a message).
            if !batch.is_empty() && bytes + skey.len() + raw.len() > MAX_BATCH_BYTES {
                break;
            }
            bytes += skey.len() + raw.len();
            let (bucket, key) = split_storage_key(skey)?;
            let object = crate::object::decode_object(raw)?;
            batch.push(KeyedObject {
                bucket: bucket.to_vec(),
                key: key.to_vec(),
                object,
            });
        }
        debug_assert!(
            batch
                .iter()
                .all(|o| self.replica.partition_of(&o.bucket, &o.key) == partition),
            "a transfer batch of partition {partition} holds a key of another partition"
        );
        debug_assert!(
            batch.len() <= 1 || bytes <= MAX_BATCH_BYTES,
            "a transfer batch of {bytes} bytes"
        );
        Ok(batch)
    }
}

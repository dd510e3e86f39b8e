//! Hinted handoff: a fallback delivers the writes it holds for an owner that is reachable
//! again (or, for an owner that left the ring, to the partition's primaries), then forgets
//! the hint. It must not drop its copy of a key before every recipient stored it, nor
//! under an actor that may have minted on it.

use super::{Healer, PENDING_HINTS_KEY};
use crate::heal_error::HealError;
use crate::object::split_storage_key;
use crate::peers::Peers;
use crate::rpc::Request;
use crate::storage::{PartitionId, Storage};
use crate::view::ClusterView;

impl<S: Storage, P: Peers> Healer<S, P> {
    /// Delivers hints to owners that are reachable again. Returns hints delivered.
    pub async fn deliver_hints(&self) -> Result<usize, HealError> {
        let storage = self.replica.storage();
        let owners = storage.hint_owners()?;
        self.replica.recount_hints(&owners);
        let pending: u64 = owners.iter().map(|(_, n)| n).sum();
        self.gossip
            .set_local_kv(PENDING_HINTS_KEY, &pending.to_string());
        let view = self.view();
        let mut delivered = 0;
        let mut retired = false;
        for (owner, _) in &owners {
            if view.unreachable.contains(owner) {
                continue;
            }
            let hints = storage.hint_scan(owner, self.config.hint_batch)?;
            for (partition, skey, _) in hints {
                let (bucket, key) = split_storage_key(&skey)?;
                debug_assert_eq!(
                    partition,
                    self.replica.partition_of(bucket, key),
                    "a hint filed under another partition than its key's"
                );
                let object = self.replica.get(bucket, key)?;
                let recipients = self.hint_recipients(&view, owner, partition);
                // Nothing to deliver (the key was reaped or handed off since) counts as delivered.
                let all_stored = match &object {
                    None => true,
                    Some(object) => {
                        let merge = || Request::Merge {
                            bucket: bucket.to_vec(),
                            key: key.to_vec(),
                            object: object.clone(),
                            hint_for: None,
                        };
                        self.stored_by(&recipients, merge).await == recipients.len()
                    }
                };
                if !all_stored {
                    break;
                }
                let drop_local = !view.ring.is_primary(partition, &self.name) && owners.len() == 1;
                if drop_local && !retired {
                    self.replica.retire_actor()?;
                    retired = true;
                }
                // The local copy goes only after every recipient stored it (and there is
                // one: a node that is not a primary always has a primary to hand to), and
                // only under an actor that never minted on it.
                debug_assert!(
                    !drop_local || (all_stored && !recipients.is_empty() && retired),
                    "a handoff drops its copy with no recipient or under the old actor"
                );
                if self
                    .replica
                    .finish_handoff(owner, bucket, key, object.as_ref(), drop_local)?
                {
                    delivered += 1;
                    self.metrics.hints_delivered.inc();
                }
            }
        }
        if delivered > 0 {
            tracing::info!(delivered, "hinted handoff delivered writes to their owners");
        }
        Ok(delivered)
    }

    /// Who gets a hinted write: its owner; or, for a removed or departed owner (which no
    /// longer owns anything), the partition's current primaries other than this node.
    fn hint_recipients(
        &self,
        view: &ClusterView,
        owner: &str,
        partition: PartitionId,
    ) -> Vec<String> {
        if view.ring.members().iter().any(|m| m == owner) {
            return vec![owner.to_string()];
        }
        view.ring
            .primaries(partition)
            .iter()
            .filter(|p| **p != self.name)
            .cloned()
            .collect()
    }
}

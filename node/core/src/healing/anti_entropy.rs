//! Anti-entropy: this node and another owner of a partition compare TicTac hash trees
//! (root, then branches, then leaves) and exchange only the objects of segments that
//! differ, through the normal DVV merge; while the replica repairs, the exchanges that end
//! the repair. It must not compare trees of another shape than ours (a peer's leaves are
//! validated first), nor exchange a partition a bulk stream (`rebuild`) is filling.

use std::sync::PoisonError;

use super::{ExchangeReport, Healer, REPAIR_EXCHANGES_PER_ROUND};
use crate::heal_error::{bad_answer, HealError};
use crate::peers::{PeerError, Peers};
use crate::rpc::{Request, Response};
use crate::storage::merkle::{MerkleTree, BRANCHES, SEGMENTS, SEGMENTS_PER_BRANCH};
use crate::storage::{PartitionId, Storage};

impl<S: Storage, P: Peers> Healer<S, P> {
    /// One anti-entropy exchange: the next partition this node owns, with the next other
    /// owner of it. While the replica repairs, several exchanges toward finishing it.
    pub async fn anti_entropy_step(&self) -> Result<Option<ExchangeReport>, HealError> {
        if self.replica.is_repairing() {
            return self.repair_step().await;
        }
        let view = self.view();
        let mine = view.ring.primary_partitions(&self.name);
        if mine.is_empty() {
            return Ok(None);
        }
        let turn = {
            let mut cursor = self.cursor.lock().unwrap_or_else(PoisonError::into_inner);
            *cursor = cursor.wrapping_add(1);
            *cursor
        };
        let partition = mine[turn % mine.len()];
        debug_assert!(partition < view.ring.ring_size());
        if self.rebuilder.is_pending(partition) {
            return Ok(None);
        }
        let others: Vec<&String> = view
            .ring
            .primaries(partition)
            .iter()
            .filter(|p| **p != self.name)
            .collect();
        if others.is_empty() {
            return Ok(None);
        }
        let peer = others[(turn / mine.len()) % others.len()].clone();
        debug_assert!(
            peer != self.name && view.ring.is_primary(partition, &peer),
            "anti-entropy with {peer}, not another owner of {partition}"
        );
        if view.unreachable.contains(&peer) {
            return Ok(None);
        }
        self.exchange(partition, &peer).await.map(Some)
    }

    /// Repair (after journal damage or a lost directory): exchanges with up to
    /// [`REPAIR_EXCHANGES_PER_ROUND`] (partition, other owner) pairs not yet found equal,
    /// and ends the repair once every pair of the ring was. A pair counts once an exchange
    /// finds the two trees equal (after repairing them, the next exchange does). Waits for
    /// a ring of at least N members, so a node that has not heard of its peers yet (every
    /// partition its own) cannot finish at once.
    async fn repair_step(&self) -> Result<Option<ExchangeReport>, HealError> {
        let view = self.view();
        if view.ring.members().len() < view.ring.n() {
            return Ok(None);
        }
        let pending: Vec<(PartitionId, String)> = {
            let equal = self.repaired.lock().unwrap_or_else(PoisonError::into_inner);
            view.ring
                .primary_partitions(&self.name)
                .into_iter()
                .flat_map(|p| {
                    view.ring
                        .primaries(p)
                        .iter()
                        .filter(|o| **o != self.name)
                        .map(move |o| (p, o.clone()))
                })
                .filter(|pair| !equal.contains(pair))
                .collect()
        };
        if pending.is_empty() {
            self.replica.finish_repair()?;
            return Ok(None);
        }
        let mut last = None;
        // A partition being streamed is compared once its stream ends (and not counted
        // equal before: the repair must not end while a stream is still filling it).
        for (partition, peer) in pending
            .into_iter()
            .filter(|(p, peer)| !view.unreachable.contains(peer) && !self.rebuilder.is_pending(*p))
            .take(REPAIR_EXCHANGES_PER_ROUND)
        {
            let report = self.exchange(partition, &peer).await?;
            if report.differing_segments == 0 {
                self.repaired
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert((partition, peer));
            }
            last = Some(report);
        }
        Ok(last)
    }

    /// Compares this node's tree of `partition` with `peer`'s and repairs both sides. The
    /// bytes it sent and received are counted in the metrics whether or not it completes.
    pub async fn exchange(
        &self,
        partition: PartitionId,
        peer: &str,
    ) -> Result<ExchangeReport, HealError> {
        self.metrics.aae_exchanges.inc();
        let mut report = ExchangeReport::default();
        let result = self.exchange_with(partition, peer, &mut report).await;
        self.metrics
            .aae_keys_repaired
            .inc_by(report.keys_repaired as u64);
        self.metrics.aae_bytes_sent.inc_by(report.bytes_sent as u64);
        self.metrics
            .aae_bytes_received
            .inc_by(report.bytes_received as u64);
        if report.keys_repaired > 0 {
            tracing::info!(partition, %peer, segments = report.differing_segments, keys = report.keys_repaired, "anti-entropy repaired keys");
        }
        if result.is_ok() {
            let mut map = self
                .disagreements
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match report.differing_segments {
                0 => map.remove(&partition),
                n => map.insert(partition, (peer.to_string(), n)),
            };
        }
        result.map(|()| report)
    }

    /// One request of an exchange, with its bytes both ways added to `report`.
    async fn exchange_call(
        &self,
        peer: &str,
        request: Request,
        report: &mut ExchangeReport,
    ) -> Result<Response, PeerError> {
        report.bytes_sent += encoded_len(&request);
        let response = self.call(peer, request).await?;
        report.bytes_received += rmp_serde::to_vec(&response).map(|v| v.len()).unwrap_or(0);
        Ok(response)
    }

    async fn exchange_with(
        &self,
        partition: PartitionId,
        peer: &str,
        report: &mut ExchangeReport,
    ) -> Result<(), HealError> {
        let ours = self.replica.storage().tree(partition)?;
        let branches = self
            .differing_branches(&ours, partition, peer, report)
            .await?;
        if branches.is_empty() {
            return Ok(());
        }
        let mut segments = self
            .differing_segments(&ours, partition, peer, branches, report)
            .await?;
        // Most of the tree differs: a stream of the whole partition is far cheaper.
        if segments.len() * 2 > SEGMENTS && self.rebuilder.offer(partition, peer)? {
            report.differing_segments = segments.len();
            return Ok(());
        }
        segments.truncate(self.config.max_segments_per_exchange);
        report.differing_segments = segments.len();
        if segments.is_empty() {
            return Ok(());
        }
        self.repair_segments(partition, peer, segments, report)
            .await
    }

    /// The branches of `partition` whose hashes differ between our tree and `peer`'s.
    async fn differing_branches(
        &self,
        ours: &MerkleTree,
        partition: PartitionId,
        peer: &str,
        report: &mut ExchangeReport,
    ) -> Result<Vec<u32>, HealError> {
        let Ok(Response::Branches(theirs)) = self
            .exchange_call(peer, Request::TreeBranches { partition }, report)
            .await
        else {
            return Err(bad_answer(
                peer,
                format!("did not send its tree of partition {partition}"),
            ));
        };
        if theirs.len() != BRANCHES {
            return Err(bad_answer(
                peer,
                format!(
                    "sent {} branches of partition {partition}, expected {BRANCHES}",
                    theirs.len()
                ),
            ));
        }
        Ok(ours
            .branches()
            .iter()
            .zip(&theirs)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, _)| i as u32)
            .collect())
    }

    /// The segments under the differing `branches` whose leaves differ, ascending.
    async fn differing_segments(
        &self,
        ours: &MerkleTree,
        partition: PartitionId,
        peer: &str,
        branches: Vec<u32>,
        report: &mut ExchangeReport,
    ) -> Result<Vec<u32>, HealError> {
        let request = Request::TreeLeaves {
            partition,
            branches: branches.clone(),
        };
        let Ok(Response::Leaves(leaves)) = self.exchange_call(peer, request, report).await else {
            return Err(bad_answer(
                peer,
                format!("did not send its leaves of partition {partition}"),
            ));
        };
        validate_leaves(&leaves, &branches).map_err(|e| {
            bad_answer(
                peer,
                format!("sent a malformed tree of partition {partition}: {e}"),
            )
        })?;
        let mut segments = Vec::new();
        for (branch, their_leaves) in leaves {
            let our_leaves = ours.leaves_of_branch(branch as usize);
            for (i, (a, b)) in our_leaves.iter().zip(&their_leaves).enumerate() {
                if a != b {
                    segments.push(branch * SEGMENTS_PER_BRANCH as u32 + i as u32);
                }
            }
        }
        // Validated leaves only name segments of the tree, each once, ascending.
        debug_assert!(
            segments.iter().all(|&s| (s as usize) < SEGMENTS)
                && segments.windows(2).all(|w| w[0] < w[1]),
            "differing segments out of the tree or out of order"
        );
        Ok(segments)
    }

    /// Pulls `peer`'s objects of `segments` into ours, then pushes ours (now merged) to it.
    async fn repair_segments(
        &self,
        partition: PartitionId,
        peer: &str,
        segments: Vec<u32>,
        report: &mut ExchangeReport,
    ) -> Result<(), HealError> {
        let request = Request::SegmentObjects {
            partition,
            segments: segments.clone(),
        };
        let Ok(Response::Objects(objects)) = self.exchange_call(peer, request, report).await else {
            return Err(bad_answer(
                peer,
                format!("did not send the objects of partition {partition}"),
            ));
        };
        report.keys_repaired += self.replica.merge_batch(&objects)?;
        let ours = self.replica.segment_objects(partition, &segments)?;
        if let Ok(Response::Merged(changed)) = self
            .exchange_call(peer, Request::MergeBatch { objects: ours }, report)
            .await
        {
            report.keys_repaired += changed;
        }
        Ok(())
    }
}

/// A peer's leaves must be exactly those of the branches asked for, each with
/// `SEGMENTS_PER_BRANCH` hashes: a peer with another tree shape (a different version, a
/// bug) must fail the exchange, not make us compare misaligned segments or index out of range.
fn validate_leaves(leaves: &[(u32, Vec<[u8; 32]>)], asked: &[u32]) -> Result<(), String> {
    if leaves.len() != asked.len() {
        return Err(format!(
            "{} branches of leaves for {} asked",
            leaves.len(),
            asked.len()
        ));
    }
    for ((branch, hashes), wanted) in leaves.iter().zip(asked) {
        if branch != wanted {
            return Err(format!(
                "leaves of branch {branch} where branch {wanted} was asked"
            ));
        }
        if hashes.len() != SEGMENTS_PER_BRANCH {
            return Err(format!(
                "branch {branch} has {} leaves, expected {SEGMENTS_PER_BRANCH}",
                hashes.len()
            ));
        }
    }
    Ok(())
}

fn encoded_len(request: &Request) -> usize {
    rmp_serde::to_vec(request).map(|v| v.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_tree_of_another_shape_is_refused() {
        let good = |b: u32| (b, vec![[0u8; 32]; SEGMENTS_PER_BRANCH]);
        assert!(validate_leaves(&[good(1), good(5)], &[1, 5]).is_ok());
        assert!(
            validate_leaves(&[good(1)], &[1, 5]).is_err(),
            "a branch missing"
        );
        assert!(
            validate_leaves(&[good(1), good(6)], &[1, 5]).is_err(),
            "a branch not asked for"
        );
        assert!(
            validate_leaves(
                &[good(1), (5, vec![[0u8; 32]; SEGMENTS_PER_BRANCH - 1])],
                &[1, 5]
            )
            .is_err(),
            "too few leaves"
        );
        assert!(
            validate_leaves(
                &[good(1), (5, vec![[0u8; 32]; SEGMENTS_PER_BRANCH + 1])],
                &[1, 5]
            )
            .is_err(),
            "too many leaves"
        );
    }
}

//! Healing: everything that makes replicas converge without a client reading them.
//!
//! - Hinted handoff: a fallback delivers the writes it holds for an unreachable owner once
//!   gossip shows the owner reachable again, then forgets the hint (and its copy, when it
//!   does not own the key).
//! - Ownership transfer: a node holding data for partitions it no longer owns (after a
//!   join, a leave or a removal) streams it to the current owners and drops its copy only
//!   after every owner acknowledged it.
//! - Anti-entropy: replicas of a partition compare TicTac hash trees (root, then branches,
//!   then leaves) and exchange only the objects of segments that differ, through the
//!   normal DVV merge. A partition whose trees differ in most segments, or that this
//!   replica holds far less of than another owner, is streamed whole instead (`rebuild`,
//!   run by its own loop); anti-entropy leaves it alone until the stream ends.
//! - Reaping: a dead key (only tombstones and expired values) is dropped once every
//!   primary holds exactly it, no node in the cluster reports pending hints or data
//!   awaiting ownership transfer (a copy that would bring an older value back), and a
//!   grace period has passed. Expiry never rewrites a key, so until then the Merkle trees
//!   do not change; the reap changes every owner's in the same round.
//!
//! - Storage recovery: while the storage is failed, each round first probes it.
//!
//! It works through the `Peers` seam and tokio's clock, so the simulation runs this code.
//! It never decides placement (the ring does) or liveness (gossip does).

use std::collections::HashMap;
use std::sync::PoisonError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::heal_error::{bad_answer, HealError};
use crate::membership::Gossip;
use crate::metrics::Metrics;
use crate::object::{split_storage_key, Object};
use crate::peers::{PeerError, Peers};
use crate::rebuild::{RebuildConfig, Rebuilder};
use crate::replica::{Replica, MAX_BATCH_BYTES};
use crate::rpc::{KeyedObject, Request, Response};
use crate::storage::merkle::{BRANCHES, SEGMENTS, SEGMENTS_PER_BRANCH};
use crate::storage::{PartitionId, Storage};
use crate::view::ClusterView;

/// Gossiped key under which a node publishes how many hints it holds.
pub const PENDING_HINTS_KEY: &str = "pending_hints";
/// Gossiped key under which a node publishes how many keys it holds for partitions it does
/// not own (waiting for ownership transfer). Such a copy may predate a tombstone, so no
/// tombstone is reaped while any node reports one: the transfer would bring it back.
pub const PENDING_TRANSFER_KEY: &str = "pending_transfer";

#[derive(Clone, Debug)]
pub struct HealingConfig {
    /// Interval between healing rounds (hint delivery, one transfer step, one exchange).
    pub interval: Duration,
    /// Hints delivered per owner per round.
    pub hint_batch: usize,
    /// Keys moved per partition per transfer step.
    pub transfer_batch: usize,
    /// Segments repaired per anti-entropy exchange (rate limit).
    pub max_segments_per_exchange: usize,
    /// How long a fully replicated tombstone waits before it is reaped.
    pub tombstone_grace: Duration,
    /// Keys examined for reaping per round: one page of one partition, so a round costs
    /// the same however many keys the node holds (the reaper walks its partitions over
    /// many rounds).
    pub reap_batch: usize,
    pub rpc_timeout: Duration,
    /// Bulk partition streams (`--rebuild-bytes-per-s`, `--rebuild-streams`).
    pub rebuild: RebuildConfig,
}

impl Default for HealingConfig {
    fn default() -> Self {
        HealingConfig {
            interval: Duration::from_millis(1000),
            hint_batch: 1000,
            transfer_batch: 500,
            max_segments_per_exchange: 128,
            tombstone_grace: Duration::from_secs(600),
            reap_batch: 1000,
            rpc_timeout: Duration::from_secs(10),
            rebuild: RebuildConfig::default(),
        }
    }
}

/// What one anti-entropy exchange did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExchangeReport {
    pub differing_segments: usize,
    pub keys_repaired: usize,
    pub bytes_sent: usize,
    pub bytes_received: usize,
}

pub struct Healer<S: Storage, P: Peers> {
    name: String,
    replica: Arc<Replica<S>>,
    peers: Arc<P>,
    gossip: Arc<Gossip>,
    metrics: Arc<Metrics>,
    config: HealingConfig,
    cursor: Mutex<usize>,
    /// Where reaping goes on next round: a partition and the last key examined in it.
    reap_cursor: Mutex<(PartitionId, Option<Vec<u8>>)>,
    /// Tombstones seen fully replicated, with when they were first seen so.
    reap_candidates: Mutex<HashMap<Vec<u8>, (Object, Instant)>>,
    /// Progress of ownership transfer, for /status: partition -> keys moved.
    transfer_progress: Mutex<HashMap<PartitionId, u64>>,
    /// While the replica repairs: (partition, other owner) pairs whose trees were equal.
    repaired: Mutex<std::collections::HashSet<(PartitionId, String)>>,
    /// Partitions whose last completed exchange from this node found its tree differing
    /// from the peer's, with that peer and the differing segments (for the dashboard; one
    /// entry per partition at most, removed when an exchange finds them equal).
    disagreements: Mutex<HashMap<PartitionId, (String, usize)>>,
    rebuilder: Arc<Rebuilder<S, P>>,
}

/// Exchanges per healing round while the replica repairs.
pub const REPAIR_EXCHANGES_PER_ROUND: usize = 8;

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

impl<S: Storage, P: Peers> Healer<S, P> {
    pub fn new(
        name: String,
        replica: Arc<Replica<S>>,
        peers: Arc<P>,
        gossip: Arc<Gossip>,
        metrics: Arc<Metrics>,
        config: HealingConfig,
    ) -> Self {
        let rebuilder = Arc::new(Rebuilder::new(
            name.clone(),
            replica.clone(),
            peers.clone(),
            gossip.clone(),
            metrics.clone(),
            config.rebuild.clone(),
            config.rpc_timeout,
        ));
        Healer {
            rebuilder,
            name,
            replica,
            peers,
            gossip,
            metrics,
            config,
            cursor: Mutex::new(0),
            reap_cursor: Mutex::new((0, None)),
            reap_candidates: Mutex::new(HashMap::new()),
            transfer_progress: Mutex::new(HashMap::new()),
            repaired: Mutex::default(),
            disagreements: Mutex::default(),
        }
    }

    fn view(&self) -> ClusterView {
        self.gossip
            .view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn call(&self, to: &str, request: Request) -> Result<Response, PeerError> {
        if to == self.name {
            return Ok(self.replica.handle(request));
        }
        self.peers.call(to, request, self.config.rpc_timeout).await
    }

    /// The bulk partition streams (`rebuild`), which run their own loop.
    pub fn rebuilder(&self) -> &Arc<Rebuilder<S, P>> {
        &self.rebuilder
    }

    /// One round of every healing duty.
    /// A failed storage is probed first (a durable write), which is how the node recovers
    /// when the cause goes away; while it stays failed the duties are skipped, as every
    /// one of them needs it.
    pub async fn round(&self) {
        if self.replica.health().is_failed() && !self.replica.probe_storage() {
            return;
        }
        if let Err(e) = self.deliver_hints().await {
            tracing::warn!("hint delivery: {e}");
        }
        if let Err(e) = self.transfer_step().await {
            tracing::warn!("ownership transfer: {e}");
        }
        if let Err(e) = self.anti_entropy_step().await {
            tracing::debug!("anti-entropy: {e}");
        }
        if let Err(e) = self.reap_step().await {
            tracing::debug!("tombstone reaping: {e}");
        }
    }

    /// Tombstones found held by every primary and waiting out the grace period.
    pub fn tombstones_awaiting_reap(&self) -> usize {
        self.reap_candidates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Partitions whose trees differed from a peer's at this node's last exchange of them:
    /// (partition, peer, differing segments), by partition.
    pub fn disagreements(&self) -> Vec<(PartitionId, String, usize)> {
        let map = self
            .disagreements
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = map
            .iter()
            .map(|(p, (peer, s))| (*p, peer.clone(), *s))
            .collect();
        out.sort_unstable();
        out
    }

    /// Partitions this node holds data for but does not own, with keys left to move.
    pub fn transfer_progress(&self) -> HashMap<PartitionId, u64> {
        self.transfer_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

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
            let owner_in_ring = view.ring.members().iter().any(|m| m == owner);
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
                // A removed or departed owner no longer owns anything: its hints go to the
                // partition's current primaries instead.
                let recipients: Vec<String> = if owner_in_ring {
                    vec![owner.clone()]
                } else {
                    view.ring
                        .primaries(partition)
                        .iter()
                        .filter(|p| **p != self.name)
                        .cloned()
                        .collect()
                };
                // Nothing to deliver (the key was reaped or handed off since) counts as delivered.
                let mut all_stored = true;
                if let Some(object) = &object {
                    for recipient in &recipients {
                        let request = Request::Merge {
                            bucket: bucket.to_vec(),
                            key: key.to_vec(),
                            object: object.clone(),
                            hint_for: None,
                        };
                        if !matches!(self.call(recipient, request).await, Ok(Response::Merged(_))) {
                            all_stored = false;
                        }
                    }
                    if !all_stored {
                        break;
                    }
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
            let page = storage.scan(partition, None, self.config.transfer_batch)?;
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
            let mut acked = 0;
            for owner in &owners {
                let request = Request::MergeBatch {
                    objects: batch.clone(),
                };
                if matches!(self.call(owner, request).await, Ok(Response::Merged(_))) {
                    acked += 1;
                }
            }
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
        self.gossip
            .set_local_kv(PENDING_TRANSFER_KEY, &left.to_string());
        *self
            .transfer_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = progress;
        Ok(moved)
    }

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
        let differing: Vec<u32> = ours
            .branches()
            .iter()
            .zip(&theirs)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, _)| i as u32)
            .collect();
        if differing.is_empty() {
            return Ok(());
        }
        let request = Request::TreeLeaves {
            partition,
            branches: differing.clone(),
        };
        let Ok(Response::Leaves(leaves)) = self.exchange_call(peer, request, report).await else {
            return Err(bad_answer(
                peer,
                format!("did not send its leaves of partition {partition}"),
            ));
        };
        validate_leaves(&leaves, &differing).map_err(|e| {
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
        // Pull theirs into ours, then push ours (now merged) to them.
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
        let firsts: Vec<PartitionId> = view
            .ring
            .primary_partitions(&self.name)
            .into_iter()
            .filter(|&p| view.ring.primaries(p).first() == Some(&self.name))
            .collect();
        if firsts.is_empty() {
            return Ok(0);
        }
        let (partition, after) = {
            let cursor = self
                .reap_cursor
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match firsts.iter().find(|&&p| p >= cursor.0) {
                Some(&p) if p == cursor.0 => (p, cursor.1.clone()),
                Some(&p) => (p, None),
                None => (firsts[0], None),
            }
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
            let mut everywhere = true;
            for owner in owners.iter().filter(|o| **o != self.name) {
                let request = Request::Get {
                    bucket: bucket.to_vec(),
                    key: key.to_vec(),
                };
                match self.call(owner, request).await {
                    Ok(Response::Object(Some(theirs))) if theirs == object => {}
                    _ => everywhere = false,
                }
            }
            let mut candidates = self
                .reap_candidates
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !everywhere {
                candidates.remove(&skey);
                continue;
            }
            let entry = candidates
                .entry(skey.clone())
                .or_insert_with(|| (object.clone(), now));
            if entry.0 != object {
                *entry = (object.clone(), now);
            } else if now.duration_since(entry.1) >= self.config.tombstone_grace {
                ripe.push(KeyedObject {
                    bucket: bucket.to_vec(),
                    key: key.to_vec(),
                    object,
                });
                candidates.remove(&skey);
            }
        }
        if ripe.is_empty() {
            return Ok(0);
        }
        // Every owner drops its copy, under the same "only if unchanged" rule.
        let mut reaped = 0;
        for owner in &owners {
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
        if reaped > 0 {
            tracing::info!(
                partition,
                reaped,
                "reaped fully replicated dead keys (tombstones, expired values)"
            );
        }
        Ok(reaped)
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

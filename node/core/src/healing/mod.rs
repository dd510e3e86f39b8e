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
//!
//! This file owns the `Healer`, its configuration, the `round` that runs every duty and
//! the helpers they share; each duty has its file (`handoff`, `transfer`, `anti_entropy`,
//! `reaping`), which uses this one and no other duty's.

use std::collections::HashMap;
use std::sync::PoisonError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::membership::Gossip;
use crate::metrics::Metrics;
use crate::object::Object;
use crate::peers::{PeerError, Peers};
use crate::rebuild::{RebuildConfig, Rebuilder};
use crate::replica::Replica;
use crate::rpc::{Request, Response};
use crate::storage::{PartitionId, Storage};
use crate::view::ClusterView;

mod anti_entropy;
mod handoff;
mod reaping;
mod transfer;

/// Gossiped key under which a node publishes how many hints it holds.
pub const PENDING_HINTS_KEY: &str = "pending_hints";
/// Gossiped key under which a node publishes how many keys it holds for partitions it does
/// not own (waiting for ownership transfer). Such a copy may predate a tombstone, so no
/// tombstone is reaped while any node reports one: the transfer would bring it back.
pub const PENDING_TRANSFER_KEY: &str = "pending_transfer";
/// Gossiped with `PENDING_TRANSFER_KEY`: a fingerprint of the ring the count was computed
/// on. A count from another ring (a node that just restarted and knows part of the
/// cluster owns too much in its own eyes) says nothing about what it would hand over.
pub const TRANSFER_RING_KEY: &str = "transfer_ring";

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
    /// Why the last reaping round did nothing, if it was paused (for /status).
    reaping_paused_because: Mutex<Option<String>>,
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
            reaping_paused_because: Mutex::new(None),
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

    /// Sends `request()` to each recipient in turn (all of them, whatever the earlier ones
    /// answered) and counts those that stored it.
    async fn stored_by(&self, recipients: &[String], request: impl Fn() -> Request) -> usize {
        let mut stored = 0;
        for recipient in recipients {
            if matches!(
                self.call(recipient, request()).await,
                Ok(Response::Merged(_))
            ) {
                stored += 1;
            }
        }
        stored
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

    /// Why this node's last reaping round was paused (`None` when it ran), for /status.
    pub fn reaping_paused(&self) -> Option<String> {
        self.reaping_paused_because
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
}

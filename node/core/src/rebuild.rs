//! Rebuild: a replica that holds far less of a partition it owns than another owner (an
//! emptied disk, a replaced node) pulls the whole partition as a stream of pages instead of
//! one Merkle segment exchange per healing round.
//!
//! Owns: the rule that starts a stream (see [`needs_bulk`] and the tree rule in
//! `healing`), the replica-side page scan ([`scan_page`]), the streams themselves (at most
//! `streams` at once, node-wide byte budget by [`RateLimiter`]), the plan of partitions
//! queued or streaming with their cursors (persisted in storage meta whenever a partition
//! is queued or ends, and at most every 500 ms of pages, so a restart resumes the whole
//! plan) and their progress for `/status` and `/metrics`.
//!
//! Must not: write objects other than through the replica's normal merge (a page is a
//! `MergeBatch`, so a write racing the stream is never lost), push data to a peer (the
//! short side pulls; anti-entropy covers the rest once the stream ends), decide placement
//! or liveness, or read a wall clock (tokio time only, so the simulation runs it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::time::Instant;

use crate::heal_error::{bad_answer, HealError};
use crate::membership::Gossip;
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::replica::Replica;
use crate::rpc::{KeyedObject, Request, Response};
use crate::storage::{PartitionId, Storage};
use crate::view::ClusterView;

/// Default streaming budget: bytes per second one rebuilding node pulls, all streams
/// together (Cassandra's `stream_throughput_outbound` defaults to 24 MiB/s).
pub const DEFAULT_BYTES_PER_S: u64 = 32 * 1024 * 1024;
/// Default number of partitions streamed at once.
pub const DEFAULT_STREAMS: usize = 2;
/// Stored bytes one page asks for at most (less under a budget below 8 MiB/s): small
/// enough that encoding or decoding one holds an async worker only briefly.
pub const PAGE_BYTES: u32 = 512 * 1024;
pub use crate::scan::MAX_PAGE_BYTES;

/// A partition is pulled whole only when another owner holds at least this many keys of
/// it; a smaller difference costs one or two segment exchanges.
pub const MIN_BULK_KEYS: u64 = 64;
/// After a stream of a partition ends, the count rule leaves it alone this long.
const COOLDOWN: Duration = Duration::from_secs(60);
/// Meta key holding the partitions queued or streaming, each with its cursor.
const CURSORS_META_KEY: &str = "rebuild_cursors";
/// A stream persists its cursor at most this often (and when it ends): a restart redoes at
/// most this much of a stream, and merging a page twice is harmless.
const PERSIST_EVERY: Duration = Duration::from_millis(500);

#[derive(Clone, Debug)]
pub struct RebuildConfig {
    /// Bytes per second this node pulls in rebuild streams, all together.
    pub bytes_per_s: u64,
    /// Partitions streamed at once.
    pub streams: usize,
}

impl Default for RebuildConfig {
    fn default() -> Self {
        RebuildConfig {
            bytes_per_s: DEFAULT_BYTES_PER_S,
            streams: DEFAULT_STREAMS,
        }
    }
}

/// The count rule: this replica pulls a partition whole when another owner holds at least
/// [`MIN_BULK_KEYS`] keys of it and this one holds fewer than half as many.
pub fn needs_bulk(ours: u64, theirs: u64) -> bool {
    theirs >= MIN_BULK_KEYS && ours.saturating_mul(2) < theirs
}

/// A token bucket over bytes, shared by every stream of a node. It takes the time as an
/// argument, so it is tested without a clock.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_s: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// A full bucket of a quarter second's budget.
    pub fn new(bytes_per_s: u64, now: Instant) -> Self {
        let burst = bytes_per_s as f64 / 4.0;
        RateLimiter {
            bytes_per_s: bytes_per_s.max(1) as f64,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Charges `bytes` received at `now`; returns how long the caller waits before its next
    /// page so the average stays within the budget (the debt, at the budget's rate).
    pub fn charge(&mut self, bytes: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.bytes_per_s).min(self.burst) - bytes as f64;
        debug_assert!(
            self.tokens <= self.burst && self.tokens.is_finite(),
            "a token bucket over its burst"
        );
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.bytes_per_s)
        }
    }
}

/// Where a partition's stream is: persisted (but for the fields marked skip) after every
/// page, so a restart resumes after `after`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub after: Option<ByteBuf>,
    pub keys: u64,
    pub bytes: u64,
    /// The source's key count of the partition at its last page (0 before the first).
    #[serde(skip)]
    pub keys_total: u64,
    #[serde(skip)]
    pub peer: Option<String>,
}

/// Encodes the queued and unfinished streams' cursors for storage meta.
pub fn encode_cursors(cursors: &BTreeMap<PartitionId, Progress>) -> Vec<u8> {
    rmp_serde::to_vec(cursors).expect("encoding to a Vec cannot fail")
}

/// Decodes what [`encode_cursors`] stored; an unreadable value is no cursor (the count
/// rule starts those streams over).
pub fn decode_cursors(bytes: &[u8]) -> BTreeMap<PartitionId, Progress> {
    rmp_serde::from_slice(bytes).unwrap_or_default()
}

/// One partition in `/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionStatus {
    pub partition: PartitionId,
    pub streaming: bool,
    pub progress: Progress,
}

/// This node's rebuild, for `/status`: partitions pending (queued or streaming), keys and
/// bytes pulled (including what a stream resumed from had pulled before a restart), and an
/// estimate of the seconds left at the rate seen so far.
#[derive(Clone, Debug, Default)]
pub struct RebuildStatus {
    pub partitions: Vec<PartitionStatus>,
    pub keys_done: u64,
    pub bytes_done: u64,
    pub eta_s: Option<f64>,
}

#[derive(Default)]
struct State {
    loaded: bool,
    /// Partitions queued or streaming, with their cursors.
    pending: BTreeMap<PartitionId, Progress>,
    streaming: BTreeSet<PartitionId>,
    /// Partitions whose stream failed in the current step (retried next step).
    stalled: BTreeSet<PartitionId>,
    /// Other owners' key counts at the last sweep.
    peer_counts: HashMap<(PartitionId, String), u64>,
    finished: HashMap<PartitionId, Instant>,
    /// Keys and bytes of the streams that ended since start.
    done_keys: u64,
    done_bytes: u64,
    /// Keys pulled by this process, and when its first page arrived (for the estimate).
    pulled: u64,
    first_page: Option<Instant>,
    last_persist: Option<Instant>,
}

pub struct Rebuilder<S: Storage, P: Peers> {
    name: String,
    replica: Arc<Replica<S>>,
    peers: Arc<P>,
    gossip: Arc<Gossip>,
    metrics: Arc<Metrics>,
    config: RebuildConfig,
    rpc_timeout: Duration,
    limiter: Mutex<RateLimiter>,
    state: Mutex<State>,
    /// Held across snapshot and write of the cursors, so the last write is the newest.
    persisting: Mutex<()>,
}

impl<S: Storage, P: Peers> Rebuilder<S, P> {
    pub fn new(
        name: String,
        replica: Arc<Replica<S>>,
        peers: Arc<P>,
        gossip: Arc<Gossip>,
        metrics: Arc<Metrics>,
        config: RebuildConfig,
        rpc_timeout: Duration,
    ) -> Self {
        let limiter = Mutex::new(RateLimiter::new(config.bytes_per_s, Instant::now()));
        Rebuilder {
            name,
            replica,
            peers,
            gossip,
            metrics,
            config,
            rpc_timeout,
            limiter,
            state: Mutex::default(),
            persisting: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn view(&self) -> ClusterView {
        self.gossip
            .view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// One step: once the ring has N members, resumes persisted streams, compares key
    /// counts with the other owners, then streams the pending partitions (at most
    /// `streams` at once) until none is left or each remaining one failed this step.
    pub async fn step(self: &Arc<Self>) {
        let view = self.view();
        if view.ring.members().len() < view.ring.n() {
            return;
        }
        self.load_cursors(&view);
        self.forget_unowned(&view);
        if let Err(e) = self.sweep(&view).await {
            tracing::debug!("rebuild sweep: {e}");
        }
        self.state().stalled.clear();
        let mut set = tokio::task::JoinSet::new();
        loop {
            while set.len() < self.config.streams {
                let Some(partition) = self.next_pending() else {
                    break;
                };
                set.spawn(self.clone().stream(partition));
            }
            if set.join_next().await.is_none() {
                return;
            }
        }
    }

    /// Whether `partition` is queued or streaming (anti-entropy leaves it alone meanwhile).
    pub fn is_pending(&self, partition: PartitionId) -> bool {
        self.state().pending.contains_key(&partition)
    }

    /// The tree rule (called by anti-entropy when most segments of `partition` differ from
    /// `peer`'s): queue a stream when this replica holds no more keys than `peer` did at the
    /// last sweep. The fuller side never pulls from the emptier one.
    pub fn offer(&self, partition: PartitionId, peer: &str) -> Result<bool, HealError> {
        let ours = self.replica.storage().key_count(partition)?;
        let theirs = self
            .state()
            .peer_counts
            .get(&(partition, peer.to_string()))
            .copied();
        let behind = theirs.is_some_and(|t| t >= MIN_BULK_KEYS && ours <= t);
        let queued = behind && self.enqueue(partition);
        if queued {
            self.persist();
        }
        Ok(queued)
    }

    /// Queues `partition` unless pending or cooling down; true when queued.
    fn enqueue(&self, partition: PartitionId) -> bool {
        let mut state = self.state();
        let cooling = state
            .finished
            .get(&partition)
            .is_some_and(|t| t.elapsed() < COOLDOWN);
        if cooling || state.pending.contains_key(&partition) {
            return false;
        }
        state.pending.insert(partition, Progress::default());
        self.metrics
            .rebuild_partitions_pending
            .set(state.pending.len() as i64);
        tracing::info!(partition, "rebuild: partition queued for a bulk stream");
        true
    }

    fn next_pending(&self) -> Option<PartitionId> {
        let mut state = self.state();
        let next = state
            .pending
            .keys()
            .find(|p| !state.streaming.contains(p) && !state.stalled.contains(p))
            .copied()?;
        state.streaming.insert(next);
        // A stream runs for a queued partition only (`forget_unowned` keeps streaming ones).
        debug_assert!(
            state
                .streaming
                .iter()
                .all(|p| state.pending.contains_key(p)),
            "a partition streams without being queued"
        );
        Some(next)
    }

    /// Once: the cursors a previous process persisted, for partitions this node still owns.
    fn load_cursors(&self, view: &ClusterView) {
        let mut state = self.state();
        if state.loaded {
            return;
        }
        state.loaded = true;
        let saved = match self.replica.storage().meta_get(CURSORS_META_KEY) {
            Ok(Some(bytes)) => decode_cursors(&bytes),
            _ => BTreeMap::new(),
        };
        for (partition, progress) in saved {
            if view.ring.is_primary(partition, &self.name) {
                tracing::info!(
                    partition,
                    keys = progress.keys,
                    "rebuild: resuming a stream"
                );
                self.metrics.rebuild_resumed.inc();
                state.pending.insert(partition, progress);
            }
        }
        self.metrics
            .rebuild_partitions_pending
            .set(state.pending.len() as i64);
    }

    /// Drops the streams of partitions this node no longer owns (the ring changed).
    fn forget_unowned(&self, view: &ClusterView) {
        let mut state = self.state();
        let before = state.pending.len();
        let State {
            pending, streaming, ..
        } = &mut *state;
        pending.retain(|p, _| view.ring.is_primary(*p, &self.name) || streaming.contains(p));
        if state.pending.len() != before {
            drop(state);
            self.persist();
        }
    }

    /// The count rule over every partition this node owns: one `KeyCounts` per other owner.
    async fn sweep(&self, view: &ClusterView) -> Result<(), HealError> {
        let mut by_peer: BTreeMap<String, Vec<PartitionId>> = BTreeMap::new();
        for p in view.ring.primary_partitions(&self.name) {
            for owner in view.ring.primaries(p).iter().filter(|o| **o != self.name) {
                by_peer.entry(owner.clone()).or_default().push(p);
            }
        }
        let storage = self.replica.storage();
        let mut queued = false;
        for (peer, partitions) in by_peer {
            if view.unreachable.contains(&peer) {
                continue;
            }
            let request = Request::KeyCounts {
                partitions: partitions.clone(),
            };
            let counts = match self.peers.call(&peer, request, self.rpc_timeout).await? {
                Response::Counts(c) if c.len() == partitions.len() => c,
                _ => return Err(bad_answer(&peer, "did not send its key counts")),
            };
            for (p, theirs) in partitions.into_iter().zip(counts) {
                self.state().peer_counts.insert((p, peer.clone()), theirs);
                if needs_bulk(storage.key_count(p)?, theirs) && self.enqueue(p) {
                    queued = true;
                }
            }
        }
        if queued {
            self.persist();
        }
        Ok(())
    }

    /// Streams one partition to its end, then drops its cursor; on failure keeps it (the
    /// next step retries from there).
    async fn stream(self: Arc<Self>, partition: PartitionId) {
        let result = self.pull(partition).await;
        {
            let mut state = self.state();
            state.streaming.remove(&partition);
            match result {
                Ok(()) => self.finish(&mut state, partition),
                Err(e) => {
                    tracing::warn!(partition, "rebuild stream stopped, retried next step: {e}");
                    state.stalled.insert(partition);
                }
            }
            self.metrics
                .rebuild_partitions_pending
                .set(state.pending.len() as i64);
        }
        self.persist();
    }

    fn finish(&self, state: &mut State, partition: PartitionId) {
        debug_assert!(
            !state.streaming.contains(&partition),
            "partition {partition} finished while still streaming"
        );
        if let Some(done) = state.pending.remove(&partition) {
            state.done_keys += done.keys;
            state.done_bytes += done.bytes;
            tracing::info!(
                partition,
                keys = done.keys,
                bytes = done.bytes,
                "rebuild: partition streamed"
            );
        }
        state.finished.insert(partition, Instant::now());
        self.metrics.rebuild_partitions_done.inc();
        if state.pending.is_empty() {
            // The estimate's rate is that of the current rebuild, not of an earlier one.
            state.pulled = 0;
            state.first_page = None;
        }
    }

    /// Pulls pages of `partition` from its fullest reachable other owner until its end.
    async fn pull(&self, partition: PartitionId) -> Result<(), HealError> {
        // A page is at most a sixteenth of a second's budget, so the streams interleave
        // and the limiter's waits stay short.
        let max_bytes = (self.config.bytes_per_s / 16).clamp(4096, PAGE_BYTES as u64) as u32;
        loop {
            let peer = self.source(partition)?;
            let after = self.progress(partition).after;
            let request = Request::PartitionPage {
                partition,
                after: after.clone(),
                max_bytes,
            };
            let page = self.peers.call(&peer, request, self.rpc_timeout).await?;
            let Response::Page {
                objects,
                resume,
                bytes,
                keys,
            } = page
            else {
                return Err(bad_answer(&peer, format!("sent no page of {partition}")));
            };
            self.check_page(
                partition,
                after.as_deref().map(|a| &a[..]),
                &objects,
                &resume,
            )
            .map_err(|e| bad_answer(&peer, format!("sent a bad page of {partition}: {e}")))?;
            // A checked page moves the cursor forward, or is the last.
            debug_assert!(
                match (&resume, &after) {
                    (Some(r), Some(a)) => r > a,
                    (Some(_), None) => !objects.is_empty(),
                    (None, _) => true,
                },
                "a rebuild page of {partition} that does not advance its cursor"
            );
            let count = objects.len() as u64;
            self.merge(objects).await?;
            let last = resume.is_none();
            self.advance(partition, &peer, resume, count, bytes, keys);
            let wait = self
                .limiter
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .charge(bytes, Instant::now());
            tokio::time::sleep(wait).await;
            if last {
                return Ok(());
            }
        }
    }

    fn progress(&self, partition: PartitionId) -> Progress {
        self.state()
            .pending
            .get(&partition)
            .cloned()
            .unwrap_or_default()
    }

    /// The reachable other owner that held the most keys of `partition` at the last sweep.
    fn source(&self, partition: PartitionId) -> Result<String, HealError> {
        let view = self.view();
        if !view.ring.is_primary(partition, &self.name) {
            return Err(bad_answer(
                &self.name,
                format!("no longer owns {partition}"),
            ));
        }
        let state = self.state();
        let source = view
            .ring
            .primaries(partition)
            .iter()
            .filter(|o| **o != self.name && !view.unreachable.contains(*o))
            .max_by_key(|o| state.peer_counts.get(&(partition, o.to_string())))
            .cloned()
            .ok_or_else(|| bad_answer(&self.name, format!("no reachable owner of {partition}")))?;
        // The short side pulls from another owner, never from itself or a non-owner.
        debug_assert!(
            source != self.name && view.ring.is_primary(partition, &source),
            "rebuilding {partition} from {source}, not another owner"
        );
        Ok(source)
    }

    /// A page must hold keys of `partition` only, ascending after `after`, and end where its
    /// `resume` says (so every page makes progress and none is skipped).
    fn check_page(
        &self,
        partition: PartitionId,
        after: Option<&[u8]>,
        objects: &[KeyedObject],
        resume: &Option<ByteBuf>,
    ) -> Result<(), String> {
        let mut previous = after.map(<[u8]>::to_vec);
        for o in objects {
            if o.bucket.len() > crate::object::MAX_NAME_BYTES {
                return Err("a bucket over the name limit".into());
            }
            if self.replica.partition_of(&o.bucket, &o.key) != partition {
                return Err("a key of another partition".into());
            }
            let skey = crate::object::storage_key(&o.bucket, &o.key);
            if previous.as_ref().is_some_and(|p| *p >= skey) {
                return Err("keys out of storage order".into());
            }
            previous = Some(skey);
        }
        match resume {
            Some(r) if objects.is_empty() || previous.as_deref() != Some(&r[..]) => {
                Err("a resume key that is not its last key".into())
            }
            _ => Ok(()),
        }
    }

    /// Merges a page through the replica's normal merge (on the blocking pool, as
    /// `handle_async` runs every batch merge). A key whose merge is refused at the hard limits keeps its
    /// versions on both sides, as for any merge, and does not stop the stream.
    async fn merge(&self, objects: Vec<KeyedObject>) -> Result<(), HealError> {
        if objects.is_empty() {
            return Ok(());
        }
        match self
            .replica
            .clone()
            .handle_async(Request::MergeBatch { objects })
            .await
        {
            Response::Merged(_) | Response::Refused { .. } => Ok(()),
            other => Err(HealError::Storage(crate::storage::StorageError::Engine(
                format!("merging a rebuild page: {other:?}"),
            ))),
        }
    }

    /// Records a merged page and persists the cursors when they were not for a while.
    fn advance(
        &self,
        partition: PartitionId,
        peer: &str,
        resume: Option<ByteBuf>,
        count: u64,
        bytes: u64,
        keys_total: u64,
    ) {
        self.metrics.rebuild_keys.inc_by(count);
        self.metrics.rebuild_bytes.inc_by(bytes);
        let mut state = self.state();
        state.pulled += count;
        state.first_page.get_or_insert_with(Instant::now);
        if let Some(p) = state.pending.get_mut(&partition) {
            p.after = resume;
            p.keys += count;
            p.bytes += bytes;
            p.keys_total = keys_total;
            p.peer = Some(peer.to_string());
        }
        let due = state
            .last_persist
            .is_none_or(|t| t.elapsed() >= PERSIST_EVERY);
        drop(state);
        if due {
            self.persist();
        }
    }

    /// Writes the cursors of the streams under way (fsynced). A failure is logged: the
    /// stream goes on, and a restart then redoes pages (merging them again is harmless).
    fn persist(&self) {
        let _order = self
            .persisting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let cursors: BTreeMap<PartitionId, Progress> = {
            let mut state = self.state();
            state.last_persist = Some(Instant::now());
            // Queued partitions too, not only the ones part way: a kill just after both
            // streams ended used to leave no cursor, and the restart then re-planned the
            // rebuild from its counts instead of resuming it (a CI failure).
            state.pending.iter().map(|(k, v)| (*k, v.clone())).collect()
        };
        if let Err(e) = self
            .replica
            .storage()
            .meta_put(CURSORS_META_KEY, &encode_cursors(&cursors))
        {
            tracing::warn!("rebuild: cannot persist the stream cursors: {e}");
        }
    }

    /// What `/status` shows of the rebuild.
    pub fn status(&self) -> RebuildStatus {
        let state = self.state();
        let partitions: Vec<PartitionStatus> = state
            .pending
            .iter()
            .map(|(p, progress)| PartitionStatus {
                partition: *p,
                streaming: state.streaming.contains(p),
                progress: progress.clone(),
            })
            .collect();
        let keys_done = state.done_keys + partitions.iter().map(|p| p.progress.keys).sum::<u64>();
        let bytes_done =
            state.done_bytes + partitions.iter().map(|p| p.progress.bytes).sum::<u64>();
        let left: u64 = partitions
            .iter()
            .map(|s| {
                let known = state
                    .peer_counts
                    .iter()
                    .filter(|((p, _), _)| *p == s.partition)
                    .map(|(_, c)| *c)
                    .max()
                    .unwrap_or(0);
                known
                    .max(s.progress.keys_total)
                    .saturating_sub(s.progress.keys)
            })
            .sum();
        let rate = state
            .first_page
            .map(|t| state.pulled as f64 / t.elapsed().as_secs_f64());
        let eta_s = match rate {
            Some(r) if r.is_finite() && r > 0.0 && !partitions.is_empty() => Some(left as f64 / r),
            _ => None,
        };
        RebuildStatus {
            partitions,
            keys_done,
            bytes_done,
            eta_s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causality::{ActorId, Context};
    use crate::object::{encode_object, storage_key, Object, Sibling};
    use crate::scan::{scan_page, MAX_PAGE_OBJECTS};
    use crate::storage::MemoryStorage;

    fn fill(storage: &MemoryStorage, keys: u32, value_len: usize) {
        for i in 0..keys {
            let object = Object::new().update(
                &Context::default(),
                ActorId(1),
                Sibling::value(vec![b'v'; value_len], None),
            );
            let skey = storage_key(b"b", format!("k{i:05}").as_bytes());
            storage.put(0, &skey, &encode_object(&object)).unwrap();
        }
    }

    fn all_pages(storage: &MemoryStorage, max_bytes: usize) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        for _ in 0..100_000 {
            let page = scan_page(storage, 0, after.as_deref(), max_bytes).unwrap();
            assert!(!page.objects.is_empty() || page.resume.is_none());
            keys.extend(page.objects.iter().map(|o| o.key.clone()));
            match page.resume {
                Some(k) => after = Some(k),
                None => return keys,
            }
        }
        panic!("the pages never ended");
    }

    #[test]
    fn pages_hold_every_key_once_in_storage_order_within_their_byte_bound() {
        let storage = MemoryStorage::new();
        fill(&storage, 700, 100);
        let want: Vec<Vec<u8>> = (0..700).map(|i| format!("k{i:05}").into_bytes()).collect();
        for max_bytes in [1, 500, 4096, 64 * 1024, 1 << 30] {
            assert_eq!(
                all_pages(&storage, max_bytes),
                want,
                "max_bytes {max_bytes}"
            );
        }
        let page = scan_page(&storage, 0, None, 4096).unwrap();
        assert!(page.bytes <= 4096 && page.bytes > 3000, "{}", page.bytes);
        assert!(scan_page(&storage, 1, None, 4096)
            .unwrap()
            .objects
            .is_empty());
    }

    #[test]
    fn a_page_holds_one_object_larger_than_its_bound_and_at_most_the_object_limit() {
        let storage = MemoryStorage::new();
        fill(&storage, 3, 10_000);
        let page = scan_page(&storage, 0, None, 10).unwrap();
        assert_eq!(page.objects.len(), 1);
        assert!(page.resume.is_some());
        let storage = MemoryStorage::new();
        fill(&storage, MAX_PAGE_OBJECTS as u32 + 1, 1);
        let page = scan_page(&storage, 0, None, 1 << 30).unwrap();
        assert_eq!(page.objects.len(), MAX_PAGE_OBJECTS);
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_no_cursor() {
        let mut cursors = BTreeMap::new();
        cursors.insert(
            5,
            Progress {
                after: Some(ByteBuf::from(vec![0, 1, 255])),
                keys: 300,
                bytes: 40_000,
                ..Progress::default()
            },
        );
        assert_eq!(decode_cursors(&encode_cursors(&cursors)), cursors);
        assert!(decode_cursors(b"\xc1junk").is_empty());
    }

    #[test]
    fn the_rate_limiter_holds_the_average_to_the_budget() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(1000, start);
        // The burst (a quarter second) is free; beyond it each byte costs a millisecond.
        assert_eq!(limiter.charge(250, start), Duration::ZERO);
        assert_eq!(limiter.charge(500, start), Duration::from_millis(500));
        // Waiting out the debt pays it; time beyond refills up to the burst only.
        let later = start + Duration::from_millis(500);
        assert_eq!(limiter.charge(0, later), Duration::ZERO);
        let much_later = later + Duration::from_secs(100);
        assert_eq!(limiter.charge(250, much_later), Duration::ZERO);
        assert_eq!(limiter.charge(1, much_later), Duration::from_millis(1));
        // 10 s of pages of 100 bytes, each sent once its wait is over, move about 10,000 bytes.
        let mut now = much_later + Duration::from_secs(1);
        let (end, mut sent) = (now + Duration::from_secs(10), 0u64);
        while now < end {
            now += limiter.charge(100, now);
            sent += 100;
        }
        assert!((10_000..=10_400).contains(&sent), "{sent}");
    }

    /// Peers holding 1000 keys of every partition that answer no page.
    struct FullPeersWithoutPages;

    impl Peers for FullPeersWithoutPages {
        async fn call(
            &self,
            to: &str,
            request: Request,
            _timeout: Duration,
        ) -> Result<Response, crate::peers::PeerError> {
            match request {
                Request::KeyCounts { partitions } => {
                    Ok(Response::Counts(vec![1000; partitions.len()]))
                }
                _ => Err(crate::peers::PeerError::no_answer(to, "no pages today")),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_resumes_every_planned_partition_even_before_its_first_page() {
        use chorus_gossip::{ClusterConfig, Config as GossipConfig};
        let config = crate::replica::ReplicaConfig::for_tests(1, 10);
        let metrics = Arc::new(Metrics::default());
        let storage = Arc::new(MemoryStorage::new());
        let replica = Arc::new(Replica::new(storage, config, metrics).unwrap());
        let cluster = ClusterConfig {
            n: 3,
            ring_size: 64,
        };
        let gossip = Arc::new(Gossip::new(
            GossipConfig::new("a", "a", 1, cluster, Vec::new()),
            64,
            3,
            1,
        ));
        *gossip.view.write().unwrap() = ClusterView {
            ring: Arc::new(chorus_ring::Ring::new(64, 3, ["a", "b", "c"]).unwrap()),
            unreachable: Arc::default(),
        };
        // One process per call, on the same storage.
        let process = |metrics: Arc<Metrics>| {
            Arc::new(Rebuilder::new(
                "a".into(),
                replica.clone(),
                Arc::new(FullPeersWithoutPages),
                gossip.clone(),
                metrics,
                RebuildConfig::default(),
                Duration::from_secs(1),
            ))
        };
        let first = process(Arc::new(Metrics::default()));
        first.step().await;
        assert_eq!(
            first.status().partitions.len(),
            64,
            "every partition planned"
        );

        let metrics = Arc::new(Metrics::default());
        let second = process(metrics.clone());
        second.step().await;
        assert_eq!(metrics.rebuild_resumed.get(), 64);
    }

    #[test]
    fn the_count_rule_pulls_only_a_replica_far_behind_a_sizeable_peer() {
        assert!(needs_bulk(0, 300));
        assert!(needs_bulk(149, 300));
        assert!(!needs_bulk(150, 300));
        assert!(!needs_bulk(300, 0), "the fuller side never pulls");
        assert!(
            !needs_bulk(0, MIN_BULK_KEYS - 1),
            "small differences use segments"
        );
    }
}

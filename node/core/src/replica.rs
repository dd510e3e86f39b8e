//! One node's role as a replica: reads, coordinated writes and merges of per-key state
//! against local storage. A replica never talks to other nodes; it only merges states
//! through the DVV laws, so replaying the same requests gives the same stored bytes. The
//! time of day comes from its injected [`WallClock`], and only to judge expiry (a reap
//! batch holding a value not yet expired is refused; listing hides expired keys).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::PoisonError;
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::causality::{ActorId, Context, Dot};
use crate::clock::WallClock;
use crate::metrics::Metrics;
use crate::object::{
    decode_object, split_storage_key, storage_key, LimitError, Limits, Object, Sibling,
    MAX_NAME_BYTES, WRITE_MAX_ACTORS,
};
use crate::rpc::{KeyedObject, Request, Response};
use crate::storage::merkle::{BRANCHES, SEGMENTS};
use crate::storage::{deferring_durability, Monitored, PartitionId, Storage, StorageHealth};

/// Read-modify-write of a key happens under one of these locks, so two concurrent merges
/// of the same key cannot both read the old state and lose each other's versions.
const LOCK_STRIPES: usize = 1024;
/// Rough cap on the bytes of one anti-entropy or transfer batch.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// A storage error before anything was written (see `OutcomeUnknown` for the others).
    #[error("storage: {0}")]
    Storage(crate::storage::StorageError),
    /// A storage error once the write may have reached the journal (the error says so,
    /// [`StorageError::may_have_written`], or a later step of the same request failed
    /// after the version was stored): a restart may replay it. Answered
    /// `Response::OutcomeUnknown`, never as "nothing stored".
    ///
    /// [`StorageError::may_have_written`]: crate::storage::StorageError::may_have_written
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(crate::storage::StorageError),
    #[error("{0}")]
    Object(#[from] crate::object::ObjectError),
    /// A new write refused: its result would cross a write limit. Nothing was stored.
    #[error("{0}")]
    Limit(#[from] LimitError),
    /// A merge refused: the merged state would cross a hard limit. Nothing was stored; the
    /// sender keeps its versions, so none is dropped.
    #[error("merge refused: {0}")]
    MergeRefused(LimitError),
    #[error("invalid state from a peer: {0}")]
    InvalidState(String),
}

impl From<crate::storage::StorageError> for ReplicaError {
    fn from(e: crate::storage::StorageError) -> Self {
        match e.may_have_written() {
            true => ReplicaError::OutcomeUnknown(e),
            false => ReplicaError::Storage(e),
        }
    }
}

impl ReplicaError {
    /// An error of a step after the request's version was stored: the version may stay.
    fn after_store(self) -> Self {
        match self {
            ReplicaError::Storage(e) => ReplicaError::OutcomeUnknown(e),
            other => other,
        }
    }
}

impl From<crate::scan::ScanError> for ReplicaError {
    fn from(e: crate::scan::ScanError) -> Self {
        match e {
            crate::scan::ScanError::Storage(e) => e.into(),
            crate::scan::ScanError::Object(e) => ReplicaError::Object(e),
        }
    }
}

/// How a coordinated write is stored beyond its value: for which unreachable owner a
/// fallback keeps it, and the bucket's own sibling bound if it sets one.
#[derive(Clone, Copy, Debug, Default)]
pub struct Write<'a> {
    pub hint_for: Option<&'a str>,
    pub max_siblings: Option<usize>,
}

pub struct ReplicaConfig {
    /// The actor this replica mints dots with until it next drops keys (see `retire_actor`).
    pub actor: ActorId,
    /// Seeds the choice of new actor ids, so a simulation replays them.
    pub actor_seed: u64,
    pub ring_size: u32,
    /// A coordinated write that would leave more siblings than this is refused (at most
    /// `object::WRITE_MAX_SIBLINGS`).
    pub max_siblings: usize,
    /// A coordinated write that would leave a larger encoded object is refused (at most
    /// `object::WRITE_MAX_OBJECT_BYTES`).
    pub max_object_bytes: usize,
    /// A key reaching this many siblings is logged as a warning.
    pub warn_siblings: usize,
    /// Hints kept per unreachable owner; beyond it, hints are dropped (and counted), and
    /// anti-entropy repairs the owner instead.
    pub max_hints_per_owner: u64,
    /// The time of day, for expiry only (see `clock`).
    pub clock: Arc<dyn WallClock>,
}

#[cfg(test)]
impl ReplicaConfig {
    /// A test replica: a ring of 64, the write limits, the system clock.
    pub(crate) fn for_tests(actor: u64, max_hints_per_owner: u64) -> ReplicaConfig {
        ReplicaConfig {
            actor: ActorId(actor),
            actor_seed: actor,
            ring_size: 64,
            max_siblings: 100,
            max_object_bytes: crate::object::WRITE_MAX_OBJECT_BYTES,
            warn_siblings: 25,
            max_hints_per_owner,
            clock: crate::clock::SystemClock::shared(),
        }
    }
}

pub struct Replica<S: Storage> {
    /// Every storage call goes through the health monitor, so an engine error anywhere
    /// fails the node's storage (see `storage::Monitored`).
    storage: Arc<Monitored<S>>,
    config: ReplicaConfig,
    stripes: Vec<Mutex<()>>,
    actor: Mutex<(ActorId, StdRng)>,
    /// Hints held per owner, as last counted; checked against the bound on every hint.
    hint_counts: Mutex<HashMap<String, u64>>,
    /// This replica's data may be incomplete (journal damage, a lost directory): it answers
    /// no `Get` until healing has compared it with every other owner. Persisted.
    repairing: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
}

/// Meta key under which an unfinished repair is remembered across restarts.
const REPAIR_META_KEY: &str = "repair_pending";

/// Meta key under which the current actor id is persisted.
pub const ACTOR_META_KEY: &str = "actor";

impl<S: Storage> Replica<S> {
    pub fn new(
        storage: Arc<S>,
        config: ReplicaConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ReplicaError> {
        let storage = Arc::new(Monitored::new(storage, metrics.clone()));
        let actor = Mutex::new((config.actor, StdRng::seed_from_u64(config.actor_seed)));
        let hint_counts = Mutex::new(storage.hint_owners()?.into_iter().collect());
        let repairing = storage.meta_get(REPAIR_META_KEY)?.as_deref() == Some(&[1]);
        metrics.repairing.set(i64::from(repairing));
        Ok(Replica {
            storage,
            config,
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            actor,
            hint_counts,
            repairing: repairing.into(),
            metrics,
        })
    }

    /// Unix milliseconds by this node's clock: what expiry is judged by here.
    pub fn now_ms(&self) -> u64 {
        self.config.clock.now_ms()
    }

    /// Whether this replica still repairs (see [`Replica::begin_repair`]).
    pub fn is_repairing(&self) -> bool {
        self.repairing.load(std::sync::atomic::Ordering::Acquire)
    }

    /// From now on, and across restarts until [`Replica::finish_repair`], this replica
    /// answers no `Get`: its data may lack writes it acknowledged, and a read it answered
    /// alone (r=one) would report them absent. Writes and merges are taken as usual.
    pub fn begin_repair(&self) -> Result<(), ReplicaError> {
        self.storage.meta_put(REPAIR_META_KEY, &[1])?;
        self.repairing
            .store(true, std::sync::atomic::Ordering::Release);
        self.metrics.repairing.set(1);
        Ok(())
    }

    /// Healing compared every partition this replica owns with every other owner.
    pub fn finish_repair(&self) -> Result<(), ReplicaError> {
        self.storage.meta_put(REPAIR_META_KEY, &[0])?;
        self.repairing
            .store(false, std::sync::atomic::Ordering::Release);
        self.metrics.repairing.set(0);
        tracing::warn!("repair complete: every owned partition matched its other owners; reads are answered from this replica again");
        Ok(())
    }

    /// Replaces the per-owner hint counts with a fresh count from storage.
    pub fn recount_hints(&self, counts: &[(String, u64)]) {
        *self
            .hint_counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = counts.iter().cloned().collect();
    }

    pub fn actor(&self) -> ActorId {
        self.actor.lock().unwrap_or_else(PoisonError::into_inner).0
    }

    /// Switches to a fresh actor id, persisted before return. Called before this replica
    /// drops keys (handoff, ownership transfer, reaping): a replica that no longer holds a
    /// key would otherwise mint a dot it already used for that key, and a DVV merge would
    /// then take the new value for the old one and drop it (Riak's vnode epochs solve the
    /// same problem).
    pub fn retire_actor(&self) -> Result<ActorId, ReplicaError> {
        let mut guard = self.actor.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = ActorId(guard.1.random());
        // 64 random bits: equal to the retired one only by a broken generator.
        debug_assert_ne!(fresh, guard.0, "a retired actor id was drawn again");
        self.storage
            .meta_put(ACTOR_META_KEY, &fresh.0.to_be_bytes())?;
        guard.0 = fresh;
        Ok(fresh)
    }

    pub fn storage(&self) -> &Arc<Monitored<S>> {
        &self.storage
    }

    /// Whether (and why) this node's storage failed.
    pub fn health(&self) -> &Arc<StorageHealth> {
        self.storage.health()
    }

    fn list_keys(
        &self,
        partition: PartitionId,
        bucket: &[u8],
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<Response, ReplicaError> {
        let limit = (limit as usize).clamp(1, crate::scan::MAX_LIST_LIMIT);
        let part = crate::scan::scan_live_keys(
            &*self.storage,
            partition,
            bucket,
            after,
            limit,
            self.now_ms(),
        )?;
        self.metrics.list_keys_scanned.inc_by(part.scanned);
        debug_assert!(part.keys.len() <= limit, "a listing page over its limit");
        Ok(Response::Keys {
            keys: part
                .keys
                .into_iter()
                .map(serde_bytes::ByteBuf::from)
                .collect(),
            resume: part.resume.map(serde_bytes::ByteBuf::from),
        })
    }

    /// A rebuild page (see `scan::scan_page`) and this replica's key count of the partition.
    fn partition_page(
        &self,
        partition: PartitionId,
        after: Option<&[u8]>,
        max_bytes: u32,
    ) -> Result<Response, ReplicaError> {
        self.check_partition(partition)?;
        let page = crate::scan::scan_page(&*self.storage, partition, after, max_bytes as usize)?;
        debug_assert!(
            page.objects
                .iter()
                .all(|o| self.partition_of(&o.bucket, &o.key) == partition),
            "a rebuild page of partition {partition} holds a key of another partition"
        );
        Ok(Response::Page {
            objects: page.objects,
            resume: page.resume.map(serde_bytes::ByteBuf::from),
            bytes: page.bytes,
            keys: self.storage.key_count(partition)?,
        })
    }

    fn key_counts(&self, partitions: &[PartitionId]) -> Result<Response, ReplicaError> {
        let counts = partitions
            .iter()
            .map(|&p| {
                self.check_partition(p)?;
                Ok(self.storage.key_count(p)?)
            })
            .collect::<Result<Vec<u64>, ReplicaError>>()?;
        Ok(Response::Counts(counts))
    }

    fn check_partition(&self, partition: PartitionId) -> Result<(), ReplicaError> {
        if partition >= self.config.ring_size {
            return Err(ReplicaError::InvalidState(format!(
                "partition {partition} is past the ring's {}",
                self.config.ring_size
            )));
        }
        Ok(())
    }

    /// Tries a durable write to see whether failed storage works again; true when healthy.
    pub fn probe_storage(&self) -> bool {
        self.storage.probe()
    }

    pub fn partition_of(&self, bucket: &[u8], key: &[u8]) -> PartitionId {
        let partition = chorus_ring::partition_of(self.config.ring_size, bucket, key);
        debug_assert!(partition < self.config.ring_size);
        partition
    }

    /// [`Replica::handle`] for callers on an async runtime, the one place this is decided
    /// for the coordinator's local calls and the QUIC handler alike. Writes run inline and
    /// do not wait for their fsync on this thread (`--sync always`): the answer waits, as
    /// a task, for the group commit that covers them (`storage::deferring_durability`), so
    /// nothing is acknowledged before it is durable and no worker sleeps on the disk.
    pub async fn handle_async(self: Arc<Self>, request: Request) -> Response {
        // A listing scan reads up to `scan::SCAN_BUDGET` entries: never on an async worker.
        // So do a rebuild page, a count that may load a partition's index, and a batch
        // merge (up to a rebuild page or `MAX_BATCH_BYTES` of objects): one on an async
        // worker would stall every client request queued behind it.
        let scans = matches!(
            request,
            Request::ListKeys { .. }
                | Request::PartitionPage { .. }
                | Request::KeyCounts { .. }
                | Request::MergeBatch { .. }
        ) && self.storage.scans_block();
        let storage = self.storage.clone();
        let (response, pending) = if scans {
            tokio::task::spawn_blocking(move || deferring_durability(|| self.handle(request)))
                .await
                .unwrap_or_else(|e| {
                    let failed = Response::Failed(format!("replica task failed: {e}"));
                    (failed, Vec::new())
                })
        } else {
            deferring_durability(|| self.handle(request))
        };
        for write in pending {
            if let Err(e) = storage.settle(write).await {
                // The writes are in the journal and a restart may replay them: a minted
                // version may survive, so this is never "nothing stored" (`Failed`).
                return Response::OutcomeUnknown(format!("storage: {e}"));
            }
        }
        response
    }

    pub fn handle(&self, request: Request) -> Response {
        if let Some(refusal) = self.refusal(&request) {
            return Response::Failed(refusal);
        }
        self.dispatch(request).unwrap_or_else(error_response)
    }

    /// Why this replica answers nothing to `request`, if it does not.
    fn refusal(&self, request: &Request) -> Option<String> {
        // A replica whose storage failed answers nothing: it cannot store a write, and what
        // it would read may miss writes it refused since. Coordinators ask other replicas.
        if let Some(reason) = self.health().failure() {
            return Some(format!("this node's storage failed: {reason}"));
        }
        if self.is_repairing() && matches!(request, Request::Get { .. } | Request::ListKeys { .. })
        {
            return Some("this replica is being repaired and may lack writes; ask another".into());
        }
        check_peer_request(request, self.now_ms()).err()
    }

    fn dispatch(&self, request: Request) -> Result<Response, ReplicaError> {
        match request {
            Request::Get { bucket, key } => self.get(&bucket, &key).map(Response::Object),
            Request::Coordinate {
                bucket,
                key,
                context,
                value,
                hint_for,
                over_current,
                max_siblings,
            } => {
                let context = (!over_current).then_some(&context);
                let write = Write {
                    hint_for: hint_for.as_deref(),
                    max_siblings: max_siblings.map(|m| m as usize),
                };
                self.coordinate(&bucket, &key, context, value, write)
                    .map(|(object, dot)| Response::Minted { object, dot })
            }
            Request::Merge {
                bucket,
                key,
                object,
                hint_for,
            } => {
                // The ack is enough: shipping the merged state back would double the traffic.
                self.merge(&bucket, &key, &object, hint_for.as_deref())
                    .map(|_| Response::Merged(1))
            }
            Request::TreeBranches { partition } => self
                .storage
                .tree(partition)
                .map(|t| Response::Branches(t.branches()))
                .map_err(Into::into),
            Request::TreeLeaves {
                partition,
                branches,
            } => self.leaves(partition, &branches).map(Response::Leaves),
            Request::SegmentObjects {
                partition,
                segments,
            } => self
                .segment_objects(partition, &segments)
                .map(Response::Objects),
            Request::MergeBatch { objects } => self.merge_batch(&objects).map(Response::Merged),
            Request::ReapBatch { objects } => self.reap(&objects).map(Response::Merged),
            Request::ListKeys {
                partition,
                bucket,
                after,
                limit,
            } => self.list_keys(partition, &bucket, after.as_deref().map(|a| &a[..]), limit),
            Request::PartitionPage {
                partition,
                after,
                max_bytes,
            } => self.partition_page(partition, after.as_deref().map(|a| &a[..]), max_bytes),
            Request::KeyCounts { partitions } => self.key_counts(&partitions),
            // Inside `handle_async`'s durability scope, so every write in the batch is
            // settled before any answer leaves.
            Request::Batch { requests } => {
                let count = requests.len();
                let answers: Vec<Response> = requests.into_iter().map(|r| self.handle(r)).collect();
                // The batching client pairs answers with requests by position.
                debug_assert_eq!(answers.len(), count, "a batch answered out of step");
                Ok(Response::Batch(answers))
            }
        }
    }

    /// What a new write may leave on a key: half of each hard limit, and the flags.
    fn write_limits(&self) -> Limits {
        Limits {
            actors: WRITE_MAX_ACTORS,
            siblings: self.config.max_siblings,
            bytes: self.config.max_object_bytes,
        }
    }

    pub fn get(&self, bucket: &[u8], key: &[u8]) -> Result<Option<Object>, ReplicaError> {
        let partition = self.partition_of(bucket, key);
        match self.storage.get(partition, &storage_key(bucket, key))? {
            Some(bytes) => Ok(Some(decode_object(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The coordinating replica's part of a write: the new value gets a dot of this
    /// replica's actor, superseding exactly what `context` covers, or with `None` everything
    /// this replica holds for the key (read under the same lock as the write, so no version
    /// that arrives meanwhile is superseded unseen). Persisted before return; returns the
    /// stored state and the new dot. A fallback (`hint_for` = the unreachable owner) records
    /// a hint, as in `merge`. Refused, with nothing stored, when the result would cross a
    /// write limit. A storage error once the version may be in the journal is
    /// [`ReplicaError::OutcomeUnknown`]: it may have been minted.
    pub fn coordinate(
        &self,
        bucket: &[u8],
        key: &[u8],
        context: Option<&Context>,
        value: Sibling,
        write: Write,
    ) -> Result<(Object, Dot), ReplicaError> {
        let actors = context.map_or(0, |c| c.entries().len());
        if actors > WRITE_MAX_ACTORS {
            return Err(LimitError::ContextActors {
                count: actors,
                max: WRITE_MAX_ACTORS,
            }
            .into());
        }
        let partition = self.partition_of(bucket, key);
        let skey = storage_key(bucket, key);
        let _guard = self.lock(&skey);
        let raw = self.storage.get(partition, &skey)?;
        let current = match &raw {
            Some(bytes) => decode_object(bytes)?,
            None => Object::new(),
        };
        let actor = self.actor();
        let over_current = context.is_none();
        let context = context.cloned().unwrap_or_else(|| current.context());
        let updated = current.update(&self.with_expired(&current, context), actor, value);
        let dot = (actor, updated.counter(actor));
        // The new dot is above everything the stored state saw of this replica's actor (the
        // state it was minted on is the one stored, read under the key's lock).
        debug_assert!(
            current.counter(actor) < dot.1,
            "minted {dot:?} over a stored state that has seen it"
        );
        // Over the replica's own state (a RESP SET), every version held here is superseded.
        debug_assert!(
            !over_current || updated.sibling_count() == 1,
            "a write over the current state left {} siblings",
            updated.sibling_count()
        );
        let mut limits = self.write_limits();
        limits.siblings = limits
            .siblings
            .min(write.max_siblings.unwrap_or(usize::MAX));
        let encoded = limits.check(&updated)?;
        let count = updated.sibling_count();
        debug_assert!(
            count <= limits.siblings && count <= crate::object::WRITE_MAX_SIBLINGS,
            "a write stored {count} siblings, over its bound"
        );
        // Nothing is stored that a decoder would refuse, and what is stored is what the
        // coordinator ships to the other replicas.
        debug_assert!(
            decode_object(&encoded).is_ok_and(|stored| stored == updated),
            "a minted state does not round-trip through its encoding"
        );
        if count >= self.config.warn_siblings {
            tracing::warn!(bucket = %String::from_utf8_lossy(bucket), key = %String::from_utf8_lossy(key), siblings = count, "key has many siblings; clients should resolve them by writing with a read's context");
        }
        self.storage
            .put_replacing(partition, &skey, raw.as_deref(), &encoded)?;
        if let Some(owner) = write.hint_for {
            // The minted version is stored: failing now must not read as "nothing stored".
            self.record_hint(owner, partition, &skey)
                .map_err(ReplicaError::after_store)?;
        }
        Ok((updated, dot))
    }

    /// `context` plus the exact dot of every version of `current` expired by this node's
    /// clock: a write replaces dead values it could not have been shown, so blind writes
    /// of values with a TTL do not pile up hidden siblings until the key hits its bound.
    fn with_expired(&self, current: &Object, context: Context) -> Context {
        let now = self.now_ms();
        current
            .dotted_values()
            .into_iter()
            .filter(|(_, _, s)| s.is_expired(now))
            .fold(context, |c, (actor, counter, _)| {
                c.with_dot((actor, counter))
            })
    }

    /// Merges a peer's state into ours (replication, read repair, handoff, anti-entropy).
    /// Not refused at the write limits (refusing would leave a version unreplicated), only
    /// when the merged state would cross a hard limit the decoder enforces: storing it would
    /// make the key unreadable everywhere. Then nothing is stored here and the sender keeps
    /// its versions; no version is dropped.
    pub fn merge(
        &self,
        bucket: &[u8],
        key: &[u8],
        incoming: &Object,
        hint_for: Option<&str>,
    ) -> Result<Object, ReplicaError> {
        incoming
            .validate()
            .map_err(|e| ReplicaError::InvalidState(e.to_string()))?;
        let partition = self.partition_of(bucket, key);
        let skey = storage_key(bucket, key);
        let _guard = self.lock(&skey);
        let raw = self.storage.get(partition, &skey)?;
        let current = raw.as_deref().map(decode_object).transpose()?;
        let merged = match &current {
            Some(current) => current.sync(incoming),
            None => incoming.clone(),
        };
        // What is stored after a merge holds everything either side had not superseded.
        debug_assert!(
            merged.descends(incoming),
            "a merge lost part of the incoming state"
        );
        debug_assert!(
            current.as_ref().is_none_or(|c| merged.descends(c)),
            "a merge lost part of the stored state"
        );
        if current.as_ref() != Some(&merged) {
            let encoded = Limits::HARD.check(&merged).map_err(|e| {
                self.metrics.merges_refused.inc();
                if self.metrics.merges_refused.get() % 100 == 1 {
                    tracing::warn!(bucket = %String::from_utf8_lossy(bucket), key = %String::from_utf8_lossy(key), "merge refused, the replicas of this key keep their own versions until a client resolves them: {e}");
                }
                ReplicaError::MergeRefused(e)
            })?;
            debug_assert!(
                decode_object(&encoded).is_ok_and(|stored| stored == merged),
                "a merged state does not round-trip through its encoding"
            );
            self.storage
                .put_replacing(partition, &skey, raw.as_deref(), &encoded)?;
        }
        if let Some(owner) = hint_for {
            self.record_hint(owner, partition, &skey)
                .map_err(ReplicaError::after_store)?;
        }
        Ok(merged)
    }

    /// Remembers that this node holds `skey` for the unreachable `owner`, within the bound.
    /// Called under the key's lock, after the state was stored.
    fn record_hint(
        &self,
        owner: &str,
        partition: PartitionId,
        skey: &[u8],
    ) -> Result<(), ReplicaError> {
        let mut counts = self
            .hint_counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let held = counts.entry(owner.to_string()).or_insert(0);
        if *held >= self.config.max_hints_per_owner {
            self.metrics.hints_dropped.inc();
            if self.metrics.hints_dropped.get() % 1000 == 1 {
                tracing::warn!(%owner, limit = self.config.max_hints_per_owner, "hint bound reached: dropping hints for this owner; anti-entropy will repair it");
            }
        } else {
            // The hint only names the key: at delivery the current merged state is sent.
            self.storage.hint_put(owner, partition, skey, &[])?;
            *held += 1;
            self.metrics.hints_queued.inc();
        }
        debug_assert!(
            *held <= self.config.max_hints_per_owner,
            "{held} hints held for {owner}, over the bound"
        );
        Ok(())
    }

    fn leaves(
        &self,
        partition: PartitionId,
        branches: &[u32],
    ) -> Result<Vec<(u32, Vec<[u8; 32]>)>, ReplicaError> {
        let tree = self.storage.tree(partition)?;
        let leaves: Vec<(u32, Vec<[u8; 32]>)> = branches
            .iter()
            .filter(|&&b| (b as usize) < BRANCHES)
            .map(|&b| (b, tree.leaves_of_branch(b as usize).to_vec()))
            .collect();
        // The shape the asking side checks (`healing::anti_entropy::validate_leaves`).
        debug_assert!(
            leaves
                .iter()
                .all(|(_, l)| l.len() == crate::storage::merkle::SEGMENTS_PER_BRANCH),
            "a branch without its leaves"
        );
        Ok(leaves)
    }

    /// Every object of some tree segments, cut off at about `MAX_BATCH_BYTES` (the caller
    /// repairs the rest on its next exchange).
    pub fn segment_objects(
        &self,
        partition: PartitionId,
        segments: &[u32],
    ) -> Result<Vec<KeyedObject>, ReplicaError> {
        let segments: Vec<usize> = segments
            .iter()
            .map(|&s| s as usize)
            .filter(|&s| s < SEGMENTS)
            .collect();
        let mut out = Vec::new();
        let mut bytes = 0;
        for (skey, raw) in self.storage.scan_segments(partition, &segments)? {
            // Stop before the batch crosses the bound, so an answer holds at most one
            // object beyond it and always fits a message.
            let size = skey.len() + raw.len();
            if !out.is_empty() && bytes + size > MAX_BATCH_BYTES {
                break;
            }
            bytes += size;
            debug_assert!(
                segments.contains(&crate::storage::merkle::MerkleTree::segment_of(&skey)),
                "a scan of segments returned a key of another segment"
            );
            let (bucket, key) = split_storage_key(&skey)?;
            out.push(KeyedObject {
                bucket: bucket.to_vec(),
                key: key.to_vec(),
                object: decode_object(&raw)?,
            });
        }
        // At most one object beyond the bound, so an answer always fits a message.
        debug_assert!(
            out.len() <= 1 || bytes <= MAX_BATCH_BYTES,
            "a segment batch of {bytes} bytes"
        );
        Ok(out)
    }

    /// Merges a batch; returns how many keys changed here. A key whose merge is refused
    /// does not stop the others, but the batch then fails, so a sender waiting for the
    /// ack before dropping its copy (ownership transfer) keeps it.
    pub fn merge_batch(&self, objects: &[KeyedObject]) -> Result<usize, ReplicaError> {
        let mut changed = 0;
        let mut refused = None;
        for o in objects {
            let before = self.get(&o.bucket, &o.key)?;
            if before.as_ref().is_none_or(|b| !b.descends(&o.object)) {
                match self.merge(&o.bucket, &o.key, &o.object, None) {
                    Ok(_) => changed += 1,
                    Err(e @ ReplicaError::MergeRefused(_)) => refused = Some(e),
                    Err(e) => return Err(e),
                }
            }
        }
        debug_assert!(changed <= objects.len());
        refused.map_or(Ok(changed), Err)
    }

    /// Physically removes a key, but only if its state is still exactly `expected`: a write
    /// that arrived since the caller looked must not be dropped with it.
    pub fn remove_if_unchanged(
        &self,
        bucket: &[u8],
        key: &[u8],
        expected: &Object,
    ) -> Result<bool, ReplicaError> {
        let partition = self.partition_of(bucket, key);
        let skey = storage_key(bucket, key);
        let _guard = self.lock(&skey);
        if self.read(partition, &skey)?.as_ref() != Some(expected) {
            return Ok(false);
        }
        self.storage.remove(partition, &skey)?;
        Ok(true)
    }

    /// Drops the given dead keys (tombstones and expired values) where they are unchanged;
    /// returns how many were dropped. The batch holds only dead keys (`check_peer_request`
    /// refuses any other).
    pub fn reap(&self, tombstones: &[KeyedObject]) -> Result<usize, ReplicaError> {
        self.retire_actor()?;
        let mut dropped = 0;
        for t in tombstones {
            if self.remove_if_unchanged(&t.bucket, &t.key, &t.object)? {
                dropped += 1;
                let bytes = crate::object::encode_object(&t.object).len();
                self.metrics.reaped_bytes.inc_by(bytes as u64);
                if t.object.values().iter().any(|s| !s.deleted) {
                    self.metrics.expired_keys_reaped.inc();
                }
            }
        }
        Ok(dropped)
    }

    /// After `owner` stored `delivered`: forget the hint, and when this node does not own
    /// the key (`drop_local`), drop its copy too, unless a newer write arrived meanwhile.
    pub fn finish_handoff(
        &self,
        owner: &str,
        bucket: &[u8],
        key: &[u8],
        delivered: Option<&Object>,
        drop_local: bool,
    ) -> Result<bool, ReplicaError> {
        let partition = self.partition_of(bucket, key);
        let skey = storage_key(bucket, key);
        let _guard = self.lock(&skey);
        let current = self.read(partition, &skey)?;
        if current.as_ref() != delivered {
            return Ok(false);
        }
        self.storage.hint_remove(owner, partition, &skey)?;
        if drop_local && current.is_some() {
            self.storage.remove(partition, &skey)?;
        }
        Ok(true)
    }

    fn read(&self, partition: PartitionId, skey: &[u8]) -> Result<Option<Object>, ReplicaError> {
        match self.storage.get(partition, skey)? {
            Some(bytes) => Ok(Some(decode_object(&bytes)?)),
            None => Ok(None),
        }
    }

    fn lock(&self, skey: &[u8]) -> std::sync::MutexGuard<'_, ()> {
        let mut hasher = DefaultHasher::new();
        skey.hash(&mut hasher);
        let stripe = &self.stripes[hasher.finish() as usize % LOCK_STRIPES];
        stripe.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Refuses a peer's request that would break an invariant of this replica, before it is
/// applied: a bucket or key longer than [`MAX_NAME_BYTES`], or a reap batch holding a live
/// value (one neither deleted nor expired by this node's clock at `now_ms`: reaping it
/// would delete it), or a rebuild request out of its bounds. A refusal changes nothing.
fn check_peer_request(request: &Request, now_ms: u64) -> Result<(), String> {
    let names: Vec<(&[u8], &[u8])> = match request {
        Request::Get { bucket, key }
        | Request::Coordinate { bucket, key, .. }
        | Request::Merge { bucket, key, .. } => vec![(bucket, key)],
        Request::MergeBatch { objects } | Request::ReapBatch { objects } => objects
            .iter()
            .map(|o| (o.bucket.as_slice(), o.key.as_slice()))
            .collect(),
        Request::ListKeys { bucket, after, .. } => {
            vec![(
                bucket.as_slice(),
                after.as_deref().map_or(&[][..], |a| &a[..]),
            )]
        }
        Request::TreeBranches { .. }
        | Request::TreeLeaves { .. }
        | Request::SegmentObjects { .. }
        | Request::PartitionPage { .. }
        | Request::KeyCounts { .. } => Vec::new(),
        // Each request in it is checked when it is handled.
        Request::Batch { .. } => Vec::new(),
    };
    check_batch(request)?;
    check_rebuild_request(request)?;
    if let Some((bucket, key)) = names
        .iter()
        .find(|(b, k)| b.len() > MAX_NAME_BYTES || k.len() > MAX_NAME_BYTES)
    {
        return Err(format!(
            "refused: a bucket of {} bytes and key of {} bytes, over the limit of {MAX_NAME_BYTES}",
            bucket.len(),
            key.len()
        ));
    }
    if let Request::ReapBatch { objects } = request {
        if objects
            .iter()
            .any(|o| !crate::object::is_dead(&o.object, now_ms))
        {
            return Err(
                "refused: a reap batch holds a live value, only tombstones and expired values are reaped".into(),
            );
        }
    }
    Ok(())
}

/// A batch holds at most `MAX_BATCH_REQUESTS` requests, each a `Get` or a `Merge`: a
/// batched `Coordinate` would lose the one-call answer its caller's retry rule needs, and
/// a nested batch or scan would escape the bounds.
fn check_batch(request: &Request) -> Result<(), String> {
    let Request::Batch { requests } = request else {
        return Ok(());
    };
    if requests.len() > crate::rpc::MAX_BATCH_REQUESTS {
        return Err(format!(
            "refused: a batch of {} requests, over {}",
            requests.len(),
            crate::rpc::MAX_BATCH_REQUESTS
        ));
    }
    match requests
        .iter()
        .all(|r| matches!(r, Request::Get { .. } | Request::Merge { .. }))
    {
        true => Ok(()),
        false => Err("refused: a batch holds a request other than a get or a merge".into()),
    }
}

/// A rebuild page's cursor is a storage key (at most two names and their framing) and its
/// size within `scan::MAX_PAGE_BYTES`; a count asks for at most a ring's partitions.
fn check_rebuild_request(request: &Request) -> Result<(), String> {
    match request {
        Request::PartitionPage {
            after, max_bytes, ..
        } => {
            let longest = 2 + 2 * MAX_NAME_BYTES;
            if after.as_ref().is_some_and(|a| a.len() > longest) {
                return Err(format!(
                    "refused: a page cursor over the {longest} bytes of a storage key"
                ));
            }
            if !(1..=crate::scan::MAX_PAGE_BYTES).contains(max_bytes) {
                return Err(format!(
                    "refused: a page of {max_bytes} bytes, outside 1..={}",
                    crate::scan::MAX_PAGE_BYTES
                ));
            }
            Ok(())
        }
        Request::KeyCounts { partitions }
            if partitions.len() > chorus_ring::MAX_RING_SIZE as usize =>
        {
            Err(format!(
                "refused: key counts of {} partitions, over a ring's {}",
                partitions.len(),
                chorus_ring::MAX_RING_SIZE
            ))
        }
        _ => Ok(()),
    }
}

/// The answer for a request that failed: limits are refusals with a code, the rest failures.
fn error_response(e: ReplicaError) -> Response {
    match e {
        ReplicaError::Limit(limit) => Response::Refused {
            code: limit.code().into(),
            message: limit.to_string(),
        },
        ReplicaError::MergeRefused(_) => Response::Refused {
            code: "merge_over_limit".into(),
            message: e.to_string(),
        },
        ReplicaError::OutcomeUnknown(_) => Response::OutcomeUnknown(e.to_string()),
        other => Response::Failed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    fn replica() -> Replica<MemoryStorage> {
        replica_on(MemoryStorage::new())
    }

    fn replica_on<S: Storage>(storage: S) -> Replica<S> {
        let config = crate::replica::ReplicaConfig::for_tests(1, 10);
        Replica::new(Arc::new(storage), config, Arc::new(Metrics::default())).unwrap()
    }

    fn coordinate_request(key: &[u8]) -> Request {
        Request::Coordinate {
            bucket: b"b".to_vec(),
            key: key.to_vec(),
            context: Context::default(),
            value: Sibling::value(b"v".to_vec(), None),
            hint_for: None,
            over_current: false,
            max_siblings: None,
        }
    }

    /// A write whose fsync failed after it was applied (in the group commit awaited by
    /// `handle_async`, or waited for inside the call by `handle`) answers "outcome
    /// unknown": it may be replayed. One refused before anything was written still
    /// answers `Failed`.
    #[tokio::test]
    async fn a_write_that_failed_after_it_was_stored_answers_outcome_unknown() {
        type Fault = fn(&MemoryStorage, Option<&str>);
        let sync: Fault = MemoryStorage::set_sync_failure;
        let write: Fault = MemoryStorage::set_write_failure;
        for (fault, deferred, unknown) in [
            (sync, true, true),
            (sync, false, true),
            (write, true, false),
            (write, false, false),
        ] {
            let disk = Arc::new(MemoryStorage::new());
            let config = ReplicaConfig::for_tests(1, 10);
            let metrics = Arc::new(Metrics::default());
            let r = Arc::new(Replica::new(disk.clone(), config, metrics).unwrap());
            fault(&disk, Some("Input/output error"));
            let request = coordinate_request(b"k");
            let answer = match deferred {
                true => r.clone().handle_async(request).await,
                false => r.handle(request),
            };
            match unknown {
                true => assert!(matches!(answer, Response::OutcomeUnknown(_)), "{answer:?}"),
                false => assert!(matches!(answer, Response::Failed(_)), "{answer:?}"),
            }
            assert_eq!(r.get(b"b", b"k").unwrap().is_some(), unknown);
            assert!(r.health().is_failed());
            // Failed storage refuses before writing: nothing stored, so `Failed`.
            fault(&disk, None);
            let answer = r.handle(coordinate_request(b"k2"));
            assert!(matches!(answer, Response::Failed(_)), "{answer:?}");
        }
    }

    /// `--sync always` on one async worker: writes run inline and their answers wait for
    /// the group commit as tasks, so many writes share it; none is lost at a reopen.
    #[tokio::test(flavor = "current_thread")]
    async fn durable_writes_on_one_async_worker_are_all_answered_and_on_disk_after_reopening() {
        use crate::storage::{FjallStorage, SyncMode};
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<Vec<u8>> = (0..64).map(|i| format!("k{i}").into_bytes()).collect();
        {
            let storage = FjallStorage::open(dir.path(), SyncMode::Always, 1 << 20).unwrap();
            let r = Arc::new(replica_on(storage));
            let mut writes = tokio::task::JoinSet::new();
            for key in keys.clone() {
                writes.spawn(r.clone().handle_async(Request::Coordinate {
                    bucket: b"b".to_vec(),
                    key,
                    context: Context::default(),
                    value: Sibling::value(b"v".to_vec(), None),
                    hint_for: None,
                    over_current: false,
                    max_siblings: None,
                }));
            }
            while let Some(answer) = writes.join_next().await {
                let answer = answer.unwrap();
                assert!(
                    !matches!(answer, Response::Failed(_) | Response::Refused { .. }),
                    "{answer:?}"
                );
            }
        }
        let storage = FjallStorage::open(dir.path(), SyncMode::Always, 1 << 20).unwrap();
        let r = replica_on(storage);
        for key in keys {
            let stored = r.get(b"b", &key).unwrap();
            assert!(stored.is_some(), "{key:?} answered but not on disk");
        }
    }

    /// The same for batches of merges: one answer covers eight writes, all durable.
    #[tokio::test(flavor = "current_thread")]
    async fn durable_batched_merges_are_all_answered_and_on_disk_after_reopening() {
        use crate::storage::{FjallStorage, SyncMode};
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<Vec<u8>> = (0..64).map(|i| format!("k{i}").into_bytes()).collect();
        {
            let storage = FjallStorage::open(dir.path(), SyncMode::Always, 1 << 20).unwrap();
            let r = Arc::new(replica_on(storage));
            let mut batches = tokio::task::JoinSet::new();
            for chunk in keys.chunks(8) {
                let requests = chunk
                    .iter()
                    .map(|key| {
                        let k = keyed(b"b".to_vec(), key.clone(), false);
                        Request::Merge {
                            bucket: k.bucket,
                            key: k.key,
                            object: k.object,
                            hint_for: None,
                        }
                    })
                    .collect();
                batches.spawn(r.clone().handle_async(Request::Batch { requests }));
            }
            while let Some(answer) = batches.join_next().await {
                match answer.unwrap() {
                    Response::Batch(answers) => assert!(
                        answers.iter().all(|a| matches!(a, Response::Merged(1))),
                        "{answers:?}"
                    ),
                    other => panic!("{other:?}"),
                }
            }
        }
        let storage = FjallStorage::open(dir.path(), SyncMode::Always, 1 << 20).unwrap();
        let r = replica_on(storage);
        for key in keys {
            assert!(r.get(b"b", &key).unwrap().is_some(), "{key:?} not on disk");
        }
    }

    fn keyed(bucket: Vec<u8>, key: Vec<u8>, deleted: bool) -> KeyedObject {
        let value = Sibling {
            value: b"v".to_vec(),
            content_type: None,
            deleted,
            expires_at_ms: None,
        };
        let object = Object::new().update(&Context::default(), ActorId(7), value);
        KeyedObject {
            bucket,
            key,
            object,
        }
    }

    /// Requests a peer could send, with bucket and key lengths around the limit.
    fn peer_request() -> impl proptest::strategy::Strategy<Value = Request> {
        use proptest::prelude::*;
        let name = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..8),
            (MAX_NAME_BYTES - 1..MAX_NAME_BYTES + 2).prop_map(|n| vec![b'x'; n]),
            Just(vec![b'y'; 70_000]),
        ];
        (name.clone(), name, any::<bool>(), 0..5u8).prop_map(|(bucket, key, deleted, kind)| {
            let object = keyed(bucket.clone(), key.clone(), deleted);
            match kind {
                0 => Request::Get { bucket, key },
                1 => Request::Coordinate {
                    bucket,
                    key,
                    context: Context::default(),
                    value: Sibling::value(b"v".to_vec(), None),
                    hint_for: None,
                    // Either way of minting: the limits hold for both.
                    over_current: deleted,
                    max_siblings: None,
                },
                2 => Request::Merge {
                    bucket,
                    key,
                    object: object.object,
                    hint_for: None,
                },
                3 => Request::MergeBatch {
                    objects: vec![object],
                },
                _ => Request::ReapBatch {
                    objects: vec![object],
                },
            }
        })
    }

    proptest::proptest! {
        #[test]
        fn peer_input_never_panics_and_oversized_names_change_nothing(
            request in peer_request(),
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
        ) {
            // Arbitrary bytes decode to a message or an error, never a panic.
            let _ = crate::rpc::decode(&junk);
            let r = replica();
            let oversized = match &request {
                Request::Get { bucket, key }
                | Request::Coordinate { bucket, key, .. }
                | Request::Merge { bucket, key, .. } => bucket.len().max(key.len()) > MAX_NAME_BYTES,
                Request::MergeBatch { objects } | Request::ReapBatch { objects } => objects
                    .iter()
                    .any(|o| o.bucket.len().max(o.key.len()) > MAX_NAME_BYTES),
                _ => false,
            };
            let response = r.handle(request);
            if oversized {
                proptest::prop_assert!(matches!(response, Response::Failed(_)), "{response:?}");
                proptest::prop_assert!(r.storage().partitions().unwrap().is_empty());
            }
        }
    }

    #[test]
    fn a_batch_is_answered_in_order_as_if_each_request_came_alone() {
        let r = replica();
        let merge = |key: &str| {
            let k = keyed(b"b".to_vec(), key.as_bytes().to_vec(), false);
            Request::Merge {
                bucket: k.bucket,
                key: k.key,
                object: k.object,
                hint_for: None,
            }
        };
        let get = |key: &str| Request::Get {
            bucket: b"b".to_vec(),
            key: key.as_bytes().to_vec(),
        };
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let requests = vec![merge("k1"), get("k1"), get("k2"), merge(&long), merge("k2")];
        let Response::Batch(answers) = r.handle(Request::Batch { requests }) else {
            panic!("a batch is answered with a batch");
        };
        assert!(matches!(answers[0], Response::Merged(1)));
        assert!(matches!(&answers[1], Response::Object(Some(o)) if o.values().len() == 1));
        assert!(matches!(answers[2], Response::Object(None)));
        assert!(
            matches!(answers[3], Response::Failed(_)),
            "{:?}",
            answers[3]
        );
        assert!(matches!(answers[4], Response::Merged(1)));
        assert_eq!(answers.len(), 5);
    }

    #[test]
    fn a_batch_of_anything_but_gets_and_merges_or_over_its_bound_is_refused_whole() {
        let r = replica();
        let k = keyed(b"b".to_vec(), b"k".to_vec(), false);
        let merge = Request::Merge {
            bucket: k.bucket.clone(),
            key: k.key.clone(),
            object: k.object.clone(),
            hint_for: None,
        };
        let coordinate = Request::Coordinate {
            bucket: k.bucket.clone(),
            key: b"other".to_vec(),
            context: Context::default(),
            value: Sibling::value(b"v".to_vec(), None),
            hint_for: None,
            over_current: false,
            max_siblings: None,
        };
        let nested = Request::Batch {
            requests: vec![merge.clone()],
        };
        for requests in [
            vec![merge.clone(), coordinate],
            vec![merge.clone(), nested],
            vec![merge.clone(), Request::MergeBatch { objects: vec![k] }],
            vec![merge; crate::rpc::MAX_BATCH_REQUESTS + 1],
        ] {
            let response = r.handle(Request::Batch { requests });
            assert!(matches!(response, Response::Failed(_)), "{response:?}");
            assert!(r.storage().partitions().unwrap().is_empty());
        }
    }

    #[test]
    fn rebuild_requests_out_of_bounds_are_refused() {
        let r = replica();
        let page = |partition, after: Vec<u8>, max_bytes| Request::PartitionPage {
            partition,
            after: Some(serde_bytes::ByteBuf::from(after)),
            max_bytes,
        };
        for bad in [
            page(64, vec![], 100),
            page(1, vec![0; 3 * MAX_NAME_BYTES], 100),
            page(1, vec![], 0),
            page(1, vec![], crate::scan::MAX_PAGE_BYTES + 1),
            Request::KeyCounts {
                partitions: vec![64],
            },
            Request::KeyCounts {
                partitions: vec![0; chorus_ring::MAX_RING_SIZE as usize + 1],
            },
        ] {
            let response = r.handle(bad.clone());
            assert!(
                matches!(response, Response::Failed(_)),
                "{bad:?}: {response:?}"
            );
        }
        let live = keyed(b"b".to_vec(), b"k".to_vec(), false);
        let partition = r.partition_of(b"b", b"k");
        r.merge_batch(&[live]).unwrap();
        let Response::Page {
            objects,
            resume,
            keys,
            ..
        } = r.handle(page(partition, vec![], 100))
        else {
            panic!("no page");
        };
        assert_eq!((objects.len(), resume, keys), (1, None, 1));
        let counts = r.handle(Request::KeyCounts {
            partitions: vec![partition, (partition + 1) % 64],
        });
        assert!(
            matches!(counts, Response::Counts(ref c) if c == &[1, 0]),
            "{counts:?}"
        );
    }

    #[test]
    fn a_reap_batch_holding_a_live_value_is_refused_and_removes_nothing() {
        let r = replica();
        let live = keyed(b"b".to_vec(), b"k".to_vec(), false);
        let request = Request::MergeBatch {
            objects: vec![live.clone()],
        };
        assert!(matches!(r.handle(request), Response::Merged(1)));
        let response = r.handle(Request::ReapBatch {
            objects: vec![live],
        });
        assert!(matches!(response, Response::Failed(_)), "{response:?}");
        assert!(r.get(b"b", b"k").unwrap().is_some(), "the live value stays");
    }

    #[test]
    fn a_write_over_the_current_state_supersedes_what_this_replica_holds_and_nothing_else() {
        let r = replica();
        let v = |s: &str| Sibling::value(s.as_bytes().to_vec(), None);
        let blind = Context::default();
        r.coordinate(b"b", b"k", Some(&blind), v("1"), Write::default())
            .unwrap();
        r.coordinate(b"b", b"k", Some(&blind), v("2"), Write::default())
            .unwrap();
        assert_eq!(r.get(b"b", b"k").unwrap().unwrap().sibling_count(), 2);
        let (over, _) = r
            .coordinate(b"b", b"k", None, v("3"), Write::default())
            .unwrap();
        assert_eq!(
            over.values(),
            vec![&v("3")],
            "both siblings held here are superseded"
        );
        // A version minted elsewhere without seeing "3" stays a sibling when it arrives.
        let elsewhere = Object::new().update(&blind, ActorId(2), v("other"));
        let merged = r.merge(b"b", b"k", &elsewhere, None).unwrap();
        assert_eq!(merged.sibling_count(), 2);
        let (over, _) = r
            .coordinate(b"b", b"k", None, v("4"), Write::default())
            .unwrap();
        assert_eq!(over.values(), vec![&v("4")]);
    }

    /// Expired values are dead: a blind write replaces them (but not a value still live,
    /// nor one minted elsewhere that expires later), and a reap batch may carry them.
    #[test]
    fn blind_writes_replace_expired_values_and_expired_keys_may_be_reaped() {
        let r = replica();
        let blind = Context::default();
        let expiring =
            |s: &str, at| Sibling::value(s.as_bytes().to_vec(), None).expiring_at(Some(at));
        let later = u64::MAX / 2;
        for value in ["1", "2", "3"] {
            r.coordinate(
                b"b",
                b"k",
                Some(&blind),
                expiring(value, 1),
                Write::default(),
            )
            .unwrap();
        }
        let state = r.get(b"b", b"k").unwrap().unwrap();
        assert_eq!(
            state.values(),
            vec![&expiring("3", 1)],
            "expired siblings piled up"
        );
        r.coordinate(
            b"b",
            b"k",
            Some(&blind),
            expiring("live", later),
            Write::default(),
        )
        .unwrap();
        let (state, _) = r
            .coordinate(b"b", b"k", Some(&blind), expiring("4", 1), Write::default())
            .unwrap();
        assert_eq!(
            state.values(),
            vec![&expiring("4", 1), &expiring("live", later)]
        );

        let batch = |object: Object| Request::ReapBatch {
            objects: vec![KeyedObject {
                bucket: b"b".to_vec(),
                key: b"k".to_vec(),
                object,
            }],
        };
        let refused = r.handle(batch(state.clone()));
        assert!(matches!(refused, Response::Failed(_)), "{refused:?}");
        let (dead, _) = r
            .coordinate(
                b"b",
                b"k",
                Some(&state.context()),
                expiring("5", 1),
                Write::default(),
            )
            .unwrap();
        assert!(matches!(r.handle(batch(dead)), Response::Merged(1)));
        assert!(
            r.get(b"b", b"k").unwrap().is_none(),
            "the expired key was reaped"
        );
    }

    #[test]
    fn a_fallback_that_mints_a_write_keeps_a_hint_for_the_owner() {
        let r = replica();
        let request = Request::Coordinate {
            bucket: b"b".to_vec(),
            key: b"k".to_vec(),
            context: Context::default(),
            value: Sibling::value(b"v".to_vec(), None),
            hint_for: Some("owner".into()),
            over_current: false,
            max_siblings: None,
        };
        let Response::Minted { object, dot } = r.handle(request) else {
            panic!("the write was not minted");
        };
        assert_eq!(dot, (ActorId(1), 1));
        assert_eq!(object.dotted_values()[0].0, ActorId(1));
        let hints = r.storage().hint_scan("owner", 10).unwrap();
        assert_eq!(hints.len(), 1);
        assert_eq!(hints[0].1, storage_key(b"b", b"k"));
        assert_eq!(
            r.storage().hint_owners().unwrap(),
            vec![("owner".to_string(), 1)]
        );

        // A primary minting a write keeps no hint.
        r.coordinate(
            b"b",
            b"other",
            Some(&Context::default()),
            Sibling::value(b"v".to_vec(), None),
            Write::default(),
        )
        .unwrap();
        assert_eq!(
            r.storage().hint_owners().unwrap(),
            vec![("owner".to_string(), 1)]
        );
    }

    /// A state naming actors `from..to`, each with one tombstone sibling.
    fn history(actors: std::ops::Range<u64>) -> Object {
        actors.fold(Object::new(), |state, a| {
            state.sync(&Object::new().update(&Context::default(), ActorId(a), Sibling::tombstone()))
        })
    }

    fn coordinate(r: &Replica<MemoryStorage>, context: Context, value: Vec<u8>) -> Response {
        r.handle(Request::Coordinate {
            bucket: b"b".to_vec(),
            key: b"k".to_vec(),
            context,
            value: Sibling::value(value, None),
            hint_for: None,
            over_current: false,
            max_siblings: None,
        })
    }

    fn refused_code(response: Response) -> String {
        match response {
            Response::Refused { code, message } => {
                assert!(!message.is_empty());
                code
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// Issue 15, defect 1: a context naming the decoder's actor limit used to be merged,
    /// given the coordinator's own actor, and stored as a state no decoder accepts.
    #[test]
    fn a_write_whose_context_names_too_many_actors_is_refused_and_the_key_stays_readable() {
        let r = replica();
        assert!(matches!(
            coordinate(&r, Context::default(), b"acked".to_vec()),
            Response::Minted { .. }
        ));
        let before = r.get(b"b", b"k").unwrap();
        let hostile = history(1000..1000 + crate::causality::MAX_ACTORS as u64).context();
        assert_eq!(
            refused_code(coordinate(&r, hostile, b"x".to_vec())),
            "invalid_context"
        );
        // Within the context bound, but together with the key's history over the write limit.
        let wide = history(5000..5000 + WRITE_MAX_ACTORS as u64).context();
        assert_eq!(
            refused_code(coordinate(&r, wide, b"x".to_vec())),
            "too_many_actors"
        );
        assert_eq!(r.get(b"b", b"k").unwrap(), before, "nothing was stored");
        let stored = r
            .storage()
            .get(r.partition_of(b"b", b"k"), &storage_key(b"b", b"k"))
            .unwrap()
            .unwrap();
        decode_object(&stored).expect("the stored state still decodes");
    }

    #[test]
    fn a_write_that_would_grow_the_key_past_its_size_limit_is_refused() {
        let mut r = replica();
        r.config.max_object_bytes = 10_000;
        assert!(matches!(
            coordinate(&r, Context::default(), vec![1; 6000]),
            Response::Minted { .. }
        ));
        let before = r.get(b"b", b"k").unwrap();
        assert_eq!(
            refused_code(coordinate(&r, Context::default(), vec![2; 6000])),
            "object_too_large"
        );
        assert_eq!(r.get(b"b", b"k").unwrap(), before);
        // A write that supersedes what is there still fits.
        let context = before.unwrap().context();
        assert!(matches!(
            coordinate(&r, context, vec![3; 6000]),
            Response::Minted { .. }
        ));
    }

    /// Merges are refused only at the hard limits, with nothing stored; the sender keeps
    /// its versions. A batch goes on past a refused key but then fails.
    #[test]
    fn a_merge_that_would_cross_a_hard_limit_stores_nothing_and_fails_its_batch() {
        let r = replica();
        let ours = history(1..700);
        let theirs = history(10_000..10_400);
        r.merge(b"b", b"k", &ours, None).unwrap();
        assert!(matches!(
            r.merge(b"b", b"k", &theirs, None),
            Err(ReplicaError::MergeRefused(LimitError::TooManyActors {
                count: 1099,
                ..
            }))
        ));
        assert_eq!(r.get(b"b", b"k").unwrap(), Some(ours.clone()));
        assert_eq!(r.metrics.merges_refused.get(), 1);
        let batch = [
            KeyedObject {
                bucket: b"b".to_vec(),
                key: b"k".to_vec(),
                object: theirs,
            },
            KeyedObject {
                bucket: b"b".to_vec(),
                key: b"other".to_vec(),
                object: history(1..3),
            },
        ];
        assert!(matches!(
            r.handle(Request::MergeBatch {
                objects: batch.to_vec()
            }),
            Response::Refused { ref code, .. } if code == "merge_over_limit"
        ));
        assert_eq!(r.get(b"b", b"other").unwrap(), Some(history(1..3)));
        assert_eq!(r.get(b"b", b"k").unwrap(), Some(ours));
    }
}

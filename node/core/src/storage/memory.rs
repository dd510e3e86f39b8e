//! The in-memory engine, for the deterministic simulation and for tests.
//!
//! Owns: ordered maps with the same observable semantics as [`super::FjallStorage`]
//! (ordering, limits, hash trees, hint counts). Must not: touch the disk, spawn threads,
//! or lose anything acknowledged (it does not model un-synced writes lost in a crash).
//! Its fault switches model a disk that refuses writes (`set_write_failure`: nothing
//! written) and one whose fsync fails (`set_sync_failure`: written, never durable, and
//! kept, as a journal replays at restart what a failed fsync left in the page cache).

use super::{
    check_key, check_name, lock, read, write, MerkleTree, PartitionId, Storage, StorageError,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

/// One partition: its objects and the tree kept in step with them under one lock.
#[derive(Default)]
struct Partition {
    objects: BTreeMap<Vec<u8>, Vec<u8>>,
    tree: MerkleTree,
}

/// Hints keyed by `(owner, partition, key)`, so one owner's hints are a contiguous range.
type HintMap = BTreeMap<(String, PartitionId, Vec<u8>), Vec<u8>>;

/// See the module documentation.
#[derive(Default)]
pub struct MemoryStorage {
    /// A lock per partition so writers to different partitions do not contend, as in the
    /// disk engine.
    partitions: RwLock<HashMap<PartitionId, Arc<Mutex<Partition>>>>,
    meta: Mutex<BTreeMap<String, Vec<u8>>>,
    hints: Mutex<HintMap>,
    /// A failing disk, for tests and the simulation: while set, every write fails with
    /// this I/O error and changes nothing.
    write_failure: Mutex<Option<String>>,
    /// A failing fsync, for tests: while set, every write is applied but does not become
    /// durable (see [`MemoryStorage::set_sync_failure`]).
    sync_failure: Mutex<Option<String>>,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every write fail with an I/O error carrying `reason` (a full disk, a dead
    /// device), or with `None` work again.
    pub fn set_write_failure(&self, reason: Option<&str>) {
        *lock(&self.write_failure) = reason.map(str::to_string);
    }

    /// Whether writes fail now (see [`MemoryStorage::set_write_failure`]).
    pub fn writes_fail(&self) -> bool {
        lock(&self.write_failure).is_some()
    }

    /// Makes every fsync fail with `reason`, or with `None` work again. A write is then
    /// applied (and kept: this engine loses nothing at a restart, the worst case for a
    /// write whose fsync failed, since a journal may replay it) and then, as the disk
    /// engine in `--sync always`: inside `deferring_durability` its `PendingDurability`
    /// fails; outside, the call fails with [`StorageError::Unsettled`]. `meta_put` and
    /// `flush`, fsynced on return, fail so too, so the recovery probe fails while it is set.
    pub fn set_sync_failure(&self, reason: Option<&str>) {
        *lock(&self.sync_failure) = reason.map(str::to_string);
    }

    fn check_writable(&self) -> Result<(), StorageError> {
        match &*lock(&self.write_failure) {
            Some(reason) => Err(StorageError::Io(std::io::Error::other(reason.clone()))),
            None => Ok(()),
        }
    }

    /// After a write was applied: its fsync, which fails while the sync failure is set.
    fn after_write(&self) -> Result<(), StorageError> {
        match &*lock(&self.sync_failure) {
            Some(reason) => super::sync::fsync_failed(reason),
            None => Ok(()),
        }
    }

    /// After a write that is fsynced on return (`meta_put`, `flush`).
    fn after_durable_write(&self) -> Result<(), StorageError> {
        match &*lock(&self.sync_failure) {
            Some(reason) => Err(StorageError::unsettled(StorageError::Io(
                std::io::Error::other(reason.clone()),
            ))),
            None => Ok(()),
        }
    }

    fn partition(&self, partition: PartitionId) -> Option<Arc<Mutex<Partition>>> {
        read(&self.partitions).get(&partition).cloned()
    }

    fn partition_or_create(&self, partition: PartitionId) -> Arc<Mutex<Partition>> {
        if let Some(p) = self.partition(partition) {
            return p;
        }
        write(&self.partitions)
            .entry(partition)
            .or_default()
            .clone()
    }
}

impl Storage for MemoryStorage {
    fn get(&self, partition: PartitionId, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        check_key(key)?;
        Ok(self
            .partition(partition)
            .and_then(|p| lock(&p).objects.get(key).cloned()))
    }

    fn put(&self, partition: PartitionId, key: &[u8], object: &[u8]) -> Result<(), StorageError> {
        check_key(key)?;
        self.check_writable()?;
        let p = self.partition_or_create(partition);
        let mut p = lock(&p);
        let old = p.objects.insert(key.to_vec(), object.to_vec());
        p.tree.replace(key, old.as_deref(), object);
        drop(p);
        self.after_write()
    }

    fn remove(&self, partition: PartitionId, key: &[u8]) -> Result<(), StorageError> {
        check_key(key)?;
        self.check_writable()?;
        if let Some(p) = self.partition(partition) {
            let mut p = lock(&p);
            if let Some(old) = p.objects.remove(key) {
                p.tree.remove(key, &old);
                drop(p);
                return self.after_write();
            }
        }
        Ok(())
    }

    fn scan(
        &self,
        partition: PartitionId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        use std::ops::Bound;
        let Some(p) = self.partition(partition) else {
            return Ok(Vec::new());
        };
        let p = lock(&p);
        let start = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        Ok(p.objects
            .range::<[u8], _>((start, Bound::Unbounded))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn partitions(&self) -> Result<Vec<PartitionId>, StorageError> {
        let mut out: Vec<PartitionId> = read(&self.partitions)
            .iter()
            .filter(|(_, p)| !lock(p).objects.is_empty())
            .map(|(id, _)| *id)
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    fn key_count(&self, partition: PartitionId) -> Result<u64, StorageError> {
        Ok(self
            .partition(partition)
            .map_or(0, |p| lock(&p).objects.len() as u64))
    }

    fn tree(&self, partition: PartitionId) -> Result<MerkleTree, StorageError> {
        Ok(self
            .partition(partition)
            .map_or_else(MerkleTree::new, |p| lock(&p).tree.clone()))
    }

    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        check_name("metadata key", key)?;
        Ok(lock(&self.meta).get(key).cloned())
    }

    fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        check_name("metadata key", key)?;
        self.check_writable()?;
        lock(&self.meta).insert(key.to_owned(), value.to_vec());
        self.after_durable_write()
    }

    fn hint_put(
        &self,
        owner: &str,
        partition: PartitionId,
        key: &[u8],
        object: &[u8],
    ) -> Result<(), StorageError> {
        check_name("hint owner", owner)?;
        check_key(key)?;
        self.check_writable()?;
        lock(&self.hints).insert((owner.to_owned(), partition, key.to_vec()), object.to_vec());
        self.after_write()
    }

    fn hint_scan(
        &self,
        owner: &str,
        limit: usize,
    ) -> Result<Vec<(PartitionId, Vec<u8>, Vec<u8>)>, StorageError> {
        check_name("hint owner", owner)?;
        Ok(lock(&self.hints)
            .range((owner.to_owned(), 0, Vec::new())..)
            .take_while(|((o, _, _), _)| o == owner)
            .take(limit)
            .map(|((_, p, k), v)| (*p, k.clone(), v.clone()))
            .collect())
    }

    fn hint_remove(
        &self,
        owner: &str,
        partition: PartitionId,
        key: &[u8],
    ) -> Result<(), StorageError> {
        check_name("hint owner", owner)?;
        check_key(key)?;
        self.check_writable()?;
        if lock(&self.hints)
            .remove(&(owner.to_owned(), partition, key.to_vec()))
            .is_some()
        {
            return self.after_write();
        }
        Ok(())
    }

    fn hint_owners(&self) -> Result<Vec<(String, u64)>, StorageError> {
        let mut out: Vec<(String, u64)> = Vec::new();
        for (owner, _, _) in lock(&self.hints).keys() {
            match out.last_mut() {
                Some((o, n)) if o == owner => *n += 1,
                _ => out.push((owner.clone(), 1)),
            }
        }
        Ok(out)
    }

    fn scans_block(&self) -> bool {
        false
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.after_durable_write()
    }
}

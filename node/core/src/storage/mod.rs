//! Storage: opaque object bytes per `(partition, key)`, node metadata and hints, behind
//! one trait with two engines: [`FjallStorage`] (durable, on disk) and [`MemoryStorage`]
//! (simulation and tests, same semantics).
//!
//! Owns: durability (the `--sync periodic|always` contract), the per-partition hash
//! trees anti-entropy compares (kept up to date on every put and remove), and the
//! on-disk layout. Must not: interpret keys or objects (the layers above encode
//! bucket+key and DVV states), merge versions, or decide what to reap; a put stores
//! exactly the bytes it is given.
//!
//! Durability when a write call returns (put, remove, hint_put, hint_remove):
//! - [`SyncMode::Always`]: fsynced. Concurrent writers share one fsync (group commit).
//!   Inside [`deferring_durability`] the call returns once the write is in the journal,
//!   with a [`PendingDurability`] the caller awaits before acknowledging it.
//! - [`SyncMode::Periodic`]: in the OS page cache, so it survives a crash of the process
//!   (kill -9); a background thread fsyncs every `interval_ms`, so a machine crash loses
//!   at most about that interval.
//!
//! `meta_put` and `flush` are fsynced on return in both modes.
//!
//! A write call that fails wrote nothing, unless it fails with
//! [`StorageError::Unsettled`]: the write reached the journal (its append failed part way,
//! or its fsync did), so a restart may replay it. A [`PendingDurability`] that fails means
//! the same. Callers must not report either as "nothing stored".

mod fjall_store;
mod hot;
pub mod journal_mark;
mod memory;
pub mod merkle;
mod monitored;
mod sync;

#[cfg(test)]
mod tests;

pub use fjall_store::{FjallStorage, MAX_OPEN_TABLE_FILES};
pub use memory::MemoryStorage;
pub use merkle::MerkleTree;
pub use monitored::{Monitored, StorageHealth};
pub use sync::{deferring_durability, PendingDurability};

use std::path::PathBuf;
use std::sync::PoisonError;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A partition of the ring (`chorus-ring` decides which keys go where).
pub type PartitionId = u32;

/// Longest object key accepted. fjall stores key lengths in 16 bits, and hint keys add
/// the owner and framing, so this leaves room under 64 KiB. The HTTP API allows far
/// shorter bucket and key names.
pub const MAX_KEY_LEN: usize = 60 * 1024;
/// Longest hint owner (a node id) and metadata key accepted.
pub const MAX_NAME_LEN: usize = 1024;

/// Default fsync interval of [`SyncMode::Periodic`], like Cassandra's periodic commitlog.
pub const DEFAULT_SYNC_INTERVAL_MS: u64 = 100;

/// Errors of every storage operation. A full disk, a corrupt file or a second process on
/// the same directory is an error the node reports, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The OS refused a read or write (disk full, permissions, ...).
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The directory cannot hold a chorus store (not a directory, not empty and not ours).
    #[error("cannot open store at {}: {reason}", path.display())]
    Open { path: PathBuf, reason: String },
    /// Another process (or another handle in this one) has the store open.
    #[error("store at {} is in use by another process", .0.display())]
    Locked(PathBuf),
    /// Files on disk failed checksums or could not be decoded.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// An earlier write or fsync failed, so the engine refuses further writes: what is on
    /// disk is no longer known. Restarting recovers from the journal.
    #[error("storage is closed after an earlier write failure; restart the node")]
    Closed,
    /// Refused without trying: an earlier error showed the engine failing (see
    /// [`Monitored`]); the reason is that error.
    #[error("storage failed earlier ({0}); writes are refused until it recovers")]
    Failed(String),
    /// A key, owner or metadata name over its limit.
    #[error("{what} is {len} bytes, over the limit of {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// Any other engine failure.
    #[error("storage engine error: {0}")]
    Engine(String),
    /// A write failed at or after its append to the journal (the append itself, or the
    /// fsync it waited for): it may be replayed at the next open, or lost. The one error of
    /// a write call that does not mean "nothing was written".
    #[error("the write reached the journal but is not known durable: {0}")]
    Unsettled(Box<StorageError>),
}

impl StorageError {
    /// `e`, from a write's append or fsync, as [`StorageError::Unsettled`].
    pub fn unsettled(e: StorageError) -> StorageError {
        match e {
            e @ StorageError::Unsettled(_) => e,
            e => StorageError::Unsettled(Box::new(e)),
        }
    }

    /// Whether the write call that failed so may have left its write in the journal.
    pub fn may_have_written(&self) -> bool {
        matches!(self, StorageError::Unsettled(_))
    }
}

/// When a write is fsynced; see the module documentation for what each mode guarantees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// fsync every `interval_ms` in the background; writes survive a process crash.
    Periodic { interval_ms: u64 },
    /// A write returns once fsynced; concurrent writes share an fsync.
    Always,
}

impl Default for SyncMode {
    fn default() -> Self {
        SyncMode::Periodic {
            interval_ms: DEFAULT_SYNC_INTERVAL_MS,
        }
    }
}

impl std::str::FromStr for SyncMode {
    type Err = String;

    /// Parses the CLI's `--sync periodic|always`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "periodic" => Ok(SyncMode::default()),
            "always" => Ok(SyncMode::Always),
            other => Err(format!(
                "unknown sync mode {other:?} (expected periodic or always)"
            )),
        }
    }
}

/// The storage engine interface. Every method is safe to call from many threads. A call
/// may block: on disk reads, and in `--sync always` on its fsync unless it runs inside
/// [`deferring_durability`] (then the caller awaits the durability it returns). A write
/// call's error means nothing was written, except [`StorageError::Unsettled`].
pub trait Storage: Send + Sync + 'static {
    /// The object stored under `(partition, key)`.
    fn get(&self, partition: PartitionId, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Stores `object`, replacing any previous one. Durable per the sync mode on return.
    fn put(&self, partition: PartitionId, key: &[u8], object: &[u8]) -> Result<(), StorageError>;
    /// `put` for a caller that just read the key under a lock every writer of the key holds
    /// (the replica's per-key lock): `old` is what is stored now, so an engine that needs
    /// the previous value (for its hash tree) can skip reading it again.
    fn put_replacing(
        &self,
        partition: PartitionId,
        key: &[u8],
        old: Option<&[u8]>,
        object: &[u8],
    ) -> Result<(), StorageError> {
        let _ = old;
        self.put(partition, key, object)
    }
    /// Physical removal (tombstone reaping, handing a partition off). Logical deletes are
    /// tombstone objects written with `put`. Removing an absent key is a no-op.
    fn remove(&self, partition: PartitionId, key: &[u8]) -> Result<(), StorageError>;
    /// Up to `limit` entries of a partition in key order, starting after `after`
    /// (exclusive). Page by passing the last key returned.
    #[allow(clippy::type_complexity)]
    fn scan(
        &self,
        partition: PartitionId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError>;
    /// Partitions holding at least one key, ascending.
    fn partitions(&self) -> Result<Vec<PartitionId>, StorageError>;
    /// Keys stored in a partition.
    fn key_count(&self, partition: PartitionId) -> Result<u64, StorageError>;
    /// A copy of the partition's hash tree, which reflects every put and remove that
    /// returned before this call.
    fn tree(&self, partition: PartitionId) -> Result<MerkleTree, StorageError>;
    /// Node metadata (identity, generation counter, ...).
    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Stores node metadata; fsynced on return in every sync mode, because a restarted
    /// node must never reuse a generation it already announced.
    fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), StorageError>;
    /// Stores a hint: `object` belongs on `owner` and will be handed to it. Replaces an
    /// earlier hint for the same `(owner, partition, key)`. Durable like `put`.
    fn hint_put(
        &self,
        owner: &str,
        partition: PartitionId,
        key: &[u8],
        object: &[u8],
    ) -> Result<(), StorageError>;
    /// Up to `limit` hints for `owner`, ordered by partition then key.
    #[allow(clippy::type_complexity)]
    fn hint_scan(
        &self,
        owner: &str,
        limit: usize,
    ) -> Result<Vec<(PartitionId, Vec<u8>, Vec<u8>)>, StorageError>;
    /// Drops a hint once delivered. Removing an absent hint is a no-op.
    fn hint_remove(
        &self,
        owner: &str,
        partition: PartitionId,
        key: &[u8],
    ) -> Result<(), StorageError>;
    /// Owners with at least one hint, and how many each has, ordered by owner.
    fn hint_owners(&self) -> Result<Vec<(String, u64)>, StorageError>;
    /// fsyncs everything written so far (clean shutdown).
    fn flush(&self) -> Result<(), StorageError>;
    /// Whether a scan (a listing or rebuild page, a count, a batch merge) may hold its
    /// thread on disk reads; callers on an async runtime then run it on the blocking pool.
    /// An engine in memory says no, so the simulation stays on its one virtual-time thread.
    fn scans_block(&self) -> bool {
        true
    }

    /// The entries of one tree segment, for anti-entropy after two trees disagree on it.
    /// Cost: a full scan of the partition; see [`Storage::scan_segments`].
    #[allow(clippy::type_complexity)]
    fn scan_segment(
        &self,
        partition: PartitionId,
        segment: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        self.scan_segments(partition, &[segment])
    }

    /// The entries of several tree segments, in key order.
    ///
    /// Cost: one full scan of the partition (keys are stored in key order, not segment
    /// order), so O(partition size) per call whatever the number of segments: an
    /// exchange asks for all its differing segments at once, not one by one.
    #[allow(clippy::type_complexity)]
    fn scan_segments(
        &self,
        partition: PartitionId,
        segments: &[usize],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        const PAGE: usize = 1024;
        let mut wanted = [false; merkle::SEGMENTS];
        for &s in segments {
            if let Some(w) = wanted.get_mut(s) {
                *w = true;
            }
        }
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.scan(partition, after.as_deref(), PAGE)?;
            let full = page.len() == PAGE;
            after = page.last().map(|(k, _)| k.clone());
            out.extend(
                page.into_iter()
                    .filter(|(k, _)| wanted[MerkleTree::segment_of(k)]),
            );
            if !full {
                return Ok(out);
            }
        }
    }
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), StorageError> {
    if len > max {
        return Err(StorageError::TooLong { what, len, max });
    }
    Ok(())
}

fn check_key(key: &[u8]) -> Result<(), StorageError> {
    check_len("key", key.len(), MAX_KEY_LEN)
}

fn check_name(what: &'static str, name: &str) -> Result<(), StorageError> {
    check_len(what, name.len(), MAX_NAME_LEN)
}

// Lock helpers. Storage code never panics while holding one of its locks (the critical
// sections are map and tree updates), so a poisoned lock only means some unrelated caller
// thread panicked; recovering keeps that from cascading into every later call.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

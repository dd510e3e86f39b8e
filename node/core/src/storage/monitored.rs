//! Storage health: a wrapper around an engine that watches every result for errors that
//! mean the engine can no longer be trusted (I/O, a poisoned or closed engine, corruption)
//! and then refuses writes until a probe write succeeds again.
//!
//! Owns: whether this node's storage is failed, and why ([`StorageHealth`]). Must not:
//! decide what the node does about it (the server answers `/health` 503, gossips it, and
//! exits when the engine does not come back; the replica refuses requests), or read a
//! clock. An I/O error is never swallowed: it is returned to the caller *and* recorded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{lock, MerkleTree, PartitionId, PendingDurability, Storage, StorageError};
use crate::metrics::Metrics;

/// Meta key the recovery probe writes.
const PROBE_KEY: &str = "storage_probe";

/// Why the storage failed, once it did; shared by the replica, the coordinator, the HTTP
/// API and the server.
#[derive(Default)]
pub struct StorageHealth {
    failure: Mutex<Option<String>>,
    /// Errors seen in all, for the log.
    errors: AtomicU64,
}

impl StorageHealth {
    /// The reason storage failed, while it is failed.
    pub fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    pub fn is_failed(&self) -> bool {
        lock(&self.failure).is_some()
    }
}

/// An engine whose errors are recorded in a [`StorageHealth`]; see the module documentation.
pub struct Monitored<S> {
    inner: Arc<S>,
    health: Arc<StorageHealth>,
    metrics: Arc<Metrics>,
    probes: AtomicU64,
}

impl<S: Storage> Monitored<S> {
    pub fn new(inner: Arc<S>, metrics: Arc<Metrics>) -> Self {
        Monitored {
            inner,
            health: Arc::default(),
            metrics,
            probes: AtomicU64::new(0),
        }
    }

    pub fn health(&self) -> &Arc<StorageHealth> {
        &self.health
    }

    /// The engine itself (for what only it offers, e.g. the disk engine's flush at exit).
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    /// Tries one durable write; when it succeeds the storage counts as healthy again.
    /// Returns whether it is healthy now.
    pub fn probe(&self) -> bool {
        let n = self.probes.fetch_add(1, Ordering::Relaxed);
        match self.inner.meta_put(PROBE_KEY, &n.to_be_bytes()) {
            Ok(()) => {
                if lock(&self.health.failure).take().is_some() {
                    self.metrics.storage_failed.set(0);
                    tracing::warn!("storage recovered: a probe write succeeded");
                }
                true
            }
            Err(e) => {
                self.record(&e);
                false
            }
        }
    }

    fn record(&self, e: &StorageError) {
        if matches!(e, StorageError::TooLong { .. } | StorageError::Failed(_)) {
            return; // the caller's input, or our own refusal: not a sign of a failing engine
        }
        self.metrics.storage_errors.inc();
        let n = self.health.errors.fetch_add(1, Ordering::Relaxed);
        let mut failure = lock(&self.health.failure);
        if failure.is_none() {
            *failure = Some(e.to_string());
            self.metrics.storage_failed.set(1);
            tracing::error!(
                errors = n + 1,
                "storage failed: {e}; this node refuses requests until a probe write succeeds"
            );
        }
    }

    fn watch<T>(&self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        if let Err(e) = &result {
            self.record(e);
        }
        result
    }

    /// Awaits a deferred write's fsync (see `deferring_durability`); a failed fsync fails
    /// the storage like any error the engine returns.
    pub async fn settle(&self, write: PendingDurability) -> Result<(), StorageError> {
        self.watch(write.durable().await)
    }

    /// Refuses a write while the storage is failed: what the engine would do with it is
    /// unknown, and acknowledging it could lie.
    fn writable(&self) -> Result<(), StorageError> {
        match self.health.failure() {
            Some(reason) => Err(StorageError::Failed(reason)),
            None => Ok(()),
        }
    }
}

impl<S: Storage> Storage for Monitored<S> {
    fn get(&self, partition: PartitionId, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.watch(self.inner.get(partition, key))
    }

    fn put(&self, partition: PartitionId, key: &[u8], object: &[u8]) -> Result<(), StorageError> {
        self.writable()?;
        self.watch(self.inner.put(partition, key, object))
    }

    fn put_replacing(
        &self,
        partition: PartitionId,
        key: &[u8],
        old: Option<&[u8]>,
        object: &[u8],
    ) -> Result<(), StorageError> {
        self.writable()?;
        self.watch(self.inner.put_replacing(partition, key, old, object))
    }

    fn remove(&self, partition: PartitionId, key: &[u8]) -> Result<(), StorageError> {
        self.writable()?;
        self.watch(self.inner.remove(partition, key))
    }

    fn scan(
        &self,
        partition: PartitionId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        self.watch(self.inner.scan(partition, after, limit))
    }

    fn partitions(&self) -> Result<Vec<PartitionId>, StorageError> {
        self.watch(self.inner.partitions())
    }

    fn key_count(&self, partition: PartitionId) -> Result<u64, StorageError> {
        self.watch(self.inner.key_count(partition))
    }

    fn tree(&self, partition: PartitionId) -> Result<MerkleTree, StorageError> {
        self.watch(self.inner.tree(partition))
    }

    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.watch(self.inner.meta_get(key))
    }

    fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.writable()?;
        self.watch(self.inner.meta_put(key, value))
    }

    fn hint_put(
        &self,
        owner: &str,
        partition: PartitionId,
        key: &[u8],
        object: &[u8],
    ) -> Result<(), StorageError> {
        self.writable()?;
        self.watch(self.inner.hint_put(owner, partition, key, object))
    }

    fn hint_scan(
        &self,
        owner: &str,
        limit: usize,
    ) -> Result<Vec<(PartitionId, Vec<u8>, Vec<u8>)>, StorageError> {
        self.watch(self.inner.hint_scan(owner, limit))
    }

    fn hint_remove(
        &self,
        owner: &str,
        partition: PartitionId,
        key: &[u8],
    ) -> Result<(), StorageError> {
        self.writable()?;
        self.watch(self.inner.hint_remove(owner, partition, key))
    }

    fn hint_owners(&self) -> Result<Vec<(String, u64)>, StorageError> {
        self.watch(self.inner.hint_owners())
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.watch(self.inner.flush())
    }

    fn scans_block(&self) -> bool {
        self.inner.scans_block()
    }

    fn scan_segments(
        &self,
        partition: PartitionId,
        segments: &[usize],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        self.watch(self.inner.scan_segments(partition, segments))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    #[test]
    fn an_io_error_fails_the_storage_until_a_probe_write_succeeds() {
        let inner = Arc::new(MemoryStorage::new());
        let metrics = Arc::new(Metrics::default());
        let s = Monitored::new(inner.clone(), metrics.clone());
        s.put(0, b"k", b"v").unwrap();
        assert!(!s.health().is_failed());

        inner.set_write_failure(Some("No space left on device"));
        assert!(matches!(s.put(0, b"k", b"w"), Err(StorageError::Io(_))));
        let reason = s.health().failure().expect("failed after an I/O error");
        assert!(reason.contains("No space left"), "{reason}");
        assert_eq!(metrics.storage_failed.get(), 1);
        // Refused from now on without reaching the engine, reads still answered.
        assert!(matches!(
            s.put(0, b"k2", b"v"),
            Err(StorageError::Failed(_))
        ));
        assert!(matches!(
            s.hint_put("o", 0, b"k", b""),
            Err(StorageError::Failed(_))
        ));
        assert_eq!(s.get(0, b"k").unwrap(), Some(b"v".to_vec()));
        assert!(!s.probe(), "the probe fails while the engine does");

        inner.set_write_failure(None);
        assert!(s.probe());
        assert!(!s.health().is_failed());
        assert_eq!(metrics.storage_failed.get(), 0);
        s.put(0, b"k", b"w").unwrap();
        // Input over a limit is the caller's error, not the engine's.
        assert!(s.put(0, &vec![0; 100_000], b"v").is_err());
        assert!(!s.health().is_failed());
    }
}

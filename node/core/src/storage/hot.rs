//! The disk engine's cache of recently written objects: the replica reads a key before
//! every write (read, merge, write), and for a key written moments ago that read is a
//! seek in fjall's memtable skip list, which holds every version of every overwritten
//! key (about 6% of a node's CPU under a put load, `bench-compare --profile`). Here it is
//! one hash lookup.
//!
//! Owns: which objects are cached and the bound on their bytes. Must not: be filled from a
//! read. Only the engine's writers fill it, under the partition lock that orders every
//! writer of the key, right after fjall took the write; so it never holds anything but
//! the newest stored bytes of a key. A read that misses goes to fjall and leaves the
//! cache alone: filling it there could put back bytes a concurrent writer just replaced.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use super::lock;

/// Shards, so writers of different keys rarely meet on one lock.
const SHARDS: usize = 16;
/// Per entry, beyond key and value bytes: the map slot and the order queue entry.
const ENTRY_OVERHEAD: usize = 64;

/// See the module documentation.
pub(super) struct HotObjects {
    shards: Vec<Mutex<Shard>>,
    /// Bytes each shard may hold.
    shard_limit: usize,
}

#[derive(Default)]
struct Shard {
    objects: HashMap<Vec<u8>, Vec<u8>>,
    /// Keys in the order they were first cached; the oldest goes first. A key removed
    /// and cached again appears twice, so the queue is bounded by entries too.
    order: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl HotObjects {
    /// A cache of at most `limit_bytes` (keys, values and bookkeeping); 0 caches nothing.
    pub(super) fn new(limit_bytes: usize) -> Self {
        HotObjects {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_limit: limit_bytes / SHARDS,
        }
    }

    pub(super) fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        lock(self.shard(key)).objects.get(key).cloned()
    }

    /// Called by a writer holding the key's partition lock, after fjall stored `object`.
    pub(super) fn stored(&self, key: &[u8], object: &[u8]) {
        let cost = key.len() + object.len() + ENTRY_OVERHEAD;
        let mut guard = lock(self.shard(key));
        let shard = &mut *guard;
        if cost > self.shard_limit {
            // Too big to keep: what was cached for the key is stale now.
            shard.forget(key);
            return;
        }
        match shard.objects.get_mut(key) {
            Some(cached) => {
                shard.bytes = shard.bytes + object.len() - cached.len();
                cached.clear();
                cached.extend_from_slice(object);
            }
            None => {
                shard.objects.insert(key.to_vec(), object.to_vec());
                shard.order.push_back(key.to_vec());
                shard.bytes += cost;
            }
        }
        let limit = self.shard_limit;
        shard.evict(limit);
    }

    /// Called by a writer holding the key's partition lock, after fjall removed the key.
    pub(super) fn removed(&self, key: &[u8]) {
        lock(self.shard(key)).forget(key);
    }

    fn shard(&self, key: &[u8]) -> &Mutex<Shard> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        &self.shards[h.finish() as usize % SHARDS]
    }
}

impl Shard {
    fn forget(&mut self, key: &[u8]) {
        if let Some(old) = self.objects.remove(key) {
            self.bytes -= key.len() + old.len() + ENTRY_OVERHEAD;
        }
    }

    fn evict(&mut self, limit: usize) {
        let max_queued = limit / ENTRY_OVERHEAD;
        while self.bytes > limit || self.order.len() > max_queued {
            let Some(oldest) = self.order.pop_front() else {
                return;
            };
            self.forget(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_newest_bytes_written_and_forgets_removed_keys() {
        let hot = HotObjects::new(1 << 20);
        assert_eq!(hot.get(b"k"), None);
        hot.stored(b"k", b"one");
        hot.stored(b"k", b"two, longer");
        assert_eq!(hot.get(b"k").as_deref(), Some(&b"two, longer"[..]));
        hot.removed(b"k");
        assert_eq!(hot.get(b"k"), None);
    }

    #[test]
    fn stays_within_its_bytes_and_entries_under_churn() {
        let limit = 64 << 10;
        let hot = HotObjects::new(limit);
        for i in 0..100_000u32 {
            let key = (i % 5_000).to_be_bytes();
            hot.stored(&key, &[7; 100]);
            if i % 3 == 0 {
                hot.removed(&key);
            }
        }
        for shard in &hot.shards {
            let shard = lock(shard);
            let bytes: usize = shard
                .objects
                .iter()
                .map(|(k, v)| k.len() + v.len() + ENTRY_OVERHEAD)
                .sum();
            assert_eq!(bytes, shard.bytes, "byte count drifted");
            assert!(shard.bytes <= hot.shard_limit, "{} bytes", shard.bytes);
            assert!(shard.order.len() <= hot.shard_limit / ENTRY_OVERHEAD);
        }
        // The newest key written is still cached with its newest bytes.
        hot.stored(b"last", b"v");
        assert_eq!(hot.get(b"last").as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn an_object_too_big_to_cache_drops_the_stale_copy() {
        let hot = HotObjects::new(SHARDS * 1024);
        hot.stored(b"k", b"small");
        hot.stored(b"k", &[0; 4096]);
        assert_eq!(hot.get(b"k"), None);
    }
}

//! Bulk reads of one replica's partition: pages of live keys for a listing, and pages of
//! whole objects for a rebuild stream, each within its bounds.
//!
//! Must not: talk to other nodes, or know about cursors and streams across partitions
//! (`listing` and `rebuild` do); it sits below `replica`, which answers peers with it.

use crate::object::{decode_object, split_storage_key, storage_key, ObjectError};
use crate::rpc::KeyedObject;
use crate::storage::{PartitionId, Storage, StorageError};

/// Why a scan stopped: the engine failed, or a stored object did not decode.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Object(#[from] ObjectError),
}

/// Keys one page holds at most (`?limit=`).
pub const MAX_LIST_LIMIT: usize = 10_000;
/// Stored entries (of any bucket, live or not) one replica reads for one request at most;
/// it then answers with where to resume, so a listing never holds a scan for long.
pub const SCAN_BUDGET: usize = 10_000;
/// Entries read from storage at once: a scan holds at most this many objects in memory.
const LIVE_SCAN_CHUNK: usize = 32;

/// What one replica answers for one partition: live keys in storage order and, when it
/// stopped before the partition's end, the last key it read (resume after it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionKeys {
    pub keys: Vec<Vec<u8>>,
    pub resume: Option<Vec<u8>>,
    pub scanned: u64,
}

/// Up to `limit` keys of `bucket` in `partition` after `after` whose state holds a value
/// live at `now_ms` (deleted and expired keys hidden), reading at most [`SCAN_BUDGET`]
/// entries.
pub fn scan_live_keys<S: Storage + ?Sized>(
    storage: &S,
    partition: PartitionId,
    bucket: &[u8],
    after: Option<&[u8]>,
    limit: usize,
    now_ms: u64,
) -> Result<PartitionKeys, ScanError> {
    let prefix = storage_key(bucket, b"");
    // The bucket's keys are contiguous in storage order (its length-prefixed name comes
    // first) and longer than the prefix itself, so the scan starts right at them.
    let mut from = after.map_or_else(|| prefix.clone(), |key| storage_key(bucket, key));
    let mut out = PartitionKeys::default();
    loop {
        let chunk = storage.scan(partition, Some(&from), LIVE_SCAN_CHUNK)?;
        let full = chunk.len() == LIVE_SCAN_CHUNK;
        for (stored, bytes) in chunk {
            if !stored.starts_with(&prefix) {
                return Ok(out);
            }
            out.scanned += 1;
            let object = decode_object(&bytes)?;
            if object.values().iter().any(|s| s.is_live(now_ms)) {
                out.keys.push(stored[prefix.len()..].to_vec());
            }
            if out.keys.len() >= limit || out.scanned as usize >= SCAN_BUDGET {
                out.resume = Some(stored[prefix.len()..].to_vec());
                return Ok(out);
            }
            from = stored;
        }
        if !full {
            return Ok(out);
        }
    }
}

/// Largest `max_bytes` a peer may ask for: a page stays far under a message.
pub const MAX_PAGE_BYTES: u32 = 8 * 1024 * 1024;
/// Objects one page holds at most, whatever their size.
pub const MAX_PAGE_OBJECTS: usize = 20_000;
/// Entries read from storage at once while filling a page.
const PAGE_SCAN_CHUNK: usize = 256;
/// One page of a partition as a replica reads it.
#[derive(Debug, Default)]
pub struct PageScan {
    pub objects: Vec<KeyedObject>,
    /// The last storage key in the page when the partition goes on past it.
    pub resume: Option<Vec<u8>>,
    /// Stored bytes (keys and objects) in the page.
    pub bytes: u64,
}

/// The objects of `partition` after the storage key `after`, in storage order, up to
/// about `max_bytes` (at least one object, however large) and [`MAX_PAGE_OBJECTS`].
pub fn scan_page<S: Storage + ?Sized>(
    storage: &S,
    partition: PartitionId,
    after: Option<&[u8]>,
    max_bytes: usize,
) -> Result<PageScan, ScanError> {
    let mut out = PageScan::default();
    let mut from = after.map(<[u8]>::to_vec);
    loop {
        let chunk = storage.scan(partition, from.as_deref(), PAGE_SCAN_CHUNK)?;
        let full = chunk.len() == PAGE_SCAN_CHUNK;
        for (skey, raw) in chunk {
            // Storage scans strictly after the cursor, in key order: each page starts past
            // the previous one, so a stream always ends.
            debug_assert!(
                from.as_ref().is_none_or(|f| skey > *f),
                "a storage scan went back to or before its cursor"
            );
            let size = (skey.len() + raw.len()) as u64;
            let over = out.bytes + size > max_bytes as u64 || out.objects.len() >= MAX_PAGE_OBJECTS;
            if !out.objects.is_empty() && over {
                out.resume = from;
                return check_scanned(out, max_bytes);
            }
            let (bucket, key) = split_storage_key(&skey)?;
            out.objects.push(KeyedObject {
                bucket: bucket.to_vec(),
                key: key.to_vec(),
                object: decode_object(&raw)?,
            });
            out.bytes += size;
            from = Some(skey);
        }
        if !full {
            return check_scanned(out, max_bytes);
        }
    }
}

/// What [`scan_page`] promises (debug builds check it): at most [`MAX_PAGE_OBJECTS`], and
/// within `max_bytes` unless the page is one object larger than that.
fn check_scanned(page: PageScan, max_bytes: usize) -> Result<PageScan, ScanError> {
    debug_assert!(page.objects.len() <= MAX_PAGE_OBJECTS);
    debug_assert!(
        page.objects.len() <= 1 || page.bytes <= max_bytes as u64,
        "a page of {} bytes for {max_bytes} asked",
        page.bytes
    );
    debug_assert!(
        page.resume.is_none() || !page.objects.is_empty(),
        "an empty page that says the partition goes on"
    );
    Ok(page)
}

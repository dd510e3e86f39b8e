//! The cluster side of bucket properties: the table read (listed and read at a quorum)
//! and written through the coordinator, and [`PropsSync`], which keeps every node's cache
//! in step by gossiping its digest.
//!
//! Must not: define the properties' format or how concurrent changes resolve
//! (`bucket_props` does), or apply them to requests (`request_options` does).

use std::collections::BTreeMap;
use std::sync::PoisonError;
use std::time::Duration;

use crate::bucket_props::{
    versions, BucketProps, StampedProps, MAX_BUCKETS_WITH_PROPS, PROPS_BUCKET,
};
use crate::causality::Context;
use crate::coordinator::{Coordinator, CoordinatorError};
use crate::listing::{Cursor, MAX_LIST_LIMIT};
use crate::membership::Gossip;
use crate::object::Sibling;
use crate::peers::Peers;
use crate::storage::Storage;

/// Gossiped key-value: the digest of a node's properties table.
pub const PROPS_KV: &str = "bucket_props";
/// A node reloads the table at least this often, even when every digest agrees.
pub const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// Digests are compared this often.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Gossips this node's table digest, so members whose table differs reload theirs.
pub fn publish_digest<S: Storage, P: Peers>(coordinator: &Coordinator<S, P>, gossip: &Gossip) {
    gossip.set_local_kv(PROPS_KV, &coordinator.props().digest());
}

/// Keeps a node's cache in step: reloads the table (listed and read at a quorum, within
/// `timeout`) when a live member gossips another digest, and at least every
/// [`RELOAD_EVERY`] (a change can land on a quorum that missed this node's cache).
pub struct PropsSync<S: Storage, P: Peers> {
    coordinator: Coordinator<S, P>,
    gossip: std::sync::Arc<Gossip>,
    timeout: Duration,
    loaded_at: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl<S: Storage, P: Peers> PropsSync<S, P> {
    pub fn new(
        coordinator: Coordinator<S, P>,
        gossip: std::sync::Arc<Gossip>,
        timeout: Duration,
    ) -> Self {
        PropsSync {
            coordinator,
            gossip,
            timeout,
            loaded_at: std::sync::Mutex::new(None),
        }
    }

    /// One check: publish the digest, reload when another differs or one is due.
    pub async fn step(&self) {
        publish_digest(&self.coordinator, &self.gossip);
        let mine = self.coordinator.props().digest();
        let differs = self.gossip.members().iter().any(|m| {
            !m.is_self
                && m.state == chorus_gossip::MemberState::Alive
                && m.kv.get(PROPS_KV).is_some_and(|d| *d != mine)
        });
        let loaded_at = *self
            .loaded_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let due = loaded_at.is_none_or(|t| t.elapsed() >= RELOAD_EVERY);
        if !differs && !due {
            return;
        }
        match self.coordinator.load_bucket_props(self.timeout).await {
            Ok(table) => {
                self.coordinator.props().replace(table);
                *self
                    .loaded_at
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(tokio::time::Instant::now());
                publish_digest(&self.coordinator, &self.gossip);
            }
            Err(e) => tracing::debug!("bucket properties not reloaded: {e}"),
        }
    }
}

/// Why the cluster's properties could not be loaded (the old table stays in force).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Read(#[from] CoordinatorError),
    #[error("partitions {0:?} of the properties bucket could not be listed")]
    Uncovered(Vec<u32>),
    #[error("more than {MAX_BUCKETS_WITH_PROPS} buckets have properties")]
    TooMany,
}

impl<S: Storage, P: Peers> Coordinator<S, P> {
    /// The versions of a bucket's properties (winner first) and the context of that read,
    /// read at a quorum.
    pub async fn read_bucket_props(
        &self,
        bucket: &[u8],
        timeout: Duration,
    ) -> Result<(Vec<StampedProps>, Context), CoordinatorError> {
        let quorum = self.n() / 2 + 1;
        let object = self.get(PROPS_BUCKET, bucket, quorum, 0, timeout).await?;
        Ok((versions(&object), object.context()))
    }

    /// Replaces a bucket's properties: written over the versions a quorum read found, so
    /// it supersedes them; a change made concurrently elsewhere stays a sibling, and the
    /// higher `(stamp, set_by)` wins on every node. Updates this node's cache at once.
    pub async fn write_bucket_props(
        &self,
        bucket: &[u8],
        props: BucketProps,
        timeout: Duration,
    ) -> Result<StampedProps, CoordinatorError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (seen, context) = self.read_bucket_props(bucket, timeout).await?;
        let stamped = StampedProps {
            props,
            stamp: seen.iter().map(|v| v.stamp).max().unwrap_or(0) + 1,
            set_by: self.name().to_string(),
        };
        let quorum = self.n() / 2 + 1;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let value = Sibling::value(stamped.encode(), None);
        self.put(PROPS_BUCKET, bucket, context, value, quorum, 0, remaining)
            .await?;
        self.props().set(bucket, stamped.props.clone());
        Ok(stamped)
    }

    /// Every bucket's winning properties, listed and read at a quorum.
    pub async fn load_bucket_props(
        &self,
        timeout: Duration,
    ) -> Result<BTreeMap<Vec<u8>, BucketProps>, LoadError> {
        let mut table = BTreeMap::new();
        let mut cursor = Some(Cursor::default());
        while let Some(from) = cursor {
            let page = self
                .list_keys(PROPS_BUCKET, from.clone(), MAX_LIST_LIMIT, timeout)
                .await;
            if !page.uncovered.is_empty() {
                return Err(LoadError::Uncovered(page.uncovered));
            }
            if page.next.as_ref() == Some(&from) {
                return Err(LoadError::Uncovered(vec![from.partition]));
            }
            for bucket in page.keys {
                let (versions, _) = self.read_bucket_props(&bucket, timeout).await?;
                match versions.into_iter().next() {
                    Some(winner) if winner.props != BucketProps::default() => {
                        table.insert(bucket, winner.props);
                    }
                    _ => {}
                }
            }
            if table.len() > MAX_BUCKETS_WITH_PROPS {
                return Err(LoadError::TooMany);
            }
            cursor = page.next;
        }
        Ok(table)
    }
}

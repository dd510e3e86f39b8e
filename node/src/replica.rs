//! One node's role as a replica: reads, coordinated writes and merges of per-key state
//! against local storage. A replica never talks to other nodes and never reads a clock; it
//! only merges states through the DVV laws, so replaying the same requests gives the same
//! stored bytes.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use crate::causality::{ActorId, Context};
use crate::object::{decode_object, encode_object, storage_key, Object, Sibling};
use crate::rpc::{Request, Response};
use crate::storage::{PartitionId, Storage};

/// Read-modify-write of a key happens under one of these locks, so two concurrent merges
/// of the same key cannot both read the old state and lose each other's versions.
const LOCK_STRIPES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("{0}")]
    Object(#[from] crate::object::ObjectError),
    #[error("the key would have {count} siblings, over the limit of {max}; read it and write back with its context to resolve them")]
    TooManySiblings { count: usize, max: usize },
    #[error("invalid state from a peer: {0}")]
    InvalidState(String),
}

pub struct ReplicaConfig {
    pub actor: ActorId,
    pub ring_size: u32,
    /// A coordinated write that would leave more siblings than this is refused.
    pub max_siblings: usize,
    /// A key reaching this many siblings is logged as a warning.
    pub warn_siblings: usize,
}

pub struct Replica<S: Storage> {
    storage: Arc<S>,
    config: ReplicaConfig,
    stripes: Vec<Mutex<()>>,
}

impl<S: Storage> Replica<S> {
    pub fn new(storage: Arc<S>, config: ReplicaConfig) -> Self {
        Replica { storage, config, stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect() }
    }

    pub fn storage(&self) -> &Arc<S> {
        &self.storage
    }

    pub fn partition_of(&self, bucket: &[u8], key: &[u8]) -> PartitionId {
        chorus_ring::partition_of(self.config.ring_size, bucket, key)
    }

    pub fn handle(&self, request: Request) -> Response {
        let result = match request {
            Request::Get { bucket, key } => self.get(&bucket, &key).map(Response::Object),
            Request::Coordinate { bucket, key, context, value } => {
                self.coordinate(&bucket, &key, &context, value).map(Response::Stored)
            }
            Request::Merge { bucket, key, object, hint_for } => {
                self.merge(&bucket, &key, &object, hint_for.as_deref()).map(Response::Stored)
            }
        };
        result.unwrap_or_else(|e| match e {
            ReplicaError::TooManySiblings { .. } => {
                Response::Refused { code: "too_many_siblings".into(), message: e.to_string() }
            }
            other => Response::Failed(other.to_string()),
        })
    }

    pub fn get(&self, bucket: &[u8], key: &[u8]) -> Result<Option<Object>, ReplicaError> {
        let partition = self.partition_of(bucket, key);
        match self.storage.get(partition, &storage_key(bucket, key))? {
            Some(bytes) => Ok(Some(decode_object(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The coordinating replica's part of a write: the new value gets a dot of this
    /// replica's actor, superseding exactly what `context` covers. Persisted before return.
    pub fn coordinate(&self, bucket: &[u8], key: &[u8], context: &Context, value: Sibling) -> Result<Object, ReplicaError> {
        let partition = self.partition_of(bucket, key);
        let skey = storage_key(bucket, key);
        let _guard = self.lock(&skey);
        let current = self.read(partition, &skey)?.unwrap_or_else(Object::new);
        let updated = current.update(context, self.config.actor, value);
        let count = updated.sibling_count();
        if count > self.config.max_siblings {
            return Err(ReplicaError::TooManySiblings { count, max: self.config.max_siblings });
        }
        if count >= self.config.warn_siblings {
            tracing::warn!(bucket = %String::from_utf8_lossy(bucket), key = %String::from_utf8_lossy(key), siblings = count, "key has many siblings; clients should resolve them by writing with a read's context");
        }
        self.storage.put(partition, &skey, &encode_object(&updated))?;
        Ok(updated)
    }

    /// Merges a peer's state into ours (replication, read repair, handoff, anti-entropy).
    /// Never refused for sibling count: refusing would drop a version another replica holds.
    pub fn merge(&self, bucket: &[u8], key: &[u8], incoming: &Object, hint_for: Option<&str>) -> Result<Object, ReplicaError> {
        incoming.validate().map_err(|e| ReplicaError::InvalidState(e.to_string()))?;
        let partition = self.partition_of(bucket, key);
        let skey = storage_key(bucket, key);
        let _guard = self.lock(&skey);
        let current = self.read(partition, &skey)?;
        let merged = match &current {
            Some(current) => current.sync(incoming),
            None => incoming.clone(),
        };
        if current.as_ref() != Some(&merged) {
            self.storage.put(partition, &skey, &encode_object(&merged))?;
        }
        if let Some(owner) = hint_for {
            // The hint only names the key: at delivery the current merged state is sent.
            self.storage.hint_put(owner, partition, &skey, &[])?;
        }
        Ok(merged)
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
        stripe.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

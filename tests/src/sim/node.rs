//! A simulated node: the production replica, coordinator, healer and gossip shell over a
//! `MemoryStorage` that plays the node's disk, wired to the simulated network.
//!
//! A crash ends the incarnation: its tasks (gossip loop, healing loop, client requests it
//! coordinates) are aborted, its disk handle is closed (so a task the coordinator spawned
//! cannot write after the crash), and everything in memory is gone (membership, hint
//! counts, reap candidates). The `MemoryStorage` survives: in `--sync periodic` a write is
//! in the OS before it is acknowledged, so a process crash loses nothing written; this sim
//! does not model a machine crash losing the last un-fsynced interval. A restart opens a
//! new incarnation on the same disk, with a higher generation, as `chorus start` does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_core::bucket_props::{self, PropsSync};
use chorus_core::causality::ActorId;
use chorus_core::clock::WallClock;
use chorus_core::coordinator::Coordinator;
use chorus_core::healing::{Healer, HealingConfig};
use chorus_core::membership::Gossip;
use chorus_core::metrics::Metrics;
use chorus_core::replica::{Replica, ReplicaConfig, ACTOR_META_KEY};
use chorus_core::storage::{MemoryStorage, MerkleTree, PartitionId, Storage, StorageError};
use chorus_gossip::{ClusterConfig, Config as GossipConfig};
use tokio::task::AbortHandle;

use super::net::{SimNet, SimPeers};
use chorus_core::batching::{Batching, BATCH_KV};

/// The settings every simulated node runs with (the production defaults, scaled down where
/// a scenario lasts seconds instead of hours).
#[derive(Clone, Debug)]
pub struct NodeSettings {
    pub ring_size: u32,
    pub n: usize,
    pub gossip_interval: Duration,
    pub healing: HealingConfig,
    pub max_hints_per_owner: u64,
    pub max_siblings: usize,
    /// Test-only: writes answer with the first build's context (issue 14's bug), to show
    /// the checker catches it.
    pub old_answer_context: bool,
    /// Run the bucket-properties reload loop (`bucket_props::PropsSync`), as a real node.
    pub props_sync: bool,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            ring_size: 16,
            n: 3,
            gossip_interval: Duration::from_millis(500),
            healing: HealingConfig {
                interval: Duration::from_millis(500),
                tombstone_grace: Duration::from_secs(5),
                rpc_timeout: Duration::from_secs(3),
                ..HealingConfig::default()
            },
            max_hints_per_owner: 50,
            max_siblings: 100,
            old_answer_context: false,
            props_sync: false,
        }
    }
}

/// A node's disk as one incarnation sees it: the shared `MemoryStorage`, refused once the
/// incarnation is dead.
pub struct SimDisk {
    disk: Arc<MemoryStorage>,
    alive: Arc<AtomicBool>,
}

impl SimDisk {
    fn check(&self) -> Result<(), StorageError> {
        if self.alive.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(StorageError::Closed)
        }
    }
}

impl Storage for SimDisk {
    fn get(&self, partition: PartitionId, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.check()?;
        self.disk.get(partition, key)
    }
    fn put(&self, partition: PartitionId, key: &[u8], object: &[u8]) -> Result<(), StorageError> {
        self.check()?;
        self.disk.put(partition, key, object)
    }
    fn remove(&self, partition: PartitionId, key: &[u8]) -> Result<(), StorageError> {
        self.check()?;
        self.disk.remove(partition, key)
    }
    fn scan(
        &self,
        partition: PartitionId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        self.check()?;
        self.disk.scan(partition, after, limit)
    }
    fn partitions(&self) -> Result<Vec<PartitionId>, StorageError> {
        self.check()?;
        self.disk.partitions()
    }
    fn key_count(&self, partition: PartitionId) -> Result<u64, StorageError> {
        self.check()?;
        self.disk.key_count(partition)
    }
    fn tree(&self, partition: PartitionId) -> Result<MerkleTree, StorageError> {
        self.check()?;
        self.disk.tree(partition)
    }
    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.check()?;
        self.disk.meta_get(key)
    }
    fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.check()?;
        self.disk.meta_put(key, value)
    }
    fn hint_put(
        &self,
        owner: &str,
        partition: PartitionId,
        key: &[u8],
        object: &[u8],
    ) -> Result<(), StorageError> {
        self.check()?;
        self.disk.hint_put(owner, partition, key, object)
    }
    fn hint_scan(
        &self,
        owner: &str,
        limit: usize,
    ) -> Result<Vec<(PartitionId, Vec<u8>, Vec<u8>)>, StorageError> {
        self.check()?;
        self.disk.hint_scan(owner, limit)
    }
    fn hint_remove(
        &self,
        owner: &str,
        partition: PartitionId,
        key: &[u8],
    ) -> Result<(), StorageError> {
        self.check()?;
        self.disk.hint_remove(owner, partition, key)
    }
    fn hint_owners(&self) -> Result<Vec<(String, u64)>, StorageError> {
        self.check()?;
        self.disk.hint_owners()
    }
    fn scans_block(&self) -> bool {
        self.disk.scans_block()
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.check()?;
        self.disk.flush()
    }
}

/// One run of a node process, from start to crash.
pub struct Incarnation {
    pub name: String,
    pub id: u64,
    pub generation: u64,
    alive: Arc<AtomicBool>,
    pub replica: Arc<Replica<SimDisk>>,
    pub gossip: Arc<Gossip>,
    pub coordinator: Coordinator<SimDisk, Batching<SimPeers>>,
    pub healer: Arc<Healer<SimDisk, Batching<SimPeers>>>,
    pub metrics: Arc<Metrics>,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Incarnation {
    /// Registers a task that dies with this incarnation.
    pub fn own(&self, handle: AbortHandle) {
        if self.alive.load(Ordering::SeqCst) {
            self.tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(handle);
        } else {
            handle.abort();
        }
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// The process dies: tasks stop at their next await, the disk handle closes.
    pub fn kill(&self) {
        self.alive.store(false, Ordering::SeqCst);
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

/// What survives a crash: the node's name, disk and wall clock.
pub struct SimNode {
    pub name: String,
    pub disk: Arc<MemoryStorage>,
    pub clock: Arc<SimClock>,
}

/// The Unix time (ms) a simulated run starts at: fixed, so expiry replays from the seed.
pub const SIM_EPOCH_MS: u64 = 1_800_000_000_000;

/// A node's time of day in the simulation: the virtual time since the run began, from
/// [`SIM_EPOCH_MS`], off by this machine's skew (which survives its crashes).
pub struct SimClock {
    start: tokio::time::Instant,
    pub skew_ms: i64,
}

impl SimClock {
    pub fn new(skew_ms: i64) -> SimClock {
        SimClock {
            start: tokio::time::Instant::now(),
            skew_ms,
        }
    }

    /// The true time of day: what every clock would read without skew.
    pub fn true_now_ms(&self) -> u64 {
        SIM_EPOCH_MS + self.start.elapsed().as_millis() as u64
    }
}

impl WallClock for SimClock {
    fn now_ms(&self) -> u64 {
        self.true_now_ms().saturating_add_signed(self.skew_ms)
    }
}

const SIM_IDENTITY_KEY: &str = "sim_identity";

impl SimNode {
    /// Starts an incarnation: reads (or creates) the identity on disk and bumps the
    /// generation, as `chorus start` does, then wires the production parts together.
    pub fn start(
        &self,
        net: &Arc<SimNet>,
        settings: &NodeSettings,
        all: &[String],
        incarnation: u64,
        seed: u64,
    ) -> Arc<Incarnation> {
        let alive = Arc::new(AtomicBool::new(true));
        let disk = Arc::new(SimDisk {
            disk: self.disk.clone(),
            alive: alive.clone(),
        });
        let (actor, generation) = match self
            .disk
            .meta_get(SIM_IDENTITY_KEY)
            .expect("memory storage")
        {
            Some(bytes) => {
                let actor = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
                let generation = u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes"));
                (actor, generation + 1)
            }
            None => (seed ^ 0x9e37_79b9_7f4a_7c15, 1),
        };
        let mut identity = actor.to_be_bytes().to_vec();
        identity.extend_from_slice(&generation.to_be_bytes());
        self.disk
            .meta_put(SIM_IDENTITY_KEY, &identity)
            .expect("memory storage");
        // The actor dots are minted with: the last one retired actors persisted, else the
        // identity's (server.rs `current_actor`).
        let actor = match self.disk.meta_get(ACTOR_META_KEY).expect("memory storage") {
            Some(bytes) => u64::from_be_bytes(bytes.as_slice().try_into().expect("8 bytes")),
            None => actor,
        };

        let metrics = Arc::new(Metrics::default());
        let mut config = GossipConfig::new(
            self.name.clone(),
            self.name.clone(),
            generation,
            ClusterConfig {
                n: settings.n,
                ring_size: settings.ring_size,
            },
            all.iter().filter(|n| **n != self.name).cloned().collect(),
        );
        config.gossip_interval_ms = settings.gossip_interval.as_millis() as u64;
        let gossip = Arc::new(Gossip::new(
            config,
            settings.ring_size,
            settings.n,
            seed.rotate_left(17),
        ));
        let replica = Arc::new(
            Replica::new(
                disk,
                ReplicaConfig {
                    actor: ActorId(actor),
                    actor_seed: seed.rotate_left(31),
                    ring_size: settings.ring_size,
                    max_siblings: settings.max_siblings,
                    max_object_bytes: chorus_core::object::WRITE_MAX_OBJECT_BYTES,
                    warn_siblings: 25,
                    max_hints_per_owner: settings.max_hints_per_owner,
                    clock: self.clock.clone(),
                },
                metrics.clone(),
            )
            .expect("replica over memory storage"),
        );
        let sim_peers = Arc::new(SimPeers {
            net: net.clone(),
            from: self.name.clone(),
            incarnation,
        });
        // Batched as the server batches, on the same gossiped capability.
        let batch_capable = gossip.clone();
        let peers = Arc::new(Batching::new(
            sim_peers,
            Box::new(move |peer| batch_capable.kv_is(peer, BATCH_KV, "1")),
            &metrics,
        ));
        gossip.set_local_kv(BATCH_KV, "1");
        let coordinator = Coordinator::new(
            self.name.clone(),
            replica.clone(),
            peers.clone(),
            gossip.view.clone(),
            metrics.clone(),
        )
        .with_old_answer_context(settings.old_answer_context);
        let healer = Arc::new(Healer::new(
            self.name.clone(),
            replica.clone(),
            peers,
            gossip.clone(),
            metrics.clone(),
            settings.healing.clone(),
        ));
        let node = Arc::new(Incarnation {
            name: self.name.clone(),
            id: incarnation,
            generation,
            alive,
            replica,
            gossip,
            coordinator,
            healer,
            metrics,
            tasks: Mutex::new(Vec::new()),
        });
        net.set_up(node.clone());
        net.trace.log(format!(
            "{} starts: incarnation {incarnation}, generation {generation}, actor {actor}",
            self.name
        ));

        // The gossip loop (server.rs `gossip_loop`), the healing loop (`Healer::run`) and
        // the rebuild loop, all stopped while the node is paused.
        every(&node, net, settings.gossip_interval, |n, net| async move {
            let out = n.gossip.tick();
            net.send_gossip(&n.name, out);
        });
        every(&node, net, settings.healing.interval, |n, _| async move {
            n.healer.round().await
        });
        // The rebuild loop (`Rebuilder::run`, spawned by `Healer::run` in a real node).
        every(&node, net, settings.healing.interval, |n, _| async move {
            n.healer.rebuilder().step().await
        });
        if settings.props_sync {
            let sync = Arc::new(PropsSync::new(
                node.coordinator.clone(),
                node.gossip.clone(),
                Duration::from_secs(2),
            ));
            every(&node, net, bucket_props::CHECK_EVERY, move |_, _| {
                let sync = sync.clone();
                async move { sync.step().await }
            });
        }
        node
    }
}

/// Runs `step` on `node` every `interval` of virtual time while it runs (waiting out
/// pauses) until the incarnation ends; the task belongs to the incarnation.
fn every<F, Fut>(node: &Arc<Incarnation>, net: &Arc<SimNet>, interval: Duration, step: F)
where
    F: Fn(Arc<Incarnation>, Arc<SimNet>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (n, net) = (node.clone(), net.clone());
    let task = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if net.wait_running(&n.name, Some(n.id)).await.is_none() {
                return;
            }
            step(n.clone(), net.clone()).await;
        }
    });
    node.own(task.abort_handle());
}

//! A simulated node: the node `chorus start` runs, built by the core's one assembly
//! (`chorus_core::assembly`) over a `MemoryStorage` that plays the node's disk, wired to
//! the simulated network, with the core's list of duties run on the virtual clock.
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

use chorus_core::assembly::{assemble, Duty, NodeInputs, NodePeers, NodeSettings as CoreSettings};
use chorus_core::causality::ActorId;
use chorus_core::clock::WallClock;
use chorus_core::coordinator::Coordinator;
use chorus_core::healing::{Healer, HealingConfig};
use chorus_core::membership::Gossip;
use chorus_core::metrics::Metrics;
use chorus_core::replica::Replica;
use chorus_core::storage::{MemoryStorage, MerkleTree, PartitionId, Storage, StorageError};
use chorus_gossip::{ClusterConfig, Config as GossipConfig};
use tokio::task::AbortHandle;

use super::net::{SimNet, SimPeers};

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
    /// How long a failed disk may stay failed before the node gives up and exits (the
    /// production default).
    pub storage_exit_after: Duration,
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
            storage_exit_after: Duration::from_secs(10),
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
    /// The names of the duties this incarnation runs (the core's list, see
    /// `assembly::DUTIES`).
    pub duties: Vec<&'static str>,
    /// Set when the storage watch gives up on a failed disk: the process exits.
    pub storage_gave_up: tokio::sync::watch::Receiver<Option<String>>,
    pub replica: Arc<Replica<SimDisk>>,
    pub gossip: Arc<Gossip>,
    pub coordinator: Coordinator<SimDisk, NodePeers<SimPeers>>,
    pub healer: Arc<Healer<SimDisk, NodePeers<SimPeers>>>,
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
    /// generation, as `chorus start` does, then builds the node with the core's one
    /// assembly and runs its duties on the virtual clock.
    pub fn start(
        &self,
        net: &Arc<SimNet>,
        settings: &NodeSettings,
        all: &[String],
        incarnation: u64,
        seed: u64,
    ) -> Arc<Incarnation> {
        let alive = Arc::new(AtomicBool::new(true));
        let (actor, generation) = self.bump_identity(seed);
        let parts = assemble(
            &self.core_settings(settings, all, generation),
            self.inputs(net, alive.clone(), incarnation, actor, seed),
        )
        .expect("assembly over memory storage");
        let duties = parts.duties();
        let node = Arc::new(Incarnation {
            name: self.name.clone(),
            id: incarnation,
            generation,
            alive,
            duties: duties.iter().map(|d| d.name).collect(),
            storage_gave_up: parts.storage_gave_up(),
            replica: parts.replica,
            gossip: parts.gossip,
            coordinator: parts.coordinator,
            healer: parts.healer,
            metrics: parts.metrics,
            tasks: Mutex::new(Vec::new()),
        });
        net.set_up(node.clone());
        net.trace.log(format!(
            "{} starts: incarnation {incarnation}, generation {generation}, actor {actor}",
            self.name
        ));
        for duty in duties {
            every(&node, net, duty);
        }
        node
    }

    /// Reads the identity on disk (or makes one) and stores it with the next generation.
    fn bump_identity(&self, seed: u64) -> (u64, u64) {
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
        (actor, generation)
    }

    /// The production settings for this node (the address is its name on the simulated
    /// network).
    fn core_settings(
        &self,
        settings: &NodeSettings,
        all: &[String],
        generation: u64,
    ) -> CoreSettings {
        let mut gossip = GossipConfig::new(
            self.name.clone(),
            self.name.clone(),
            generation,
            ClusterConfig {
                n: settings.n,
                ring_size: settings.ring_size,
            },
            all.iter().filter(|n| **n != self.name).cloned().collect(),
        );
        gossip.gossip_interval_ms = settings.gossip_interval.as_millis() as u64;
        CoreSettings {
            gossip,
            max_siblings: settings.max_siblings,
            warn_siblings: 25,
            max_hints_per_owner: settings.max_hints_per_owner,
            healing: settings.healing.clone(),
            props_timeout: Duration::from_secs(2),
            storage_exit_after: settings.storage_exit_after,
            old_answer_context: settings.old_answer_context,
        }
    }

    fn inputs(
        &self,
        net: &Arc<SimNet>,
        alive: Arc<AtomicBool>,
        incarnation: u64,
        actor: u64,
        seed: u64,
    ) -> NodeInputs<SimDisk, SimPeers> {
        let peers = SimPeers {
            net: net.clone(),
            from: self.name.clone(),
            incarnation,
        };
        // Weak: the network holds the incarnation, which holds this sink.
        let (to_net, from) = (Arc::downgrade(net), self.name.clone());
        NodeInputs {
            storage: Arc::new(SimDisk {
                disk: self.disk.clone(),
                alive,
            }),
            peers: Box::new(move |_| Arc::new(peers)),
            send_gossip: Arc::new(move |out| {
                if let Some(net) = to_net.upgrade() {
                    net.send_gossip(&from, out);
                }
            }),
            clock: self.clock.clone(),
            identity_actor: ActorId(actor),
            seed,
        }
    }
}

/// Runs `duty` on `node` every `duty.every` of virtual time while it runs (waiting out
/// pauses) until the incarnation ends; the task belongs to the incarnation.
fn every(node: &Arc<Incarnation>, net: &Arc<SimNet>, duty: Duty) {
    let (n, net) = (node.clone(), net.clone());
    let task = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(duty.every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if net.wait_running(&n.name, Some(n.id)).await.is_none() {
                return;
            }
            duty.step().await;
        }
    });
    node.own(task.abort_handle());
}

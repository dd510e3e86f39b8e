//! The one assembly of a node: builds its parts (membership, replica, batched peers,
//! coordinator, healer, bucket-properties sync, storage watch) from its settings, its
//! storage, its peers, its clocks and its seeds, and declares its background duties as
//! steps with intervals. The server (`chorus start`) runs each duty on tokio's clock; the
//! simulation runs the same list on its virtual clock, so what the simulation proves is
//! about the node the server runs.
//!
//! Must not: bind ports, read flags or files, spawn tasks, or know how a duty is scheduled
//! (the caller owns scheduling, pauses and shutdown).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chorus_gossip::{Config as GossipConfig, Outgoing};
use tokio::time::Instant;

use crate::batching::{Batching, BATCH_KV};
use crate::causality::ActorId;
use crate::clock::WallClock;
use crate::coordinator::Coordinator;
use crate::healing::{Healer, HealingConfig};
use crate::membership::{Gossip, STORAGE_KV};
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::props_sync::{self, PropsSync};
use crate::reach::{self, Change};
use crate::replica::{Replica, ReplicaConfig, ReplicaError, ACTOR_META_KEY};
use crate::rpc::Request;
use crate::storage::{Storage, StorageError};

/// The names of a node's background duties, in the order [`NodeParts::duties`] lists
/// them. A test pins this list, and the simulation checks it runs exactly these.
pub const DUTIES: [&str; 6] = [
    "gossip",
    "healing",
    "rebuild",
    "props_sync",
    "storage_watch",
    "reach_probe",
];

/// While storage is failed, the reason is logged again this often.
const STORAGE_LOG_EVERY: Duration = Duration::from_secs(60);
/// The storage watch looks at the storage's health this often.
const STORAGE_WATCH_EVERY: Duration = Duration::from_secs(1);

/// What a node is configured with: everything but its I/O.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// Membership: the node's name, address, generation, cluster shape and seeds.
    pub gossip: GossipConfig,
    /// A coordinated write that would leave more siblings than this is refused.
    pub max_siblings: usize,
    /// A key reaching this many siblings is logged as a warning.
    pub warn_siblings: usize,
    /// Hints kept per unreachable owner.
    pub max_hints_per_owner: u64,
    /// Healing rounds, tombstone grace and rebuild streams.
    pub healing: HealingConfig,
    /// How long the bucket-properties sync may take to reload the table.
    pub props_timeout: Duration,
    /// How long storage may stay failed before the node gives up (and its process exits).
    pub storage_exit_after: Duration,
    /// Fault injection only: writes answer with the first build's context (issue 14's
    /// bug), so the checkers can be shown to catch it.
    pub old_answer_context: bool,
}

/// Sends the gossip messages a tick returns (QUIC in the server, the simulated network in
/// the simulation). It must not block: each message is sent on its own.
pub type GossipSink = Arc<dyn Fn(Vec<Outgoing>) + Send + Sync>;

/// What a node is built from: its I/O and its sources of time and chance.
pub struct NodeInputs<S: Storage, P: Peers> {
    pub storage: Arc<S>,
    /// How this node reaches other nodes' replicas, before batching; made from the
    /// node's membership, which knows the peers' addresses.
    pub peers: PeersFactory<P>,
    pub send_gossip: GossipSink,
    /// The time of day, for expiry.
    pub clock: Arc<dyn WallClock>,
    /// The actor of the node's identity, used until a retired actor is persisted.
    pub identity_actor: ActorId,
    /// Seeds the membership's and the replica's RNGs, so a simulation replays them.
    pub seed: u64,
}

/// Makes a node's peers from its membership.
pub type PeersFactory<P> = Box<dyn FnOnce(&Arc<Gossip>) -> Arc<P> + Send>;

/// The peers a node's coordinator and healer use: `P`, batched.
pub type NodePeers<P> = Batching<P>;

/// A built node: the parts its fronts act on, and the state of its duties.
pub struct NodeParts<S: Storage, P: Peers> {
    pub name: String,
    pub gossip: Arc<Gossip>,
    pub replica: Arc<Replica<S>>,
    pub coordinator: Coordinator<S, NodePeers<P>>,
    pub healer: Arc<Healer<S, NodePeers<P>>>,
    pub metrics: Arc<Metrics>,
    props_sync: Arc<PropsSync<S, NodePeers<P>>>,
    storage_watch: Arc<StorageWatch<S>>,
    peers: Arc<NodePeers<P>>,
    send_gossip: GossipSink,
    gossip_interval: Duration,
    healing_interval: Duration,
}

/// One background duty: a step to run every `every`.
pub struct Duty {
    pub name: &'static str,
    pub every: Duration,
    step: Arc<dyn Fn() -> DutyFuture + Send + Sync>,
}

/// One run of a duty's step.
pub type DutyFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

impl Duty {
    fn new<F, Fut>(name: &'static str, every: Duration, step: F) -> Duty
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Duty {
            name,
            every,
            step: Arc::new(move || Box::pin(step())),
        }
    }

    /// One run of the duty.
    pub fn step(&self) -> DutyFuture {
        (self.step)()
    }

    /// Runs the step every `every` on tokio's clock, forever (a late tick is delayed,
    /// never bunched).
    pub async fn run(self) {
        let mut ticker = tokio::time::interval(self.every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.step().await;
        }
    }
}

/// Builds a node's parts. Fails only when the storage cannot be read or holds a corrupt
/// actor id.
pub fn assemble<S: Storage, P: Peers>(
    settings: &NodeSettings,
    inputs: NodeInputs<S, P>,
) -> Result<NodeParts<S, P>, ReplicaError> {
    let name = settings.gossip.name.clone();
    let metrics = Arc::new(Metrics::default());
    let gossip = Arc::new(Gossip::new(
        settings.gossip.clone(),
        settings.gossip.cluster.ring_size,
        settings.gossip.cluster.n,
        inputs.seed.rotate_left(17),
    ));
    let actor = current_actor(inputs.storage.as_ref(), inputs.identity_actor)?;
    let replica = Arc::new(Replica::new(
        inputs.storage,
        replica_config(settings, actor, inputs.seed, inputs.clock),
        metrics.clone(),
    )?);
    let batch_capable = gossip.clone();
    let (observed, observed_metrics) = (gossip.clone(), metrics.clone());
    let peers = Arc::new(
        Batching::new(
            (inputs.peers)(&gossip),
            Box::new(move |peer| batch_capable.kv_is(peer, BATCH_KV, "1")),
            &metrics,
        )
        .with_observer(Arc::new(move |peer, answered| {
            if let Some(change) = observed.record_call(peer, answered) {
                if change == Change::Marked {
                    observed_metrics.peers_marked_unreachable.inc();
                }
                let marked = observed.reach().marked().len();
                observed_metrics.peers_unreachable_direct.set(marked as i64);
            }
        })),
    );
    gossip.set_local_kv(BATCH_KV, "1");
    gossip.set_local_kv(STORAGE_KV, "ok");
    let coordinator = Coordinator::new(
        name.clone(),
        replica.clone(),
        peers.clone(),
        gossip.view.clone(),
        metrics.clone(),
    )
    .with_old_answer_context(settings.old_answer_context);
    let healer = Arc::new(Healer::new(
        name.clone(),
        replica.clone(),
        peers.clone(),
        gossip.clone(),
        metrics.clone(),
        settings.healing.clone(),
    ));
    let props_sync = Arc::new(PropsSync::new(
        coordinator.clone(),
        gossip.clone(),
        settings.props_timeout,
    ));
    let storage_watch = Arc::new(StorageWatch::new(
        replica.clone(),
        gossip.clone(),
        settings.storage_exit_after,
    ));
    Ok(NodeParts {
        name,
        gossip,
        replica,
        coordinator,
        healer,
        metrics,
        props_sync,
        storage_watch,
        peers,
        send_gossip: inputs.send_gossip,
        gossip_interval: Duration::from_millis(settings.gossip.gossip_interval_ms),
        healing_interval: settings.healing.interval,
    })
}

fn replica_config(
    settings: &NodeSettings,
    actor: ActorId,
    seed: u64,
    clock: Arc<dyn WallClock>,
) -> ReplicaConfig {
    ReplicaConfig {
        actor,
        actor_seed: seed.rotate_left(31),
        ring_size: settings.gossip.cluster.ring_size,
        max_siblings: settings.max_siblings,
        max_object_bytes: crate::object::WRITE_MAX_OBJECT_BYTES,
        warn_siblings: settings.warn_siblings,
        max_hints_per_owner: settings.max_hints_per_owner,
        clock,
    }
}

/// The actor dots are minted with: the last one a retirement persisted, else the
/// identity's.
fn current_actor<S: Storage>(storage: &S, identity: ActorId) -> Result<ActorId, StorageError> {
    match storage.meta_get(ACTOR_META_KEY)? {
        Some(bytes) => {
            let bytes: [u8; 8] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| StorageError::Corrupt("the stored actor id is not 8 bytes".into()))?;
            Ok(ActorId(u64::from_be_bytes(bytes)))
        }
        None => Ok(identity),
    }
}

impl<S: Storage, P: Peers> NodeParts<S, P> {
    /// The node's background duties, named as in [`DUTIES`].
    pub fn duties(&self) -> Vec<Duty> {
        let (gossip, sink) = (self.gossip.clone(), self.send_gossip.clone());
        let healer = self.healer.clone();
        let rebuilder = self.healer.rebuilder().clone();
        let props_sync = self.props_sync.clone();
        let watch = self.storage_watch.clone();
        let (prober, probe_peers) = (self.gossip.clone(), self.peers.clone());
        vec![
            Duty::new("gossip", self.gossip_interval, move || {
                sink(gossip.tick());
                std::future::ready(())
            }),
            Duty::new("healing", self.healing_interval, move || {
                let healer = healer.clone();
                async move { healer.round().await }
            }),
            Duty::new("rebuild", self.healing_interval, move || {
                let rebuilder = rebuilder.clone();
                async move { rebuilder.step().await }
            }),
            Duty::new("props_sync", props_sync::CHECK_EVERY, move || {
                let props_sync = props_sync.clone();
                async move { props_sync.step().await }
            }),
            Duty::new("storage_watch", STORAGE_WATCH_EVERY, move || {
                watch.step();
                std::future::ready(())
            }),
            Duty::new("reach_probe", reach::PROBE_EVERY, move || {
                probe_marked(prober.clone(), probe_peers.clone())
            }),
        ]
    }

    /// Set (once) to the reason when storage stayed failed longer than
    /// `storage_exit_after`: the node should then stop so that a supervisor restarts it.
    pub fn storage_gave_up(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.storage_watch.gave_up.subscribe()
    }
}

/// One round of the `reach_probe` duty: every peer marked directly unreachable gets a
/// cheap request (the key counts of no partition: every version of the node knows it, and
/// any answer, a refusal too, proves the path) through the same peers as every call, so
/// the answer clears the mark there (`Batching`'s observer). The probes of a round run
/// together; a round ends within `PROBE_TIMEOUT`. Peers that left the ring are forgotten.
async fn probe_marked<P: Peers>(gossip: Arc<Gossip>, peers: Arc<NodePeers<P>>) {
    gossip.reach().retain(&gossip.ring_members());
    let mut probes: Vec<DutyFuture> = gossip
        .reach()
        .marked()
        .into_iter()
        .map(|peer| {
            let peers = peers.clone();
            Box::pin(async move {
                let probe = Request::KeyCounts { partitions: vec![] };
                let _ = peers.call(&peer, probe, reach::PROBE_TIMEOUT).await;
            }) as DutyFuture
        })
        .collect();
    // Polls every probe until all are done (a join without spawning a task).
    std::future::poll_fn(|cx| {
        probes.retain_mut(|probe| probe.as_mut().poll(cx).is_pending());
        match probes.is_empty() {
            true => std::task::Poll::Ready(()),
            false => std::task::Poll::Pending,
        }
    })
    .await;
}

/// Watches the storage's health: gossips `storage=failed` while it is failed (peers route
/// around the node), logs the reason at least once a minute, and gives up when the engine
/// has not come back after `exit_after` (healing rounds probe it with a durable write;
/// fjall does not recover in-process once poisoned).
struct StorageWatch<S: Storage> {
    replica: Arc<Replica<S>>,
    gossip: Arc<Gossip>,
    exit_after: Duration,
    state: Mutex<WatchState>,
    gave_up: tokio::sync::watch::Sender<Option<String>>,
}

#[derive(Default)]
struct WatchState {
    failed_since: Option<Instant>,
    logged_at: Option<Instant>,
}

impl<S: Storage> StorageWatch<S> {
    fn new(replica: Arc<Replica<S>>, gossip: Arc<Gossip>, exit_after: Duration) -> Self {
        StorageWatch {
            replica,
            gossip,
            exit_after,
            state: Mutex::default(),
            gave_up: tokio::sync::watch::channel(None).0,
        }
    }

    fn step(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(reason) = self.replica.health().failure() else {
            if state.failed_since.take().is_some() {
                self.gossip.set_local_kv(STORAGE_KV, "ok");
            }
            return;
        };
        let now = Instant::now();
        let since = *state.failed_since.get_or_insert_with(|| {
            self.gossip.set_local_kv(STORAGE_KV, "failed");
            now
        });
        if state
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= STORAGE_LOG_EVERY)
        {
            state.logged_at = Some(now);
            tracing::error!(
                failed_for_s = now.duration_since(since).as_secs(),
                "storage failed: {reason}"
            );
        }
        if now.duration_since(since) >= self.exit_after && self.gave_up.borrow().is_none() {
            tracing::error!(
                "storage did not recover in {:?}: stopping so that a supervisor restarts this node",
                self.exit_after
            );
            self.gave_up.send_replace(Some(reason));
        }
    }
}

#[cfg(test)]
mod tests;

//! `chorus start`: the running node. Validates its configuration, binds its ports, opens
//! storage, then runs the gossip loop, the QUIC request handler and the HTTP API until
//! SIGTERM/SIGINT (flush and exit 0) or until the cluster refuses it (exit 2).
//!
//! This is the thin tokio shell: protocol decisions live in `chorus-gossip` (membership),
//! `coordinator` and `replica`; this module only moves their messages and keeps the
//! coordinator's view of the ring in step with membership.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use chorus_gossip::{ClusterConfig, Config as GossipConfig, Outgoing, PhiConfig};

use crate::causality::ActorId;
use crate::cli::{CliError, CliResult, StartArgs, SyncArg};
use crate::coordinator::{Coordinator, Peers};
use crate::healing::{Healer, HealingConfig};
use crate::membership::Gossip;
use crate::metrics::{Metrics, PeerLabels};
use crate::replica::{Replica, ReplicaConfig};
use crate::rpc::{self, Message, Request, Response};
use crate::storage::{FjallStorage, Storage, SyncMode};
use crate::transport::{self, QuicTransport, Security};

/// How long a gossip message may take to send before it is dropped (gossip repeats).
const GOSSIP_SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest node name; names appear in every gossip digest.
const MAX_NAME_LEN: usize = 64;
const IDENTITY_META_KEY: &str = "identity";

/// Limits the HTTP layer enforces.
pub struct Limits {
    pub max_value: usize,
    pub default_timeout: Duration,
}

/// What a data directory remembers about the node that owns it.
#[derive(Serialize, Deserialize)]
struct Identity {
    name: String,
    actor: u64,
    n: usize,
    ring_size: u32,
    generation: u64,
}

pub struct Node {
    pub name: String,
    pub limits: Limits,
    pub coordinator: Coordinator<FjallStorage, QuicPeers>,
    pub replica: Arc<Replica<FjallStorage>>,
    pub gossip: Arc<Gossip>,
    pub metrics: Arc<Metrics>,
    pub healer: Arc<Healer<FjallStorage, QuicPeers>>,
    /// `--sync always`: replica writes wait for fsync, so they run on the blocking pool.
    writes_block: bool,
    transport: Arc<QuicTransport>,
    /// Notified when the node should stop on its own (it has left the cluster).
    stop: tokio::sync::Notify,
}

pub fn run(args: StartArgs) -> CliResult {
    validate(&args)?;
    init_logging();
    let security = match (&args.certs, args.insecure) {
        (Some(dir), _) => Security::Cluster(crate::certs::load(dir).map_err(CliError::usage)?),
        (None, true) => {
            tracing::warn!("--insecure: node-to-node traffic is not authenticated; anyone who reaches {} can join and read data", args.listen);
            Security::Insecure
        }
        (None, false) => {
            return Err(CliError::usage(
                "node-to-node traffic needs the cluster credential: run `chorus certs init --dir ./cluster-certs`, copy it to every node and pass --certs ./cluster-certs (or --insecure for a throwaway test)",
            ))
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::usage(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(serve(args, security))
}

fn validate(args: &StartArgs) -> CliResult {
    let name_ok = !args.name.is_empty()
        && args.name.len() <= MAX_NAME_LEN
        && args
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !name_ok {
        return Err(CliError::usage(format!(
            "--name '{}' must be 1..={MAX_NAME_LEN} characters of letters, digits, '-', '_' or '.'",
            args.name
        )));
    }
    if args.n == 0 {
        return Err(CliError::usage("--n must be at least 1"));
    }
    if !args.ring_size.is_power_of_two() || args.ring_size > chorus_ring::MAX_RING_SIZE {
        return Err(CliError::usage(format!(
            "--ring-size must be a power of two up to {}, got {}",
            chorus_ring::MAX_RING_SIZE,
            args.ring_size
        )));
    }
    if args.max_value == 0 || args.max_value > transport::MAX_MESSAGE_BYTES / 4 {
        return Err(CliError::usage(format!(
            "--max-value must be in 1..={}",
            transport::MAX_MESSAGE_BYTES / 4
        )));
    }
    if args.max_siblings == 0 || args.warn_siblings == 0 {
        return Err(CliError::usage(
            "--max-siblings and --warn-siblings must be at least 1",
        ));
    }
    if [
        args.timeout_ms,
        args.gossip_interval_ms,
        args.sync_interval_ms,
        args.healing_interval_ms,
    ]
    .contains(&0)
    {
        return Err(CliError::usage("--timeout-ms, --gossip-interval-ms, --sync-interval-ms and --healing-interval-ms must be at least 1"));
    }
    if !(args.phi_threshold.is_finite() && args.phi_threshold > 0.0) {
        return Err(CliError::usage("--phi-threshold must be a positive number"));
    }
    if args.listen.port() == 0 || args.http.port() == 0 {
        return Err(CliError::usage(
            "--listen and --http need explicit ports (other nodes must know them)",
        ));
    }
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn serve(args: StartArgs, security: Security) -> CliResult {
    // Ports first: a busy port must fail before anything is written to the data directory.
    let transport = QuicTransport::bind(args.listen, security).map_err(CliError::usage)?;
    let http_listener = tokio::net::TcpListener::bind(args.http)
        .await
        .map_err(|e| CliError::usage(format!("cannot listen on {} (HTTP): {e}", args.http)))?;
    let resp = crate::resp::prepare(&args).await.map_err(CliError::usage)?;
    let sync = match args.sync {
        SyncArg::Periodic => SyncMode::Periodic {
            interval_ms: args.sync_interval_ms,
        },
        SyncArg::Always => SyncMode::Always,
    };
    let storage = Arc::new(
        FjallStorage::open_with(
            &args.data,
            sync,
            args.cache_mb * 1024 * 1024,
            args.memtable_mb.max(1) * 1024 * 1024,
        )
        .map_err(|e| {
            CliError::usage(format!(
                "cannot open data directory {}: {e}",
                args.data.display()
            ))
        })?,
    );
    let identity = load_identity(storage.as_ref(), &args)?;
    tracing::info!(name = %args.name, generation = identity.generation, listen = %args.listen, http = %args.http, data = %args.data.display(), "starting");

    let metrics = Arc::new(Metrics::default());
    let mut gossip_config = GossipConfig::new(
        args.name.clone(),
        args.listen.to_string(),
        identity.generation,
        ClusterConfig {
            n: args.n,
            ring_size: args.ring_size,
        },
        args.seeds
            .iter()
            .filter(|s| **s != args.listen)
            .map(ToString::to_string)
            .collect(),
    );
    gossip_config.gossip_interval_ms = args.gossip_interval_ms;
    gossip_config.phi = PhiConfig {
        threshold: args.phi_threshold,
        ..gossip_config.phi
    };
    let gossip = Arc::new(Gossip::new(
        gossip_config,
        args.ring_size,
        args.n,
        rand::rng().random(),
    ));
    let replica = Arc::new(
        Replica::new(
            storage.clone(),
            ReplicaConfig {
                actor: current_actor(storage.as_ref(), &identity)?,
                actor_seed: rand::rng().random(),
                ring_size: args.ring_size,
                max_siblings: args.max_siblings,
                warn_siblings: args.warn_siblings,
                max_hints_per_owner: args.max_hints_per_owner,
            },
            metrics.clone(),
        )
        .map_err(|e| {
            CliError::usage(format!(
                "cannot open data directory {}: {e}",
                args.data.display()
            ))
        })?,
    );
    let peers = Arc::new(QuicPeers {
        transport: transport.clone(),
        gossip: gossip.clone(),
    });
    let writes_block = args.sync == SyncArg::Always;
    let coordinator = Coordinator::new(
        args.name.clone(),
        replica.clone(),
        peers.clone(),
        gossip.view.clone(),
        metrics.clone(),
    )
    .with_blocking_local_writes(writes_block);
    let healer = Arc::new(Healer::new(
        args.name.clone(),
        replica.clone(),
        peers.clone(),
        gossip.clone(),
        metrics.clone(),
        HealingConfig {
            interval: Duration::from_millis(args.healing_interval_ms),
            tombstone_grace: Duration::from_millis(args.tombstone_grace_ms),
            ..HealingConfig::default()
        },
    ));
    let node = Arc::new(Node {
        name: args.name.clone(),
        limits: Limits {
            max_value: args.max_value,
            default_timeout: Duration::from_millis(args.timeout_ms),
        },
        coordinator,
        replica,
        gossip: gossip.clone(),
        metrics,
        writes_block,
        healer: healer.clone(),
        transport: transport.clone(),
        stop: tokio::sync::Notify::new(),
    });
    tokio::spawn(healer.run());
    if let Some(resp) = resp {
        tokio::spawn(crate::resp::serve(resp, node.clone()));
    }

    tokio::spawn(
        transport
            .clone()
            .serve(Arc::new(RpcHandler { node: node.clone() })),
    );
    tokio::spawn(gossip_loop(
        node.clone(),
        Duration::from_millis(args.gossip_interval_ms),
    ));

    let router = crate::http::router(node.clone());
    let mut rejected = gossip.rejected.subscribe();
    let stopping = node.clone();
    let stop = async move {
        tokio::select! {
            reason = rejected.wait_for(Option::is_some) => reason.ok().and_then(|r| r.clone()),
            _ = shutdown_signal() => None,
            _ = stopping.stop.notified() => None,
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Option<String>>();
    let http = axum::serve(http_listener, router).with_graceful_shutdown(async move {
        let reason = stop.await;
        let _ = stop_tx.send(reason);
    });
    tracing::info!("serving HTTP on {} and QUIC on {}", args.http, args.listen);
    if let Err(e) = http.await {
        tracing::error!("HTTP server failed: {e}");
    }
    let reason = stop_rx.await.ok().flatten();
    tracing::info!("stopping: flushing storage");
    if let Err(e) = storage.flush() {
        tracing::error!("flushing storage failed: {e}");
    }
    transport.close().await;
    match reason {
        Some(reason) => Err(CliError::usage(format!(
            "the cluster refused this node: {reason}"
        ))),
        None => Ok(()),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Reads (or, for a new data directory, creates) the node's identity and bumps its
/// generation. The generation is at least the wall clock in ms so that a node whose data
/// directory was wiped still outranks its previous incarnation in gossip.
/// The actor id minted dots use: the last one `retire_actor` persisted, else the identity's.
fn current_actor(storage: &FjallStorage, identity: &Identity) -> Result<ActorId, CliError> {
    match storage.meta_get(crate::replica::ACTOR_META_KEY) {
        Ok(Some(bytes)) => {
            let bytes: [u8; 8] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| CliError::usage("the stored actor id is corrupt"))?;
            Ok(ActorId(u64::from_be_bytes(bytes)))
        }
        Ok(None) => Ok(ActorId(identity.actor)),
        Err(e) => Err(CliError::usage(format!("cannot read the actor id: {e}"))),
    }
}

fn load_identity(storage: &FjallStorage, args: &StartArgs) -> Result<Identity, CliError> {
    let storage_error = |e: crate::storage::StorageError| {
        CliError::usage(format!("data directory {}: {e}", args.data.display()))
    };
    let stored: Option<Identity> =
        match storage.meta_get(IDENTITY_META_KEY).map_err(storage_error)? {
            Some(bytes) => Some(rmp_serde::from_slice(&bytes).map_err(|e| {
                CliError::usage(format!(
                    "data directory {} has an unreadable identity: {e}",
                    args.data.display()
                ))
            })?),
            None => None,
        };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let identity = match stored {
        Some(id) if id.name != args.name => {
            return Err(CliError::usage(format!(
                "data directory {} belongs to node '{}', not '{}'",
                args.data.display(),
                id.name,
                args.name
            )))
        }
        Some(id) if id.n != args.n || id.ring_size != args.ring_size => {
            return Err(CliError::usage(format!(
                "data directory {} was created with --n {} --ring-size {}; this start asked for --n {} --ring-size {}",
                args.data.display(),
                id.n,
                id.ring_size,
                args.n,
                args.ring_size
            )))
        }
        Some(id) => Identity { generation: (id.generation + 1).max(now_ms), ..id },
        None => Identity {
            name: args.name.clone(),
            actor: rand::rng().random(),
            n: args.n,
            ring_size: args.ring_size,
            generation: now_ms.max(1),
        },
    };
    let bytes = rmp_serde::to_vec(&identity).expect("encoding to a Vec cannot fail");
    storage
        .meta_put(IDENTITY_META_KEY, &bytes)
        .map_err(storage_error)?;
    Ok(identity)
}

async fn gossip_loop(node: Arc<Node>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let out = node.gossip.tick();
        send_gossip(&node.transport, out);
    }
}

fn send_gossip(transport: &Arc<QuicTransport>, out: Vec<Outgoing>) {
    for Outgoing { to, message } in out {
        let Ok(addr) = to.parse::<SocketAddr>() else {
            tracing::warn!(%to, "gossip peer has an invalid address");
            continue;
        };
        let bytes = rpc::encode(Message::Gossip(message));
        let transport = transport.clone();
        tokio::spawn(async move {
            if let Err(e) = transport.send(addr, &bytes, GOSSIP_SEND_TIMEOUT).await {
                tracing::debug!("gossip to {addr} failed: {e}");
            }
        });
    }
}

impl Node {
    pub fn status_json(&self) -> Value {
        let view = self.coordinator.view();
        let members: Vec<Value> = self
            .gossip
            .members()
            .into_iter()
            .map(|m| {
                json!({
                    "name": m.name,
                    "address": m.address,
                    "state": m.state.to_string(),
                    "phi": if m.phi.is_finite() { m.phi } else { f64::MAX },
                    "generation": m.generation,
                    "heartbeat": m.heartbeat,
                    "heartbeat_age_ms": m.heartbeat_age_ms,
                    "ring_share": view.ring.share(&m.name),
                    "reachable": !view.unreachable.contains(&m.name),
                    "kv": m.kv,
                    "is_self": m.is_self,
                })
            })
            .collect();
        json!({
            "node": self.name,
            "n": view.ring.n(),
            "ring_size": view.ring.ring_size(),
            "members": members,
            "transfers": self.healer.transfer_progress().into_iter().map(|(p, keys)| json!({"partition": p, "keys_left": keys})).collect::<Vec<_>>(),
        })
    }

    pub fn refresh_phi_metrics(&self) {
        for m in self.gossip.members() {
            if !m.is_self {
                self.metrics
                    .phi
                    .get_or_create(&PeerLabels { peer: m.name })
                    .set(m.phi.min(1e9));
            }
        }
    }

    /// Starts leaving: the node drops out of the ring, so ownership transfer hands every
    /// partition to its new owners; once nothing is left here it announces `left` and stops.
    pub async fn leave(self: &Arc<Self>) -> Result<(), String> {
        if self
            .gossip
            .members()
            .iter()
            .any(|m| m.is_self && m.state != chorus_gossip::MemberState::Alive)
        {
            return Err(format!("{} is already leaving", self.name));
        }
        self.gossip.step(|m, _, _| {
            m.leave();
            Vec::new()
        });
        tracing::info!("leaving the cluster: handing data over to the new owners");
        let node = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            loop {
                ticker.tick().await;
                let storage = node.replica.storage();
                let empty = storage.partitions().map(|p| p.is_empty()).unwrap_or(false)
                    && storage.hint_owners().map(|h| h.is_empty()).unwrap_or(false);
                if empty {
                    break;
                }
            }
            node.gossip.step(|m, _, _| {
                m.left();
                Vec::new()
            });
            tracing::info!("handoff complete: left the cluster");
            // Let a few gossip rounds carry the news before stopping.
            tokio::time::sleep(Duration::from_secs(3)).await;
            node.stop.notify_one();
        });
        Ok(())
    }

    pub fn remove(&self, name: &str) -> Result<(), String> {
        let mut result = Ok(());
        self.gossip.step(|m, _, _| {
            result = m.remove(name).map_err(|e| e.to_string());
            Vec::new()
        });
        result
    }
}

/// Reaches other nodes' replicas by name over QUIC.
pub struct QuicPeers {
    transport: Arc<QuicTransport>,
    gossip: Arc<Gossip>,
}

impl Peers for QuicPeers {
    async fn call(
        &self,
        to: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, String> {
        let address = self
            .gossip
            .address_of(to)
            .ok_or_else(|| format!("no address known for {to}"))?;
        let addr: SocketAddr = address
            .parse()
            .map_err(|_| format!("{to} has an invalid address {address}"))?;
        let bytes = self
            .transport
            .request(addr, &rpc::encode(Message::Request(request)), timeout)
            .await
            .map_err(|e| e.to_string())?;
        match rpc::decode(&bytes)? {
            Message::Response(response) => Ok(response),
            other => Err(format!("{to} answered with {other:?}")),
        }
    }
}

struct RpcHandler {
    node: Arc<Node>,
}

impl transport::Handler for RpcHandler {
    async fn request(&self, from: SocketAddr, body: Vec<u8>) -> Vec<u8> {
        let response = match rpc::decode(&body) {
            Ok(Message::Request(request))
                if self.node.writes_block && !matches!(request, Request::Get { .. }) =>
            {
                let replica = self.node.replica.clone();
                tokio::task::spawn_blocking(move || replica.handle(request))
                    .await
                    .unwrap_or_else(|e| Response::Failed(format!("replica task failed: {e}")))
            }
            Ok(Message::Request(request)) => self.node.replica.handle(request),
            Ok(other) => Response::Failed(format!("expected a request, got {other:?}")),
            Err(e) => {
                tracing::warn!(%from, "{e}");
                Response::Failed(e)
            }
        };
        rpc::encode(Message::Response(response))
    }

    async fn oneway(&self, from: SocketAddr, body: Vec<u8>) {
        match rpc::decode(&body) {
            Ok(Message::Gossip(message)) => {
                let out = self.node.gossip.handle(&from.to_string(), message);
                send_gossip(&self.node.transport, out);
            }
            Ok(other) => tracing::warn!(%from, "unexpected one-way message {other:?}"),
            Err(e) => tracing::warn!(%from, "{e}"),
        }
    }
}

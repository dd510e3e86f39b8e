//! `chorus start`: the wiring of a running node. Validates its [`config::NodeConfig`],
//! binds its ports, opens storage, builds the [`node::Node`], then runs the gossip loop,
//! the QUIC request handler ([`peers`]) and the HTTP API ([`http`]) until SIGTERM/SIGINT
//! (flush and exit 0) or until the cluster refuses it ([`config::StartError::Refused`]).
//!
//! This is the thin tokio shell: protocol decisions live in `chorus-core` and
//! `chorus-gossip`; this module only connects them to ports and disks. `http` and `peers`
//! import `node`, never this module.

pub mod certs;
pub mod config;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod history;
pub mod http;
pub mod http_common;
pub mod http_keys;
pub mod http_props;
pub mod http_server;
pub mod node;
pub mod peers;
pub mod resp;
pub mod rpc_handler;
pub mod transport;
pub mod ui;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::{Deserialize, Serialize};

use chorus_core::assembly::{assemble, NodeInputs, NodeParts, NodeSettings};
use chorus_core::causality::ActorId;
use chorus_core::healing::HealingConfig;
use chorus_core::rebuild::RebuildConfig;
use chorus_core::storage::{FjallStorage, Storage};
use chorus_gossip::{ClusterConfig, Config as GossipConfig, PhiConfig};

use crate::server::config::{NodeConfig, StartError};
use crate::server::node::{AdminAuth, Limits, Node};
use crate::server::peers::{send_gossip, QuicPeers};
use crate::server::rpc_handler::RpcHandler;
use crate::server::transport::{QuicTransport, Security};

const IDENTITY_META_KEY: &str = "identity";
/// File descriptors kept out of reach of client connections: fjall's table files, its
/// journals, the QUIC socket, logs.
const FD_RESERVE: u64 = chorus_core::storage::MAX_OPEN_TABLE_FILES as u64 + 128;
/// A node that cannot take this many client connections refuses to start.
const MIN_HTTP_CONNECTIONS: u64 = 16;

/// What a data directory remembers about the node that owns it.
#[derive(Serialize, Deserialize)]
struct Identity {
    name: String,
    actor: u64,
    n: usize,
    ring_size: u32,
    generation: u64,
}

pub fn run(config: NodeConfig) -> Result<(), StartError> {
    config.validate()?;
    init_logging();
    let admin = match &config.certs {
        Some(dir) => {
            match crate::server::certs::load_admin_token(dir).map_err(StartError::config)? {
                Some(token) => AdminAuth::Token(token),
                None => AdminAuth::Missing(dir.clone()),
            }
        }
        None => AdminAuth::Open,
    };
    let security = match (&config.certs, config.insecure) {
        (Some(dir), _) => Security::Cluster(crate::server::certs::load(dir).map_err(StartError::config)?),
        (None, true) => {
            tracing::warn!("--insecure: node-to-node traffic is not authenticated; anyone who reaches {} can join and read data", config.listen);
            Security::Insecure
        }
        (None, false) => {
            return Err(StartError::config(
                "node-to-node traffic needs the cluster credential: run `chorus certs init --dir ./cluster-certs`, copy it to every node and pass --certs ./cluster-certs (or --insecure for a throwaway test)",
            ))
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError::config(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(serve(config, security, admin))
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

async fn serve(config: NodeConfig, security: Security, admin: AdminAuth) -> Result<(), StartError> {
    // Ports first: a busy port must fail before anything is written to the data directory.
    let ports = Ports::bind(&config, security).await?;
    let storage = open_storage(&config)?;
    let journal_damage = check_journal(&storage, &config)?;
    let (identity, fresh) = load_identity(storage.as_ref(), &config)?;
    tracing::info!(name = %config.name, generation = identity.generation, fresh, listen = %config.listen, http = %config.http, data = %config.data.display(), "starting");
    let parts = assemble_node(&config, &identity, fresh, storage.clone(), &ports.transport)?;
    prepare_replica(&parts, &config, journal_damage.is_some())?;
    if let AdminAuth::Missing(dir) = &admin {
        tracing::warn!("{} has no {}: /admin calls (leave, remove) are refused; make a credential with one using `chorus certs init --force`", dir.display(), crate::server::certs::ADMIN_TOKEN);
    }
    let duties = parts.duties();
    let storage_gave_up = parts.storage_gave_up();
    let node = Arc::new(Node::new(
        parts,
        admin,
        node_limits(&config),
        ports.transport.clone(),
    ));
    node.gossip
        .set_local_kv(ui::HTTP_KV, &config.http.to_string());
    // Subscribed before the gossip duty runs, so no generation taken in-process is missed.
    tokio::spawn(persist_generations(
        storage.clone(),
        identity,
        node.gossip.reincarnated.subscribe(),
    ));
    for duty in duties {
        tokio::spawn(duty.run());
    }
    tokio::spawn(ui::sample_loop(node.clone()));
    tokio::spawn(node::warn_while_not_ready(node.clone()));
    tokio::spawn(node::hand_over_when_removed(node.clone()));
    if let Some(resp) = ports.resp {
        tokio::spawn(resp::serve(resp, node.clone()));
    }
    let transport = ports.transport;
    tokio::spawn(
        transport
            .clone()
            .serve(Arc::new(RpcHandler { node: node.clone() })),
    );
    tracing::info!(
        max_connections = ports.http_limits.max_connections,
        "serving HTTP on {} and QUIC on {}",
        config.http,
        config.listen
    );
    let stop = serve_http(node, ports.http, ports.http_limits, storage_gave_up).await;
    tracing::info!("stopping: flushing storage");
    if let Err(e) = storage.flush() {
        tracing::error!("flushing storage failed: {e}");
    }
    transport.close().await;
    match stop {
        Stop::Asked => Ok(()),
        Stop::Refused(reason) => Err(StartError::Refused(reason)),
        Stop::StorageFailed(reason) => Err(StartError::StorageFailed(reason)),
    }
}

/// The node's listening ports, bound before anything touches the data directory.
struct Ports {
    transport: Arc<QuicTransport>,
    http: tokio::net::TcpListener,
    http_limits: crate::server::http_server::HttpLimits,
    resp: Option<resp::Prepared>,
}

impl Ports {
    async fn bind(config: &NodeConfig, security: Security) -> Result<Ports, StartError> {
        let transport = QuicTransport::bind(config.listen, security).map_err(StartError::config)?;
        let http = tokio::net::TcpListener::bind(config.http)
            .await
            .map_err(|e| {
                StartError::config(format!("cannot listen on {} (HTTP): {e}", config.http))
            })?;
        Ok(Ports {
            transport,
            http,
            http_limits: http_limits(config)?,
            resp: resp::prepare(config.resp.as_ref(), resp_limits(config))
                .await
                .map_err(StartError::config)?,
        })
    }
}

fn resp_limits(config: &NodeConfig) -> resp::NodeLimits<'_> {
    resp::NodeLimits {
        name: &config.name,
        n: config.n,
        max_value: config.max_value,
        timeout: Duration::from_millis(config.timeout_ms),
    }
}

fn open_storage(config: &NodeConfig) -> Result<Arc<FjallStorage>, StartError> {
    let storage = FjallStorage::open_with(
        &config.data,
        config.sync,
        config.cache_mb * 1024 * 1024,
        config.memtable_mb * 1024 * 1024,
    )
    .map_err(|e| {
        let hint = match e {
            chorus_core::storage::StorageError::Corrupt(_) => "; if its journal is damaged, move the directory aside and start with --repair to rebuild it from the peers",
            _ => "",
        };
        StartError::config(format!(
            "cannot open data directory {}: {e}{hint}",
            config.data.display()
        ))
    })?;
    Ok(Arc::new(storage))
}

/// The core's one assembly, over fjall and QUIC.
fn assemble_node(
    config: &NodeConfig,
    identity: &Identity,
    fresh: bool,
    storage: Arc<FjallStorage>,
    transport: &Arc<QuicTransport>,
) -> Result<NodeParts<FjallStorage, QuicPeers>, StartError> {
    let (to_peers, to_gossip) = (transport.clone(), transport.clone());
    let inputs = NodeInputs {
        storage,
        peers: Box::new(move |gossip| {
            Arc::new(QuicPeers {
                transport: to_peers,
                gossip: gossip.clone(),
            })
        }),
        send_gossip: Arc::new(move |out| send_gossip(&to_gossip, out)),
        clock: chorus_core::clock::SystemClock::shared(),
        identity_actor: ActorId(identity.actor),
        seed: rand::rng().random(),
    };
    assemble(&node_settings(config, identity.generation, fresh), inputs).map_err(|e| {
        StartError::config(format!(
            "cannot open data directory {}: {e}",
            config.data.display()
        ))
    })
}

fn node_settings(config: &NodeConfig, generation: u64, fresh_identity: bool) -> NodeSettings {
    let advertised = config.advertised();
    let listen = config.listen.to_string();
    let seeds = config
        .seeds
        .iter()
        .filter(|s| **s != advertised && **s != listen);
    let cluster = ClusterConfig {
        n: config.n,
        ring_size: config.ring_size,
    };
    let mut gossip = GossipConfig::new(
        config.name.clone(),
        advertised.clone(),
        generation,
        cluster,
        seeds.cloned().collect(),
    );
    gossip.gossip_interval_ms = config.gossip_interval_ms;
    gossip.fresh_identity = fresh_identity;
    gossip.phi = PhiConfig {
        threshold: config.phi_threshold,
        ..gossip.phi
    };
    NodeSettings {
        gossip,
        max_siblings: config.max_siblings,
        warn_siblings: config.warn_siblings,
        max_hints_per_owner: config.max_hints_per_owner,
        healing: HealingConfig {
            interval: Duration::from_millis(config.healing_interval_ms),
            tombstone_grace: Duration::from_millis(config.tombstone_grace_ms),
            rebuild: RebuildConfig {
                bytes_per_s: config.rebuild_bytes_per_s,
                streams: config.rebuild_streams,
            },
            ..HealingConfig::default()
        },
        props_timeout: Duration::from_millis(config.timeout_ms),
        storage_exit_after: Duration::from_millis(config.storage_failure_exit_ms),
        old_answer_context: old_answer_context(),
    }
}

#[cfg(feature = "fault-injection")]
fn old_answer_context() -> bool {
    fault::old_answer_context()
}

#[cfg(not(feature = "fault-injection"))]
fn old_answer_context() -> bool {
    false
}

fn node_limits(config: &NodeConfig) -> Limits {
    Limits {
        max_value: config.max_value,
        default_timeout: Duration::from_millis(config.timeout_ms),
        body_timeout: Duration::from_millis(config.http_body_timeout_ms),
    }
}

/// Counts journal damage in the metrics and starts `--repair` when asked.
fn prepare_replica(
    parts: &NodeParts<FjallStorage, QuicPeers>,
    config: &NodeConfig,
    journal_damaged: bool,
) -> Result<(), StartError> {
    parts
        .metrics
        .journal_damaged
        .set(i64::from(journal_damaged));
    if config.repair && !parts.replica.is_repairing() {
        parts
            .replica
            .begin_repair()
            .map_err(|e| StartError::config(format!("cannot start the repair: {e}")))?;
    }
    Ok(())
}

/// Why a node stops.
enum Stop {
    /// SIGTERM/SIGINT, or the node left the cluster.
    Asked,
    /// The cluster refuses this node.
    Refused(String),
    /// Storage stayed failed past `--storage-failure-exit-ms`.
    StorageFailed(String),
}

/// Serves the HTTP API until the node is asked to stop, the cluster refuses it, or its
/// storage gives up.
async fn serve_http(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    limits: crate::server::http_server::HttpLimits,
    mut storage_gave_up: tokio::sync::watch::Receiver<Option<String>>,
) -> Stop {
    let mut rejected = node.gossip.rejected.subscribe();
    let stopping = node.clone();
    let stop = async move {
        tokio::select! {
            reason = rejected.wait_for(Option::is_some) => match reason.ok().and_then(|r| r.clone()) {
                Some(reason) => Stop::Refused(reason),
                None => Stop::Asked,
            },
            reason = storage_gave_up.wait_for(Option::is_some) => match reason.ok().and_then(|r| r.clone()) {
                Some(reason) => Stop::StorageFailed(reason),
                None => Stop::Asked,
            },
            _ = shutdown_signal() => Stop::Asked,
            _ = stopping.stop.notified() => Stop::Asked,
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Stop>();
    let router = crate::server::http::router(node.clone());
    crate::server::http_server::serve(listener, router, limits, node.metrics.clone(), async move {
        let _ = stop_tx.send(stop.await);
    })
    .await;
    stop_rx.await.unwrap_or(Stop::Asked)
}

/// The client port's limits: `--http-max-connections`, lowered to what the file
/// descriptor limit (raised to its hard limit) allows after [`FD_RESERVE`].
fn http_limits(config: &NodeConfig) -> Result<crate::server::http_server::HttpLimits, StartError> {
    let budget =
        crate::server::http_server::connection_budget(FD_RESERVE).map_err(StartError::config)?;
    if budget < MIN_HTTP_CONNECTIONS {
        return Err(StartError::config(format!(
            "the file descriptor limit (ulimit -n) leaves {budget} for client connections after {FD_RESERVE} kept for storage; raise it to at least {}",
            FD_RESERVE + MIN_HTTP_CONNECTIONS
        )));
    }
    let max_connections = (config.http_max_connections as u64).min(budget) as usize;
    if max_connections < config.http_max_connections {
        tracing::warn!(
            "--http-max-connections {} lowered to {max_connections}: the file descriptor limit keeps {FD_RESERVE} for storage",
            config.http_max_connections
        );
    }
    Ok(crate::server::http_server::HttpLimits {
        max_connections,
        header_timeout: Duration::from_millis(config.http_header_timeout_ms),
    })
}

/// Refuses a store whose journal lost fsynced writes unless `--repair`; runs before
/// anything is written, since the next fsync moves the journal mark on.
fn check_journal(
    storage: &FjallStorage,
    config: &NodeConfig,
) -> Result<Option<String>, StartError> {
    let damage = storage.journal_damage().map(str::to_string);
    if let Some(damage) = &damage {
        if !config.repair {
            return Err(StartError::config(format!(
                "data directory {}: {damage}. Start with --repair to serve anyway: the node then answers no read from its own replica until anti-entropy has compared every partition it owns with the other owners",
                config.data.display()
            )));
        }
        tracing::error!("{damage}; --repair: this node answers no read from its own replica until anti-entropy has repaired it from the other owners");
    }
    Ok(damage)
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
/// generation; `true` with a new identity. The generation is at least the wall clock in ms
/// so that a node whose data directory was wiped usually outranks its previous incarnation
/// in gossip; when that incarnation's clock ran ahead, the new identity makes the
/// membership take the predecessor's generation plus one instead (`fresh_identity`).
fn load_identity(
    storage: &FjallStorage,
    config: &NodeConfig,
) -> Result<(Identity, bool), StartError> {
    let storage_error = |e: chorus_core::storage::StorageError| {
        StartError::config(format!("data directory {}: {e}", config.data.display()))
    };
    let stored: Option<Identity> =
        match storage.meta_get(IDENTITY_META_KEY).map_err(storage_error)? {
            Some(bytes) => Some(rmp_serde::from_slice(&bytes).map_err(|e| {
                StartError::config(format!(
                    "data directory {} has an unreadable identity: {e}",
                    config.data.display()
                ))
            })?),
            None => None,
        };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let fresh = stored.is_none();
    let identity = match stored {
        Some(id) if id.name != config.name => {
            return Err(StartError::config(format!(
                "data directory {} belongs to node '{}', not '{}'",
                config.data.display(),
                id.name,
                config.name
            )))
        }
        Some(id) if id.n != config.n || id.ring_size != config.ring_size => {
            return Err(StartError::config(format!(
                "data directory {} was created with --n {} --ring-size {}; this start asked for --n {} --ring-size {}",
                config.data.display(),
                id.n,
                id.ring_size,
                config.n,
                config.ring_size
            )))
        }
        Some(id) => Identity { generation: (id.generation + 1).max(now_ms), ..id },
        None => Identity {
            name: config.name.clone(),
            actor: rand::rng().random(),
            n: config.n,
            ring_size: config.ring_size,
            generation: now_ms.max(1),
        },
    };
    store_identity(storage, &identity).map_err(storage_error)?;
    Ok((identity, fresh))
}

fn store_identity(
    storage: &FjallStorage,
    identity: &Identity,
) -> Result<(), chorus_core::storage::StorageError> {
    let bytes = rmp_serde::to_vec(identity).expect("encoding to a Vec cannot fail");
    storage.meta_put(IDENTITY_META_KEY, &bytes)
}

/// Stores every generation the membership takes in-process, so the next start goes past
/// it (a restart reusing it would be taken for a stale copy, or for the tombstone of a
/// node that handed over and left).
async fn persist_generations(
    storage: Arc<FjallStorage>,
    mut identity: Identity,
    mut reincarnated: tokio::sync::watch::Receiver<Option<u64>>,
) {
    while reincarnated.changed().await.is_ok() {
        let Some(generation) = *reincarnated.borrow_and_update() else {
            continue;
        };
        identity.generation = generation;
        if let Err(e) = store_identity(&storage, &identity) {
            tracing::error!(generation, "cannot store the node's new generation: {e}; restart it only after its record is forgotten, or it may be taken for a stale copy");
        }
    }
}

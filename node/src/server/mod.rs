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
pub mod http;
pub mod http_keys;
pub mod http_props;
pub mod http_server;
pub mod node;
pub mod peers;
pub mod resp;
pub mod transport;
pub mod ui;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::{Deserialize, Serialize};

use chorus_core::batching::{Batching, BATCH_KV};
use chorus_core::causality::ActorId;
use chorus_core::coordinator::Coordinator;
use chorus_core::healing::{Healer, HealingConfig};
use chorus_core::membership::Gossip;
use chorus_core::metrics::Metrics;
use chorus_core::rebuild::RebuildConfig;
use chorus_core::replica::{Replica, ReplicaConfig};
use chorus_core::storage::{FjallStorage, Storage};
use chorus_gossip::{ClusterConfig, Config as GossipConfig, PhiConfig};

use crate::server::config::{NodeConfig, StartError};
use crate::server::node::{send_gossip, AdminAuth, Limits, Node};
use crate::server::peers::{QuicPeers, RpcHandler};
use crate::server::transport::{QuicTransport, Security};

const IDENTITY_META_KEY: &str = "identity";
/// File descriptors kept out of reach of client connections: fjall's table files, its
/// journals, the QUIC socket, logs.
const FD_RESERVE: u64 = chorus_core::storage::MAX_OPEN_TABLE_FILES as u64 + 128;
/// A node that cannot take this many client connections refuses to start.
const MIN_HTTP_CONNECTIONS: u64 = 16;
/// Gossiped key under which a node says whether its storage works (`ok` or `failed`);
/// peers route around a node whose storage failed (see `chorus_core::membership`).
use chorus_core::membership::STORAGE_KV;
/// While storage is failed, the reason is logged again this often.
const STORAGE_LOG_EVERY: Duration = Duration::from_secs(60);

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
    let transport = QuicTransport::bind(config.listen, security).map_err(StartError::config)?;
    let http_listener = tokio::net::TcpListener::bind(config.http)
        .await
        .map_err(|e| StartError::config(format!("cannot listen on {} (HTTP): {e}", config.http)))?;
    let http_limits = http_limits(&config)?;
    let resp = resp::prepare(&config).await.map_err(StartError::config)?;
    let sync = config.sync;
    let storage = Arc::new(
        FjallStorage::open_with(
            &config.data,
            sync,
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
        })?,
    );
    let journal_damage = check_journal(&storage, &config)?;
    let identity = load_identity(storage.as_ref(), &config)?;
    tracing::info!(name = %config.name, generation = identity.generation, listen = %config.listen, http = %config.http, data = %config.data.display(), "starting");

    let metrics = Arc::new(Metrics::default());
    let mut gossip_config = GossipConfig::new(
        config.name.clone(),
        config.listen.to_string(),
        identity.generation,
        ClusterConfig {
            n: config.n,
            ring_size: config.ring_size,
        },
        config
            .seeds
            .iter()
            .filter(|s| **s != config.listen)
            .map(ToString::to_string)
            .collect(),
    );
    gossip_config.gossip_interval_ms = config.gossip_interval_ms;
    gossip_config.phi = PhiConfig {
        threshold: config.phi_threshold,
        ..gossip_config.phi
    };
    let gossip = Arc::new(Gossip::new(
        gossip_config,
        config.ring_size,
        config.n,
        rand::rng().random(),
    ));
    let replica = Arc::new(
        Replica::new(
            storage.clone(),
            ReplicaConfig {
                actor: current_actor(storage.as_ref(), &identity)?,
                actor_seed: rand::rng().random(),
                ring_size: config.ring_size,
                max_siblings: config.max_siblings,
                max_object_bytes: chorus_core::object::WRITE_MAX_OBJECT_BYTES,
                warn_siblings: config.warn_siblings,
                max_hints_per_owner: config.max_hints_per_owner,
                clock: chorus_core::clock::SystemClock::shared(),
            },
            metrics.clone(),
        )
        .map_err(|e| {
            StartError::config(format!(
                "cannot open data directory {}: {e}",
                config.data.display()
            ))
        })?,
    );
    metrics
        .journal_damaged
        .set(i64::from(journal_damage.is_some()));
    if config.repair && !replica.is_repairing() {
        replica
            .begin_repair()
            .map_err(|e| StartError::config(format!("cannot start the repair: {e}")))?;
    }
    if let AdminAuth::Missing(dir) = &admin {
        tracing::warn!("{} has no {}: /admin calls (leave, remove) are refused; make a credential with one using `chorus certs init --force`", dir.display(), crate::server::certs::ADMIN_TOKEN);
    }
    let quic = Arc::new(QuicPeers {
        transport: transport.clone(),
        gossip: gossip.clone(),
    });
    let batch_capable = gossip.clone();
    let peers = Arc::new(Batching::new(
        quic,
        Box::new(move |peer| batch_capable.kv_is(peer, BATCH_KV, "1")),
        &metrics,
    ));
    gossip.set_local_kv(BATCH_KV, "1");
    let coordinator = Coordinator::new(
        config.name.clone(),
        replica.clone(),
        peers.clone(),
        gossip.view.clone(),
        metrics.clone(),
    );
    #[cfg(feature = "fault-injection")]
    let coordinator = coordinator.with_old_answer_context(fault::old_answer_context());
    let healer = Arc::new(Healer::new(
        config.name.clone(),
        replica.clone(),
        peers.clone(),
        gossip.clone(),
        metrics.clone(),
        HealingConfig {
            interval: Duration::from_millis(config.healing_interval_ms),
            tombstone_grace: Duration::from_millis(config.tombstone_grace_ms),
            rebuild: RebuildConfig {
                bytes_per_s: config.rebuild_bytes_per_s,
                streams: config.rebuild_streams,
            },
            ..HealingConfig::default()
        },
    ));
    let node = Arc::new(Node {
        name: config.name.clone(),
        admin,
        limits: Limits {
            max_value: config.max_value,
            default_timeout: Duration::from_millis(config.timeout_ms),
            body_timeout: Duration::from_millis(config.http_body_timeout_ms),
        },
        coordinator,
        replica,
        gossip: gossip.clone(),
        metrics,
        healer: healer.clone(),
        transport: transport.clone(),
        stop: tokio::sync::Notify::new(),
        storage_exit: std::sync::Mutex::new(None),
        history: std::sync::Mutex::default(),
    });
    node.gossip
        .set_local_kv(ui::HTTP_KV, &config.http.to_string());
    tokio::spawn(ui::sample_loop(node.clone()));
    let props_sync = chorus_core::bucket_props::PropsSync::new(
        node.coordinator.clone(),
        node.gossip.clone(),
        node.limits.default_timeout,
    );
    tokio::spawn(props_sync.run());
    tokio::spawn(healer.run());
    tokio::spawn(storage_watchdog(
        node.clone(),
        Duration::from_millis(config.storage_failure_exit_ms),
    ));
    if let Some(resp) = resp {
        tokio::spawn(resp::serve(resp, node.clone()));
    }

    tokio::spawn(
        transport
            .clone()
            .serve(Arc::new(RpcHandler { node: node.clone() })),
    );
    tokio::spawn(gossip_loop(
        node.clone(),
        Duration::from_millis(config.gossip_interval_ms),
    ));

    let router = crate::server::http::router(node.clone());
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
    tracing::info!(
        max_connections = http_limits.max_connections,
        "serving HTTP on {} and QUIC on {}",
        config.http,
        config.listen
    );
    crate::server::http_server::serve(
        http_listener,
        router,
        http_limits,
        node.metrics.clone(),
        async move {
            let reason = stop.await;
            let _ = stop_tx.send(reason);
        },
    )
    .await;
    let reason = stop_rx.await.ok().flatten();
    tracing::info!("stopping: flushing storage");
    if let Err(e) = storage.flush() {
        tracing::error!("flushing storage failed: {e}");
    }
    transport.close().await;
    let storage_exit = node
        .storage_exit
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(failure) = storage_exit {
        return Err(StartError::StorageFailed(failure));
    }
    match reason {
        Some(reason) => Err(StartError::Refused(reason)),
        None => Ok(()),
    }
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

/// Watches the storage's health once a second. On a failure it gossips it, logs the
/// reason at least once a minute, and when the engine has not come back after
/// `exit_after` (healing rounds probe it with a durable write; fjall does not recover
/// in-process once poisoned), stops the node, which then exits with code 3
/// ([`StartError::StorageFailed`]).
async fn storage_watchdog(node: Arc<Node>, exit_after: Duration) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut failed_since: Option<tokio::time::Instant> = None;
    let mut logged_at = tokio::time::Instant::now();
    node.gossip.set_local_kv(STORAGE_KV, "ok");
    loop {
        ticker.tick().await;
        let Some(reason) = node.replica.health().failure() else {
            if failed_since.take().is_some() {
                node.gossip.set_local_kv(STORAGE_KV, "ok");
            }
            continue;
        };
        let now = tokio::time::Instant::now();
        let since = *failed_since.get_or_insert_with(|| {
            node.gossip.set_local_kv(STORAGE_KV, "failed");
            logged_at = now;
            now
        });
        if now.duration_since(logged_at) >= STORAGE_LOG_EVERY {
            logged_at = now;
            tracing::error!(
                failed_for_s = now.duration_since(since).as_secs(),
                "storage still failed: {reason}"
            );
        }
        if now.duration_since(since) >= exit_after {
            tracing::error!("storage did not recover in {exit_after:?}: stopping so that a supervisor restarts this node");
            *node
                .storage_exit
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
            node.stop.notify_one();
            return;
        }
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
fn current_actor(storage: &FjallStorage, identity: &Identity) -> Result<ActorId, StartError> {
    match storage.meta_get(chorus_core::replica::ACTOR_META_KEY) {
        Ok(Some(bytes)) => {
            let bytes: [u8; 8] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| StartError::config("the stored actor id is corrupt"))?;
            Ok(ActorId(u64::from_be_bytes(bytes)))
        }
        Ok(None) => Ok(ActorId(identity.actor)),
        Err(e) => Err(StartError::config(format!("cannot read the actor id: {e}"))),
    }
}

fn load_identity(storage: &FjallStorage, config: &NodeConfig) -> Result<Identity, StartError> {
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

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
/// Highest `--n`: replication beyond this buys no durability a cluster needs and makes
/// every quorum wait on that many replicas.
pub const MAX_N: usize = 16;
/// Longest node name; names appear in every gossip digest.
const MAX_NAME_LEN: usize = 64;
const IDENTITY_META_KEY: &str = "identity";

/// Limits the HTTP layer enforces.
pub struct Limits {
    pub max_value: usize,
    pub default_timeout: Duration,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
}

/// File descriptors kept out of reach of client connections: fjall's table files, its
/// journals, the QUIC socket, logs.
const FD_RESERVE: u64 = crate::storage::MAX_OPEN_TABLE_FILES as u64 + 128;
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

/// Who may call `/admin/*` (leave, remove).
pub enum AdminAuth {
    /// Requests carrying `Authorization: Bearer <token>` (the credential's admin.token).
    Token(String),
    /// The credential has no admin token: admin calls are refused, saying how to make one.
    Missing(std::path::PathBuf),
    /// `--insecure`: anyone who reaches the QUIC port can join anyway, so admin calls are
    /// open too (a throwaway test setup).
    Open,
}

pub struct Node {
    pub name: String,
    pub admin: AdminAuth,
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
    /// Set when the node stops because its storage failed and did not recover.
    storage_exit: std::sync::Mutex<Option<String>>,
}

pub fn run(args: StartArgs) -> CliResult {
    validate(&args)?;
    init_logging();
    let admin = match &args.certs {
        Some(dir) => match crate::certs::load_admin_token(dir).map_err(CliError::usage)? {
            Some(token) => AdminAuth::Token(token),
            None => AdminAuth::Missing(dir.clone()),
        },
        None => AdminAuth::Open,
    };
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
    runtime.block_on(serve(args, security, admin))
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
    if !(1..=MAX_N).contains(&args.n) {
        return Err(CliError::usage(format!(
            "--n must be in 1..={MAX_N}, got {}",
            args.n
        )));
    }
    if !args.ring_size.is_power_of_two() || args.ring_size > chorus_ring::MAX_RING_SIZE {
        return Err(CliError::usage(format!(
            "--ring-size must be a power of two up to {}, got {}",
            chorus_ring::MAX_RING_SIZE,
            args.ring_size
        )));
    }
    validate_object_limits(args)?;
    for (flag, value, max) in [
        ("--timeout-ms", args.timeout_ms, crate::http::MAX_TIMEOUT_MS),
        ("--gossip-interval-ms", args.gossip_interval_ms, 60_000),
        ("--sync-interval-ms", args.sync_interval_ms, 60_000),
        ("--healing-interval-ms", args.healing_interval_ms, 3_600_000),
        (
            "--storage-failure-exit-ms",
            args.storage_failure_exit_ms,
            3_600_000,
        ),
        (
            "--http-header-timeout-ms",
            args.http_header_timeout_ms,
            600_000,
        ),
        ("--http-body-timeout-ms", args.http_body_timeout_ms, 600_000),
        (
            "--http-max-connections",
            args.http_max_connections as u64,
            1 << 20,
        ),
        ("--cache-mb", args.cache_mb, 1 << 20),
        ("--memtable-mb", args.memtable_mb, 4096),
    ] {
        if !(1..=max).contains(&value) {
            return Err(CliError::usage(format!(
                "{flag} must be in 1..={max}, got {value}"
            )));
        }
    }
    if !(args.phi_threshold.is_finite() && args.phi_threshold > 0.0 && args.phi_threshold <= 1000.0)
    {
        return Err(CliError::usage(
            "--phi-threshold must be a positive number up to 1000",
        ));
    }
    if args.listen.port() == 0 || args.http.port() == 0 {
        return Err(CliError::usage(
            "--listen and --http need explicit ports (other nodes must know them)",
        ));
    }
    Ok(())
}

/// `--max-value` and `--max-siblings` against the hard limits and each other: a key at both
/// limits must still fit the write limit of one object (half a node-to-node message), or it
/// could never be replicated.
fn validate_object_limits(args: &StartArgs) -> CliResult {
    use crate::object::{object_bytes_at_limits, WRITE_MAX_OBJECT_BYTES, WRITE_MAX_SIBLINGS};
    if args.max_value == 0 {
        return Err(CliError::usage("--max-value must be at least 1"));
    }
    if !(1..=WRITE_MAX_SIBLINGS).contains(&args.max_siblings) || args.warn_siblings == 0 {
        return Err(CliError::usage(format!(
            "--max-siblings must be in 1..={WRITE_MAX_SIBLINGS} (half the hard limit of {}, leaving room for concurrent writers), got {}; --warn-siblings must be at least 1",
            crate::causality::MAX_SIBLINGS,
            args.max_siblings
        )));
    }
    let bytes = object_bytes_at_limits(args.max_value, args.max_siblings);
    if bytes > WRITE_MAX_OBJECT_BYTES {
        let fits = (1..=args.max_siblings)
            .rev()
            .find(|&s| object_bytes_at_limits(args.max_value, s) <= WRITE_MAX_OBJECT_BYTES);
        return Err(CliError::usage(format!(
            "--max-value {} with --max-siblings {} allows keys of {bytes} bytes, over the limit of {WRITE_MAX_OBJECT_BYTES} that fits node-to-node messages: lower one of them{}",
            args.max_value,
            args.max_siblings,
            fits.map(|s| format!(" (at this --max-value, --max-siblings {s} fits)")).unwrap_or_default()
        )));
    }
    Ok(())
}

/// The client port's limits: `--http-max-connections`, lowered to what the file
/// descriptor limit (raised to its hard limit) allows after [`FD_RESERVE`].
fn http_limits(args: &StartArgs) -> Result<crate::http_server::HttpLimits, CliError> {
    let budget = crate::http_server::connection_budget(FD_RESERVE).map_err(CliError::usage)?;
    if budget < MIN_HTTP_CONNECTIONS {
        return Err(CliError::usage(format!(
            "the file descriptor limit (ulimit -n) leaves {budget} for client connections after {FD_RESERVE} kept for storage; raise it to at least {}",
            FD_RESERVE + MIN_HTTP_CONNECTIONS
        )));
    }
    let max_connections = (args.http_max_connections as u64).min(budget) as usize;
    if max_connections < args.http_max_connections {
        tracing::warn!(
            "--http-max-connections {} lowered to {max_connections}: the file descriptor limit keeps {FD_RESERVE} for storage",
            args.http_max_connections
        );
    }
    Ok(crate::http_server::HttpLimits {
        max_connections,
        header_timeout: Duration::from_millis(args.http_header_timeout_ms),
    })
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

async fn serve(args: StartArgs, security: Security, admin: AdminAuth) -> CliResult {
    // Ports first: a busy port must fail before anything is written to the data directory.
    let transport = QuicTransport::bind(args.listen, security).map_err(CliError::usage)?;
    let http_listener = tokio::net::TcpListener::bind(args.http)
        .await
        .map_err(|e| CliError::usage(format!("cannot listen on {} (HTTP): {e}", args.http)))?;
    let http_limits = http_limits(&args)?;
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
            args.memtable_mb * 1024 * 1024,
        )
        .map_err(|e| {
            let hint = match e {
                crate::storage::StorageError::Corrupt(_) => "; if its journal is damaged, move the directory aside and start with --repair to rebuild it from the peers",
                _ => "",
            };
            CliError::usage(format!(
                "cannot open data directory {}: {e}{hint}",
                args.data.display()
            ))
        })?,
    );
    // Before anything is written: the next fsync moves the journal mark on.
    let journal_damage = storage.journal_damage().map(str::to_string);
    if let Some(damage) = &journal_damage {
        if !args.repair {
            return Err(CliError::usage(format!(
                "data directory {}: {damage}. Start with --repair to serve anyway: the node then answers no read from its own replica until anti-entropy has compared every partition it owns with the other owners",
                args.data.display()
            )));
        }
        tracing::error!("{damage}; --repair: this node answers no read from its own replica until anti-entropy has repaired it from the other owners");
    }
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
                max_object_bytes: crate::object::WRITE_MAX_OBJECT_BYTES,
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
    metrics
        .journal_damaged
        .set(i64::from(journal_damage.is_some()));
    if args.repair && !replica.is_repairing() {
        replica
            .begin_repair()
            .map_err(|e| CliError::usage(format!("cannot start the repair: {e}")))?;
    }
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
    if let AdminAuth::Missing(dir) = &admin {
        tracing::warn!("{} has no {}: /admin calls (leave, remove) are refused; make a credential with one using `chorus certs init --force`", dir.display(), crate::certs::ADMIN_TOKEN);
    }
    let node = Arc::new(Node {
        name: args.name.clone(),
        admin,
        limits: Limits {
            max_value: args.max_value,
            default_timeout: Duration::from_millis(args.timeout_ms),
            body_timeout: Duration::from_millis(args.http_body_timeout_ms),
        },
        coordinator,
        replica,
        gossip: gossip.clone(),
        metrics,
        writes_block,
        healer: healer.clone(),
        transport: transport.clone(),
        stop: tokio::sync::Notify::new(),
        storage_exit: std::sync::Mutex::new(None),
    });
    tokio::spawn(storage_watchdog(
        node.clone(),
        Duration::from_millis(args.storage_failure_exit_ms),
    ));
    tokio::spawn(healer.run());

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
    tracing::info!(
        max_connections = http_limits.max_connections,
        "serving HTTP on {} and QUIC on {}",
        args.http,
        args.listen
    );
    crate::http_server::serve(
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
    if let Some(failure) = node
        .storage_exit
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(CliError {
            code: STORAGE_FAILED_EXIT,
            message: format!("storage failed and did not recover: {failure}; restart the node (the journal is replayed)"),
        });
    }
    match reason {
        Some(reason) => Err(CliError::usage(format!(
            "the cluster refused this node: {reason}"
        ))),
        None => Ok(()),
    }
}

/// Exit code of a node whose storage failed for good: a supervisor should restart it.
pub const STORAGE_FAILED_EXIT: u8 = 3;
/// Gossiped key under which a node says whether its storage works (`ok` or `failed`);
/// peers route around a node whose storage failed (see `membership`).
pub const STORAGE_KV: &str = crate::membership::STORAGE_KV;
/// While storage is failed, the reason is logged again this often.
const STORAGE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Watches the storage's health once a second. On a failure it gossips it, probes for
/// recovery with a durable write, logs the reason at least once a minute, and when the
/// engine has not come back after `exit_after` (fjall does not recover in-process once
/// poisoned), stops the node, which then exits with [`STORAGE_FAILED_EXIT`].
async fn storage_watchdog(node: Arc<Node>, exit_after: Duration) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut failed_since: Option<tokio::time::Instant> = None;
    let mut logged_at = tokio::time::Instant::now();
    node.gossip.set_local_kv(STORAGE_KV, "ok");
    loop {
        ticker.tick().await;
        let Some(reason) = node.replica.health().failure() else {
            continue;
        };
        let now = tokio::time::Instant::now();
        let since = *failed_since.get_or_insert_with(|| {
            node.gossip.set_local_kv(STORAGE_KV, "failed");
            logged_at = now;
            now
        });
        let probe = node.replica.clone();
        if tokio::task::spawn_blocking(move || probe.probe_storage())
            .await
            .unwrap_or(false)
        {
            failed_since = None;
            node.gossip.set_local_kv(STORAGE_KV, "ok");
            continue;
        }
        if now.duration_since(logged_at) >= STORAGE_LOG_EVERY {
            logged_at = now;
            tracing::error!(
                failed_for_s = now.duration_since(since).as_secs(),
                "storage still failed: {reason}"
            );
        }
        if now.duration_since(since) >= exit_after {
            tracing::error!("storage did not recover in {exit_after:?}: stopping so that a supervisor restarts this node");
            *node.storage_exit.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
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
            "repairing": self.replica.is_repairing(),
            "storage_failure": self.replica.health().failure(),
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

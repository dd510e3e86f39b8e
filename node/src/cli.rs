//! The `chorus` command line: every subcommand and flag, parsed with clap.
//! This module only describes the interface; `main.rs` dispatches to the modules that do
//! the work, so `chorus --help` is the single source of truth for flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use chorus_core::storage::SyncMode;

use crate::server::config::{NodeConfig, StartError};
use crate::server::resp::RespSettings;

#[derive(Parser, Debug)]
#[command(
    name = "chorus",
    version,
    about = "chorus: a leaderless, Dynamo-style replicated key-value store",
    long_about = "chorus: a leaderless, Dynamo-style replicated key-value store.\n\n\
        Start a local cluster with `chorus dev`, then `chorus put b k v` and `chorus get b k`."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node.
    Start(StartArgs),
    /// Start a local cluster (one child process per node) and stop it on Ctrl-C.
    Dev(DevArgs),
    /// Manage the cluster credential for node-to-node (QUIC) authentication.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Store a value.
    Put(PutArgs),
    /// Read a value (every sibling when writes were concurrent). Exit code 1 when not found.
    Get(GetArgs),
    /// Delete a key (writes a tombstone).
    Delete(DeleteArgs),
    /// List a bucket's live keys, one per line, a page at a time (--all: every page).
    Keys(KeysArgs),
    /// Show the cluster's members as one node sees them.
    Status(ClientArgs),
    /// Placement: owners of a key, and the placement simulator.
    #[command(subcommand)]
    Ring(RingCommand),
    /// Bucket properties: per-bucket defaults for r, w, pr, pw and max_siblings.
    #[command(subcommand)]
    Bucket(BucketCommand),
    /// Ask a node to hand its data over and leave the cluster.
    Leave(AdminArgs),
    /// Drop a dead node from the cluster.
    Remove(RemoveArgs),
    /// Closed-loop (or open-loop with --rate) load generator with latency percentiles.
    Bench(BenchArgs),
    /// Check a chaos run: lost acknowledged writes, phantom values, divergent replicas,
    /// availability and latency per fault phase, session guarantees (see scripts/chaos).
    Check(CheckArgs),
    /// The chaos workload: random gets, puts and deletes over every node, each recorded
    /// with its outcome in a history file (used by scripts/chaos).
    #[command(hide = true)]
    ChaosClient(ChaosClientArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ChaosClientArgs {
    /// Comma-separated node URLs; every operation goes to one chosen at random.
    #[arg(long, value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    /// How long to run, e.g. 60s.
    #[arg(long, default_value = "30s")]
    pub duration: String,
    /// Concurrent sessions; each is one client with its own contexts and clock of what it saw.
    #[arg(long, default_value_t = 8)]
    pub sessions: usize,
    /// Keys in the workload (k0..k{keys-1}); few keys make concurrent writes and siblings.
    #[arg(long, default_value_t = 50)]
    pub keys: u64,
    #[arg(long, default_value_t = 0.5)]
    pub read_ratio: f64,
    #[arg(long, default_value_t = 0.1)]
    pub delete_ratio: f64,
    /// Fraction of writes that carry the context of this session's last read of the key.
    #[arg(long, default_value_t = 0.7)]
    pub context_ratio: f64,
    /// Client-side limit per request, e.g. 5s: past it the outcome is unknown.
    #[arg(long, default_value = "3s")]
    pub timeout: String,
    #[arg(long)]
    pub r: Option<String>,
    #[arg(long)]
    pub w: Option<String>,
    #[arg(long, default_value = "chaos")]
    pub bucket: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Total operations per second over all sessions (0: as fast as the cluster answers).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// The history file to write (JSON lines).
    #[arg(long)]
    pub history: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// The run directory: reads history.jsonl and faults.jsonl there, writes report.md and summary.json.
    #[arg(long)]
    pub dir: PathBuf,
    /// The history to check (default: DIR/history.jsonl).
    #[arg(long)]
    pub history: Option<PathBuf>,
    /// Comma-separated node URLs whose final replica states (/local/kv) are read.
    #[arg(long, value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    /// How long to wait for replicas to converge before counting divergent keys, e.g. 60s.
    #[arg(long, default_value = "60s")]
    pub converge_timeout: String,
    /// The bucket the workload used.
    #[arg(long, default_value = "chaos")]
    pub bucket: String,
}

#[derive(Args, Debug, Clone)]
pub struct StartArgs {
    /// This node's name, unique in the cluster.
    #[arg(long)]
    pub name: String,
    /// QUIC (UDP) address for all node-to-node traffic. A wildcard (0.0.0.0:7000, [::]:7000)
    /// needs --advertise.
    #[arg(long)]
    pub listen: SocketAddr,
    /// The QUIC address other nodes dial, HOST:PORT with an IP or a DNS name (default:
    /// --listen). Gossiped to every node; a name is resolved again on every dial.
    #[arg(long, value_parser = crate::server::config::parse_host_port)]
    pub advertise: Option<String>,
    /// Client HTTP API address (TCP).
    #[arg(long)]
    pub http: SocketAddr,
    /// Data directory (created if absent); a restart with the same directory keeps data and identity.
    #[arg(long)]
    pub data: PathBuf,
    /// Comma-separated QUIC addresses of other nodes, used to join: HOST:PORT with an IP or
    /// a DNS name (resolved again whenever the node dials a seed).
    #[arg(long, value_delimiter = ',', value_parser = crate::server::config::parse_host_port)]
    pub seeds: Vec<String>,
    /// Directory holding the cluster credential (`chorus certs init`).
    #[arg(long, conflicts_with = "insecure")]
    pub certs: Option<PathBuf>,
    /// Run without node-to-node authentication (anyone reaching the QUIC port can join).
    #[arg(long)]
    pub insecure: bool,
    /// Replication factor N, fixed per cluster.
    #[arg(long, default_value_t = 3)]
    pub n: usize,
    /// Number of ring partitions (power of two, up to 4096), fixed per cluster.
    #[arg(long, default_value_t = chorus_ring::DEFAULT_RING_SIZE)]
    pub ring_size: u32,
    /// Journal durability: `periodic` fsyncs every --sync-interval-ms; `always` acks after fsync.
    #[arg(long, value_enum, default_value_t = SyncArg::Periodic)]
    pub sync: SyncArg,
    /// Interval between journal fsyncs in periodic mode.
    #[arg(long, default_value_t = 100)]
    pub sync_interval_ms: u64,
    /// Largest value accepted, in bytes. --max-value x --max-siblings must fit half a
    /// node-to-node message (about 31 MiB), or the node refuses to start.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_value: usize,
    /// A write that would leave more siblings than this on a key is refused (409
    /// too_many_siblings); at most 2048 (half the hard limit, for concurrent writers).
    #[arg(long, default_value_t = 30)]
    pub max_siblings: usize,
    /// Log a warning when a key reaches this many siblings.
    #[arg(long, default_value_t = 10)]
    pub warn_siblings: usize,
    /// Default request timeout in milliseconds (per request: `?timeout=`), at most 60000.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Interval between gossip rounds in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub gossip_interval_ms: u64,
    /// Phi above which a peer is suspected.
    #[arg(long, default_value_t = 8.0)]
    pub phi_threshold: f64,
    /// Hints a fallback keeps per unreachable owner; beyond it anti-entropy repairs the owner.
    #[arg(long, default_value_t = 100_000)]
    pub max_hints_per_owner: u64,
    /// Interval between healing rounds (hint delivery, ownership transfer, anti-entropy, reaping).
    #[arg(long, default_value_t = 1000)]
    pub healing_interval_ms: u64,
    /// How long a tombstone held by every owner waits before it is reaped.
    #[arg(long, default_value_t = 600_000)]
    pub tombstone_grace_ms: u64,
    /// Bytes per second this node pulls when it streams whole partitions from other owners
    /// (rebuilding a wiped or far-behind replica), all streams together.
    #[arg(long, default_value_t = chorus_core::rebuild::DEFAULT_BYTES_PER_S)]
    pub rebuild_bytes_per_s: u64,
    /// Partitions this node streams at once while rebuilding.
    #[arg(long, default_value_t = chorus_core::rebuild::DEFAULT_STREAMS)]
    pub rebuild_streams: usize,
    /// Most client HTTP connections open at once; one more is answered 503
    /// too_many_connections. Lowered at start to what the file descriptor limit allows
    /// after keeping 640 for storage and node-to-node traffic.
    #[arg(long, default_value_t = 1024)]
    pub http_max_connections: usize,
    /// A client must send a request's headers within this long, or the connection is
    /// closed; it also closes idle keep-alive connections.
    #[arg(long, default_value_t = 10_000)]
    pub http_header_timeout_ms: u64,
    /// A client must send a request's body within this long, or it gets 408.
    #[arg(long, default_value_t = 30_000)]
    pub http_body_timeout_ms: u64,
    /// Start in repair mode: this node's data may be incomplete (its journal was damaged,
    /// or its directory was lost and starts empty), so it answers no read from its own
    /// replica until anti-entropy has compared every partition it owns with each other
    /// owner. Required to start on a journal found damaged.
    #[arg(long)]
    pub repair: bool,
    /// How long a node whose storage failed (an I/O error, a poisoned engine) keeps
    /// answering 503 and probing for recovery before it exits with code 3, so that a
    /// supervisor restarts it and the journal is replayed.
    #[arg(long, default_value_t = 10_000)]
    pub storage_failure_exit_ms: u64,
    /// Storage block cache size in MiB.
    #[arg(long, default_value_t = 64)]
    pub cache_mb: u64,
    /// Size in MiB at which the storage's in-memory write buffer (memtable) is flushed to
    /// disk. Every overwrite of a key adds an entry until the flush, so a larger buffer
    /// makes every read and write search a deeper skip list; it is also memory. Taken
    /// when the data directory is created (fjall keeps it with the keyspace).
    #[arg(long, default_value_t = 64)]
    pub memtable_mb: u64,
    /// The Redis-protocol front (`--resp ADDR` and its options).
    #[command(flatten)]
    /// Boxed: it would make `StartArgs` the one large variant of `Command`.
    pub resp: Box<RespArgs>,
}

/// `chorus start` flags of the RESP front (flattened into `StartArgs`).
#[derive(Args, Debug, Clone)]
pub struct RespArgs {
    /// Redis-protocol (RESP2/RESP3) listener address (TCP); off unless given. It binds
    /// exactly there: use 127.0.0.1 unless clients elsewhere must reach it.
    #[arg(long = "resp", id = "resp", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Require `AUTH <password>` (or `HELLO 3 AUTH default <password>`) on the RESP port,
    /// like Redis's requirepass.
    #[arg(long, requires = "resp", conflicts_with = "resp_password_file")]
    pub resp_password: Option<String>,
    /// Like --resp-password, read from the first line of this file.
    #[arg(long, requires = "resp")]
    pub resp_password_file: Option<PathBuf>,
    /// The bucket of RESP database 0; database N > 0 (`SELECT N`) is the bucket `db<N>`.
    #[arg(long, default_value = "db0")]
    pub resp_bucket: String,
    /// Read quorum of RESP commands in a bucket whose properties set no `r`: a number,
    /// one, quorum or all (`CHORUS.CONSISTENCY r=...` sets one per connection, over both).
    #[arg(long, env = "CHORUS_RESP_R", default_value = "quorum")]
    pub resp_r: String,
    /// Write quorum of RESP commands in a bucket whose properties set no `w`
    /// (`CHORUS.CONSISTENCY w=...` sets one per connection, over both).
    #[arg(long, env = "CHORUS_RESP_W", default_value = "quorum")]
    pub resp_w: String,
    /// Most RESP connections at once; one more is refused with a clear error.
    #[arg(long, default_value_t = 1024)]
    pub resp_max_connections: usize,
    /// Keys of RESP commands inside the coordinator at once, over all connections; the
    /// commands of further keys wait their turn (pipelines beyond it gain nothing).
    #[arg(long, default_value_t = 64)]
    pub resp_max_in_flight: usize,
    /// Close a RESP connection idle this many seconds (0: never, as Redis's `timeout 0`).
    #[arg(long, default_value_t = 0)]
    pub resp_idle_timeout_s: u64,
}

impl RespArgs {
    /// The RESP front's settings as plain data; None without `--resp`.
    fn settings(&self) -> Option<RespSettings> {
        Some(RespSettings {
            listen: self.listen?,
            password: self.resp_password.clone(),
            password_file: self.resp_password_file.clone(),
            bucket: self.resp_bucket.clone(),
            r: self.resp_r.clone(),
            w: self.resp_w.clone(),
            max_connections: self.resp_max_connections,
            max_in_flight: self.resp_max_in_flight,
            idle_timeout_s: self.resp_idle_timeout_s,
        })
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncArg {
    Periodic,
    Always,
}

impl StartArgs {
    /// The node's configuration as plain data: the server never sees clap's types.
    pub fn config(&self) -> NodeConfig {
        NodeConfig {
            name: self.name.clone(),
            listen: self.listen,
            advertise: self.advertise.clone(),
            http: self.http,
            data: self.data.clone(),
            seeds: self.seeds.clone(),
            certs: self.certs.clone(),
            insecure: self.insecure,
            n: self.n,
            ring_size: self.ring_size,
            sync: match self.sync {
                SyncArg::Periodic => SyncMode::Periodic {
                    interval_ms: self.sync_interval_ms,
                },
                SyncArg::Always => SyncMode::Always,
            },
            max_value: self.max_value,
            max_siblings: self.max_siblings,
            warn_siblings: self.warn_siblings,
            timeout_ms: self.timeout_ms,
            gossip_interval_ms: self.gossip_interval_ms,
            phi_threshold: self.phi_threshold,
            max_hints_per_owner: self.max_hints_per_owner,
            healing_interval_ms: self.healing_interval_ms,
            tombstone_grace_ms: self.tombstone_grace_ms,
            rebuild_bytes_per_s: self.rebuild_bytes_per_s,
            rebuild_streams: self.rebuild_streams,
            cache_mb: self.cache_mb,
            memtable_mb: self.memtable_mb,
            storage_failure_exit_ms: self.storage_failure_exit_ms,
            repair: self.repair,
            http_max_connections: self.http_max_connections,
            http_header_timeout_ms: self.http_header_timeout_ms,
            http_body_timeout_ms: self.http_body_timeout_ms,
            resp: self.resp.settings(),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Node i listens for QUIC on base+i and HTTP on base+1000+i.
    #[arg(long, default_value_t = 7000)]
    pub base_port: u16,
    /// Directory for data and the credential (default: ./chorus-dev).
    #[arg(long, default_value = "chorus-dev")]
    pub dir: PathBuf,
    /// Replication factor.
    #[arg(long, default_value_t = 3)]
    pub n: usize,
    /// Journal durability for every node.
    #[arg(long, value_enum, default_value_t = SyncArg::Periodic)]
    pub sync: SyncArg,
}

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Create a cluster CA and the node certificate signed by it in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Overwrite an existing credential.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Node to talk to.
    #[arg(long, env = "CHORUS_NODE", default_value = "http://127.0.0.1:8001")]
    pub node: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct PutArgs {
    pub bucket: String,
    pub key: String,
    /// The value; `-` reads it from stdin.
    pub value: String,
    /// Write quorum: a number, one, quorum or all.
    #[arg(long)]
    pub w: Option<String>,
    /// How many of the write acks must come from primary owners.
    #[arg(long)]
    pub pw: Option<String>,
    /// Causal context from a previous get (replaces exactly what that get saw).
    #[arg(long, conflicts_with_all = ["if_absent", "if_match"])]
    pub context: Option<String>,
    /// Create the key only if it has no live value (If-None-Match: *); else exit 1.
    #[arg(long, conflicts_with = "if_match")]
    pub if_absent: bool,
    /// Write only if the key holds nothing this context (from a get) does not cover
    /// (If-Match); else exit 1 and print the current context.
    #[arg(long, value_name = "CONTEXT")]
    pub if_match: Option<String>,
    /// Read quorum of the read a conditional write makes first.
    #[arg(long)]
    pub r: Option<String>,
    #[arg(long)]
    pub content_type: Option<String>,
    /// Time to live: seconds, or a number with ms, s, m, h or d (60s, 5m); `none` for no
    /// expiry over the bucket's default ttl.
    #[arg(long)]
    pub ttl: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug, Clone)]
pub struct KeysArgs {
    pub bucket: String,
    /// Keys per page (1..=10000).
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// Follow the cursors to the last page.
    #[arg(long)]
    pub all: bool,
    /// Start at this cursor (a previous page's `next`).
    #[arg(long)]
    pub after: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug, Clone)]
pub struct GetArgs {
    pub bucket: String,
    pub key: String,
    /// Read quorum: a number, one, quorum or all.
    #[arg(long)]
    pub r: Option<String>,
    /// How many of the replies must come from primary owners.
    #[arg(long)]
    pub pr: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Args, Debug, Clone)]
pub struct DeleteArgs {
    pub bucket: String,
    pub key: String,
    #[arg(long)]
    pub w: Option<String>,
    #[arg(long)]
    pub context: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Subcommand, Debug)]
pub enum BucketCommand {
    /// Show a bucket's properties, or change them with --set (prints the result as JSON).
    Props {
        bucket: String,
        /// `key=value` (r, w, pr, pw: a number, one, quorum or all; max_siblings: a
        /// number); `key=` resets one to the node default. Keys not named keep their value.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum RingCommand {
    /// The preference list of a key: N primary owners, then fallbacks.
    Owners {
        bucket: String,
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print placement balance and movement tables for the claim algorithm.
    Simulate {
        /// Node counts to simulate.
        #[arg(long, value_delimiter = ',', default_value = "3,5,10,50,100")]
        nodes: Vec<usize>,
        #[arg(long, default_value_t = chorus_ring::DEFAULT_RING_SIZE)]
        ring_size: u32,
        #[arg(long, default_value_t = 3)]
        n: usize,
    },
}

#[derive(Args, Debug, Clone)]
pub struct RemoveArgs {
    /// Name of the dead node to drop.
    pub name: String,
    /// Declare its data gone for good (a machine that will never return). Without it the
    /// cluster keeps the removal and reaps no tombstone until the node returns and
    /// reconciles its data, so a deleted key can never come back; with it reaping
    /// resumes, and the node must never be started again with its old data directory
    /// (wipe it first), or keys deleted meanwhile may reappear.
    #[arg(long)]
    pub data_lost: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// An admin call (`leave`, `remove`): the node, and the credential whose admin token it
/// needs.
#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The cluster credential directory (`chorus certs init`); its admin.token is sent.
    #[arg(long, env = "CHORUS_CERTS")]
    pub certs: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Comma-separated node URLs; clients are spread over them.
    #[arg(
        long,
        value_delimiter = ',',
        env = "CHORUS_NODE",
        default_value = "http://127.0.0.1:8001"
    )]
    pub nodes: Vec<String>,
    /// What to drive: chorus, etcd (v3 JSON gateway), redis (RESP), or quic-floor / bare-quinn (no
    /// server: a bare QUIC round trip in-process, `--value-size` bytes each way).
    #[arg(long, value_enum, default_value_t = BenchTarget::Chorus)]
    pub target: BenchTarget,
    /// Measured duration, e.g. 10s, 500ms, 1m.
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// Warm-up before measuring.
    #[arg(long, default_value = "1s")]
    pub warmup: String,
    /// Concurrent clients (each on its own keep-alive connection).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Open-loop: total requests per second (avoids coordinated omission). Default closed loop.
    #[arg(long)]
    pub rate: Option<u64>,
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Key distribution.
    #[arg(long, value_enum, default_value_t = KeyDistribution::Uniform)]
    pub distribution: KeyDistribution,
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Fraction of operations that are reads.
    #[arg(long, default_value_t = 0.5)]
    pub read_ratio: f64,
    /// Fraction of operations that are deletes (the rest are writes).
    #[arg(long, default_value_t = 0.0)]
    pub delete_ratio: f64,
    /// Client-side limit per request, e.g. 5s; a request past it counts as a timeout.
    #[arg(long, default_value = "5s")]
    pub timeout: String,
    #[arg(long)]
    pub r: Option<String>,
    #[arg(long)]
    pub w: Option<String>,
    /// Bucket the load uses.
    #[arg(long, default_value = "bench")]
    pub bucket: String,
    /// Seed for key and operation choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object with the results.
    #[arg(long)]
    pub json: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchTarget {
    Chorus,
    Etcd,
    Redis,
    /// No server: measures a bare QUIC request/response round trip of chorus's transport
    /// in this process (the floor under a replicated operation's CPU cost).
    QuicFloor,
    /// No server: the same round trip over quinn alone, to set chorus's transport beside.
    BareQuinn,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDistribution {
    Uniform,
    Zipfian,
    /// Every key in turn (0, 1, 2, ...), shared by all clients: loads each key once.
    Sequential,
}

/// A command's failure: the one line printed on stderr and the process exit code
/// (2 for usage and configuration errors, 1 for "not found" and request failures).
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            code: 2,
            message: message.into(),
        }
    }
    pub fn failed(message: impl Into<String>) -> Self {
        CliError {
            code: 1,
            message: message.into(),
        }
    }
}

pub type CliResult = Result<(), CliError>;

/// Exit code of a node whose storage failed and did not recover: a supervisor restarts it.
pub const STORAGE_FAILED_EXIT: u8 = 3;

/// The one place a node's start errors become exit codes: the operator's to fix (a flag,
/// a port, a data directory, the cluster refusing the node) exit 2; a storage engine that
/// failed while running exits 3, for a supervisor to restart the node.
impl From<StartError> for CliError {
    fn from(e: StartError) -> CliError {
        match e {
            StartError::StorageFailed(_) => CliError {
                code: STORAGE_FAILED_EXIT,
                message: e.to_string(),
            },
            other => CliError::usage(other.to_string()),
        }
    }
}

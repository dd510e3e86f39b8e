//! The node's configuration as plain data (built from `chorus start`'s flags by the CLI,
//! or by a test), its validation, and the one error type of starting a node.
//!
//! Must not: know about clap or exit codes (the CLI maps [`StartError`] to exit codes).

use std::net::SocketAddr;
use std::path::PathBuf;

use chorus_core::storage::SyncMode;

use crate::server::transport;

/// Longest node name; names appear in every gossip digest.
pub const MAX_NAME_LEN: usize = 64;

/// Everything a node is started with. Field meanings are the `chorus start` flags'
/// (see `chorus start --help` and the README).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub http: SocketAddr,
    pub data: PathBuf,
    pub seeds: Vec<SocketAddr>,
    pub certs: Option<PathBuf>,
    pub insecure: bool,
    pub n: usize,
    pub ring_size: u32,
    pub sync: SyncMode,
    pub max_value: usize,
    pub max_siblings: usize,
    pub warn_siblings: usize,
    pub timeout_ms: u64,
    pub gossip_interval_ms: u64,
    pub phi_threshold: f64,
    pub max_hints_per_owner: u64,
    pub healing_interval_ms: u64,
    pub tombstone_grace_ms: u64,
    pub cache_mb: u64,
    pub memtable_mb: u64,
    /// The Redis-protocol front, when `--resp` is given.
    pub resp: Option<crate::server::resp::RespSettings>,
}

/// Why a node did not start, or stopped on its own. Every variant is an operator's
/// problem to fix (a flag, a port, a data directory, the cluster's answer), so the CLI
/// maps them all to exit code 2 with the message on one line.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A flag, credential, port or data directory that cannot be used.
    #[error("{0}")]
    Config(String),
    /// The cluster refused this node (a configuration mismatch, another node's name).
    #[error("the cluster refused this node: {0}")]
    Refused(String),
}

impl StartError {
    pub fn config(message: impl Into<String>) -> StartError {
        StartError::Config(message.into())
    }
}

impl NodeConfig {
    /// Checks every flag against the hard limits and against each other, before anything
    /// is bound or written.
    pub fn validate(&self) -> Result<(), StartError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_NAME_LEN
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            return Err(StartError::config(format!(
                "--name '{}' must be 1..={MAX_NAME_LEN} characters of letters, digits, '-', '_' or '.'",
                self.name
            )));
        }
        if self.n == 0 {
            return Err(StartError::config("--n must be at least 1"));
        }
        if !self.ring_size.is_power_of_two() || self.ring_size > chorus_ring::MAX_RING_SIZE {
            return Err(StartError::config(format!(
                "--ring-size must be a power of two up to {}, got {}",
                chorus_ring::MAX_RING_SIZE,
                self.ring_size
            )));
        }
        if self.max_value == 0 || self.max_value > transport::MAX_MESSAGE_BYTES / 4 {
            return Err(StartError::config(format!(
                "--max-value must be in 1..={}",
                transport::MAX_MESSAGE_BYTES / 4
            )));
        }
        if self.max_siblings == 0 || self.warn_siblings == 0 {
            return Err(StartError::config(
                "--max-siblings and --warn-siblings must be at least 1",
            ));
        }
        if [
            self.timeout_ms,
            self.gossip_interval_ms,
            match self.sync {
                SyncMode::Periodic { interval_ms } => interval_ms,
                SyncMode::Always => 1,
            },
            self.healing_interval_ms,
        ]
        .contains(&0)
        {
            return Err(StartError::config("--timeout-ms, --gossip-interval-ms, --sync-interval-ms and --healing-interval-ms must be at least 1"));
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold > 0.0) {
            return Err(StartError::config(
                "--phi-threshold must be a positive number",
            ));
        }
        if self.listen.port() == 0 || self.http.port() == 0 {
            return Err(StartError::config(
                "--listen and --http need explicit ports (other nodes must know them)",
            ));
        }
        Ok(())
    }
}

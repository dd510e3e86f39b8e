//! The node's configuration as plain data (built from `chorus start`'s flags by the CLI,
//! or by a test), its validation, and the one error type of starting a node.
//!
//! Must not: know about clap or exit codes (the CLI maps [`StartError`] to exit codes).

use std::net::SocketAddr;
use std::path::PathBuf;

use chorus_core::storage::SyncMode;

/// Highest `--n`: replication beyond this buys no durability a cluster needs and makes
/// every quorum wait on that many replicas.
pub const MAX_N: usize = 16;

/// Longest node name; names appear in every gossip digest.
pub const MAX_NAME_LEN: usize = 64;

/// Bounds of `--rebuild-bytes-per-s` and `--rebuild-streams`.
pub const MIN_REBUILD_BYTES_PER_S: u64 = 64 * 1024;
pub const MAX_REBUILD_BYTES_PER_S: u64 = 10 * 1024 * 1024 * 1024;
pub const MAX_REBUILD_STREAMS: u64 = 16;

/// Everything a node is started with. Field meanings are the `chorus start` flags'
/// (see `chorus start --help` and docs/operating.md).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub advertise: Option<String>,
    pub http: SocketAddr,
    pub data: PathBuf,
    pub seeds: Vec<String>,
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
    pub rebuild_bytes_per_s: u64,
    pub rebuild_streams: usize,
    pub cache_mb: u64,
    pub memtable_mb: u64,
    pub storage_failure_exit_ms: u64,
    pub repair: bool,
    pub http_max_connections: usize,
    pub http_header_timeout_ms: u64,
    pub http_body_timeout_ms: u64,
    /// The Redis-protocol front, when `--resp` is given.
    pub resp: Option<crate::server::resp::RespSettings>,
}

/// Why a node did not start, or stopped on its own. `Config` and `Refused` are an
/// operator's problem to fix (a flag, a port, a data directory, the cluster's answer) and
/// exit 2; `StorageFailed` exits 3 so that a supervisor restarts the node.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A flag, credential, port or data directory that cannot be used.
    #[error("{0}")]
    Config(String),
    /// The cluster refused this node (a configuration mismatch, another node's name).
    #[error("the cluster refused this node: {0}")]
    Refused(String),
    /// The storage engine failed while running and did not recover in-process.
    #[error("storage failed and did not recover: {0}; restart the node (the journal is replayed)")]
    StorageFailed(String),
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
        if !(1..=MAX_N).contains(&self.n) {
            return Err(StartError::config(format!(
                "--n must be in 1..={MAX_N}, got {}",
                self.n
            )));
        }
        if !self.ring_size.is_power_of_two() || self.ring_size > chorus_ring::MAX_RING_SIZE {
            return Err(StartError::config(format!(
                "--ring-size must be a power of two up to {}, got {}",
                chorus_ring::MAX_RING_SIZE,
                self.ring_size
            )));
        }
        self.validate_object_limits()?;
        self.validate_ranges()?;
        if !(self.phi_threshold.is_finite()
            && self.phi_threshold > 0.0
            && self.phi_threshold <= 1000.0)
        {
            return Err(StartError::config(
                "--phi-threshold must be a positive number up to 1000",
            ));
        }
        if self.listen.port() == 0 || self.http.port() == 0 {
            return Err(StartError::config(
                "--listen and --http need explicit ports (other nodes must know them)",
            ));
        }
        if self.advertised().len() > chorus_gossip::MAX_ADDRESS_BYTES {
            return Err(StartError::config(format!(
                "--advertise is over {} bytes, longer than gossip carries",
                chorus_gossip::MAX_ADDRESS_BYTES
            )));
        }
        if self.listen.ip().is_unspecified() && self.advertise.is_none() {
            return Err(StartError::config(format!(
                "--listen {} binds every interface, so other nodes cannot dial it: add --advertise HOST:PORT with this machine's name or IP",
                self.listen
            )));
        }
        Ok(())
    }

    /// The QUIC address this node gossips for others to dial.
    pub fn advertised(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }
}

/// A node address as a flag gives it: `HOST:PORT`, the host an IP (`[v6]` in brackets) or
/// a DNS name, the port 1-65535. Names are not resolved here: the machine may not exist
/// yet, and its address may change.
pub fn parse_host_port(text: &str) -> Result<String, String> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return match address.port() {
            0 => Err(format!("'{text}': the port must be 1-65535")),
            _ => Ok(text.to_string()),
        };
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("'{text}' is not HOST:PORT"))?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    match (host_ok, port_ok) {
        (true, true) => Ok(text.to_string()),
        (false, _) => Err(format!(
            "'{text}': '{host}' is neither an IP nor a DNS name"
        )),
        (true, false) => Err(format!("'{text}': the port must be 1-65535")),
    }
}

impl NodeConfig {
    /// `--max-value` and `--max-siblings` against the hard limits and each other: a key at
    /// both limits must still fit the write limit of one object (half a node-to-node
    /// message), or it could never be replicated.
    fn validate_object_limits(&self) -> Result<(), StartError> {
        use chorus_core::object::{
            object_bytes_at_limits, WRITE_MAX_OBJECT_BYTES, WRITE_MAX_SIBLINGS,
        };
        if self.max_value == 0 {
            return Err(StartError::config("--max-value must be at least 1"));
        }
        if !(1..=WRITE_MAX_SIBLINGS).contains(&self.max_siblings) || self.warn_siblings == 0 {
            return Err(StartError::config(format!(
                "--max-siblings must be in 1..={WRITE_MAX_SIBLINGS} (half the hard limit of {}, leaving room for concurrent writers), got {}; --warn-siblings must be at least 1",
                chorus_core::causality::MAX_SIBLINGS,
                self.max_siblings
            )));
        }
        let bytes = object_bytes_at_limits(self.max_value, self.max_siblings);
        if bytes > WRITE_MAX_OBJECT_BYTES {
            let fits = (1..=self.max_siblings)
                .rev()
                .find(|&s| object_bytes_at_limits(self.max_value, s) <= WRITE_MAX_OBJECT_BYTES);
            return Err(StartError::config(format!(
                "--max-value {} with --max-siblings {} allows keys of {bytes} bytes, over the limit of {WRITE_MAX_OBJECT_BYTES} that fits node-to-node messages: lower one of them{}",
                self.max_value,
                self.max_siblings,
                fits.map(|s| format!(" (at this --max-value, --max-siblings {s} fits)")).unwrap_or_default()
            )));
        }
        Ok(())
    }

    /// Every numeric flag within 1 and a bound past which it only breaks things (a
    /// timeout of years, a zero-sized cache).
    fn validate_ranges(&self) -> Result<(), StartError> {
        let sync_interval = match self.sync {
            SyncMode::Periodic { interval_ms } => interval_ms,
            SyncMode::Always => 1,
        };
        for (flag, value, max) in [
            (
                "--timeout-ms",
                self.timeout_ms,
                crate::server::http_common::MAX_TIMEOUT_MS,
            ),
            ("--gossip-interval-ms", self.gossip_interval_ms, 60_000),
            ("--sync-interval-ms", sync_interval, 60_000),
            ("--healing-interval-ms", self.healing_interval_ms, 3_600_000),
            (
                "--storage-failure-exit-ms",
                self.storage_failure_exit_ms,
                3_600_000,
            ),
            (
                "--http-header-timeout-ms",
                self.http_header_timeout_ms,
                600_000,
            ),
            ("--http-body-timeout-ms", self.http_body_timeout_ms, 600_000),
            (
                "--http-max-connections",
                self.http_max_connections as u64,
                1 << 20,
            ),
            ("--cache-mb", self.cache_mb, 1 << 20),
            ("--memtable-mb", self.memtable_mb, 4096),
            (
                "--rebuild-streams",
                self.rebuild_streams as u64,
                MAX_REBUILD_STREAMS,
            ),
        ] {
            if !(1..=max).contains(&value) {
                return Err(StartError::config(format!(
                    "{flag} must be in 1..={max}, got {value}"
                )));
            }
        }
        self.validate_rebuild_rate()
    }

    /// `--rebuild-bytes-per-s`: at least 64 KiB/s (below it a rebuild is hardly faster
    /// than anti-entropy alone), at most 10 GiB/s.
    fn validate_rebuild_rate(&self) -> Result<(), StartError> {
        let range = MIN_REBUILD_BYTES_PER_S..=MAX_REBUILD_BYTES_PER_S;
        if !range.contains(&self.rebuild_bytes_per_s) {
            return Err(StartError::config(format!(
                "--rebuild-bytes-per-s must be in {MIN_REBUILD_BYTES_PER_S}..={MAX_REBUILD_BYTES_PER_S} (64 KiB/s to 10 GiB/s), got {}",
                self.rebuild_bytes_per_s
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_host_port;

    #[test]
    fn host_port_takes_ips_and_dns_names_and_refuses_the_rest() {
        for good in [
            "127.0.0.1:7000",
            "[::1]:7000",
            "db2:7000",
            "db-2.rack1.example:7000",
        ] {
            assert_eq!(parse_host_port(good).as_deref(), Ok(good));
        }
        for bad in [
            "db2",
            "db2:",
            ":7000",
            "db2:0",
            "db2:70000",
            "db_2:7000",
            "-db:7000",
            "a..b:7000",
            "127.0.0.1:0",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad} accepted");
        }
    }
}

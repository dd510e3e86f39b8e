//! Configuration of one membership instance and the cluster-wide settings it must agree
//! on with every peer. Owns defaults and validation; must not hold runtime state.

use serde::{Deserialize, Serialize};

use crate::error::GossipError;
use crate::phi::PhiConfig;

/// Longest member name accepted, from config or from the wire. Bounds the size of one
/// digest entry so a message budget can always hold at least one.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest member address accepted, from config or from the wire.
pub const MAX_ADDRESS_BYTES: usize = 128;
/// Smallest allowed `max_message_bytes`: room for the envelope (two names, two
/// addresses, the cluster config) and a member record with `max_kv_bytes` of key-values.
pub const MIN_MESSAGE_BYTES: usize = 4096;

/// Settings every node of a cluster must share. Part of every message: a message carrying
/// different settings is refused, never merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Replication factor (`--n`).
    pub n: usize,
    /// Number of ring partitions (`--ring-size`).
    pub ring_size: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            n: 3,
            ring_size: 64,
        }
    }
}

impl ClusterConfig {
    /// Why `other` (a peer's settings) differs from `self` (ours), phrased for the peer,
    /// or None when they agree.
    pub(crate) fn mismatch_for_peer(&self, other: &ClusterConfig) -> Option<String> {
        let mut reasons = Vec::new();
        if self.n != other.n {
            reasons.push(format!(
                "cluster replication factor is {}, this node was started with --n {}",
                self.n, other.n
            ));
        }
        if self.ring_size != other.ring_size {
            reasons.push(format!(
                "cluster ring size is {}, this node was started with --ring-size {}",
                self.ring_size, other.ring_size
            ));
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// Why `other` differs from `self`, phrased for our own log, or None.
    pub(crate) fn mismatch_for_us(&self, other: &ClusterConfig) -> Option<String> {
        let mut reasons = Vec::new();
        if self.n != other.n {
            reasons.push(format!(
                "peer runs with --n {}, this node with --n {}",
                other.n, self.n
            ));
        }
        if self.ring_size != other.ring_size {
            reasons.push(format!(
                "peer runs with --ring-size {}, this node with --ring-size {}",
                other.ring_size, self.ring_size
            ));
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

/// Configuration of one node's membership. Build with [`Config::new`] and adjust fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// This node's member name, unique in the cluster (at most [`MAX_NAME_BYTES`]).
    pub name: String,
    /// The node-to-node address peers reach this node at ("ip:port").
    pub address: String,
    /// Must grow on every restart of the node: a higher generation replaces the old
    /// incarnation everywhere.
    pub generation: u64,
    /// The settings every peer must share.
    pub cluster: ClusterConfig,
    /// Addresses contacted while this node knows no live peer; only for bootstrap.
    pub seeds: Vec<String>,
    /// How often the caller is expected to call `tick` (default 500).
    pub gossip_interval_ms: u64,
    /// Peers contacted per tick (default 3).
    pub fanout: usize,
    /// The failure detector's settings, for every member watched.
    pub phi: PhiConfig,
    /// A suspect member becomes down once phi has stayed over the threshold this long
    /// (default 2000), so one late burst of gossip does not reroute traffic.
    pub down_after_suspect_ms: u64,
    /// Upper bound on the encoded size of every message (default 60_000, under the
    /// 64 KiB a datagram or one stream frame comfortably takes). Larger deltas are sent
    /// in pieces over rounds, most-needed first.
    pub max_message_bytes: usize,
    /// Sanity bound on members known (default 1024). Records of further unknown members
    /// are ignored (counted in `Stats::members_refused`); forgotten tombstones are also
    /// kept up to this many.
    pub max_members: usize,
    /// Bound on the encoded size of one member's gossiped key-values (default 4096).
    pub max_kv_bytes: usize,
    /// Tombstoned (left or removed) members are forgotten this long after this node
    /// learned of the tombstone (default one hour). A member removed by an operator is
    /// kept until it returns or is removed with `data_lost`: its data may still come back
    /// (see `Membership::remove`).
    pub forget_left_after_ms: u64,
    /// Whether this process holds no earlier incarnation's data (its identity was made at
    /// this start, e.g. a replacement with an empty disk). Such a process, hearing a newer
    /// generation of its own name, is hearing a dead predecessor (perhaps one whose clock
    /// ran ahead) and outranks it with that generation plus one instead of stopping
    /// (default false).
    pub fresh_identity: bool,
}

impl Config {
    /// A configuration with the defaults documented on each field.
    pub fn new(
        name: impl Into<String>,
        address: impl Into<String>,
        generation: u64,
        cluster: ClusterConfig,
        seeds: Vec<String>,
    ) -> Config {
        Config {
            name: name.into(),
            address: address.into(),
            generation,
            cluster,
            seeds,
            gossip_interval_ms: 500,
            fanout: 3,
            phi: PhiConfig::default(),
            down_after_suspect_ms: 2_000,
            max_message_bytes: 60_000,
            max_members: 1024,
            max_kv_bytes: 4096,
            forget_left_after_ms: 3_600_000,
            fresh_identity: false,
        }
    }

    /// Checks every bound the protocol relies on; `Membership::new` panics on what this
    /// refuses, so a caller turning flags into a config should call it first.
    pub fn validate(&self) -> Result<(), GossipError> {
        let fail = |m: String| Err(GossipError::InvalidConfig(m));
        if self.name.is_empty() || self.name.len() > MAX_NAME_BYTES {
            return fail(format!(
                "name must be 1 to {MAX_NAME_BYTES} bytes, got {:?}",
                self.name
            ));
        }
        if self.address.is_empty() || self.address.len() > MAX_ADDRESS_BYTES {
            return fail(format!(
                "address must be 1 to {MAX_ADDRESS_BYTES} bytes, got {:?}",
                self.address
            ));
        }
        if self.cluster.n == 0 || self.cluster.ring_size == 0 {
            return fail("n and ring_size must be at least 1".into());
        }
        if self.fanout == 0 || self.gossip_interval_ms == 0 {
            return fail("fanout and gossip_interval_ms must be at least 1".into());
        }
        if self.max_message_bytes < MIN_MESSAGE_BYTES {
            return fail(format!(
                "max_message_bytes must be at least {MIN_MESSAGE_BYTES}"
            ));
        }
        if self.max_kv_bytes > self.max_message_bytes / 4 {
            return fail("max_kv_bytes must be at most a quarter of max_message_bytes".into());
        }
        if self.max_members < 2 {
            return fail("max_members must be at least 2".into());
        }
        self.phi.validate()
    }
}

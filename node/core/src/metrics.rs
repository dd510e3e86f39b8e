//! The node's Prometheus metrics (`GET /metrics`): one registry, the counters and histograms
//! every part of the node updates, and [`OpTotals`], the same request figures in a form the
//! dashboard can read back (Prometheus's histograms cannot be). Owns names and help texts;
//! computes nothing itself.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub op: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

/// Latency buckets of the request histogram: 0.1 ms doubling 18 times, then +Inf.
const LATENCY_START_S: f64 = 0.0001;
pub const LATENCY_BUCKETS: usize = 18;

/// Upper bound in seconds of latency bucket `i` (`LATENCY_BUCKETS` is +Inf).
pub fn latency_bound(i: usize) -> f64 {
    if i >= LATENCY_BUCKETS {
        f64::INFINITY
    } else {
        LATENCY_START_S * 2f64.powi(i as i32)
    }
}

/// Cumulative count of one operation's requests per latency bucket (the last is +Inf).
pub type OpBuckets = [u64; LATENCY_BUCKETS + 1];

/// Per-operation request counts by latency bucket for the HTTP `get`, `put` and `delete`,
/// cumulative since start, read by the dashboard's sampler (`server/ui`).
#[derive(Default)]
pub struct OpTotals {
    buckets: [[AtomicU64; LATENCY_BUCKETS + 1]; 3],
}

impl OpTotals {
    pub const OPS: [&'static str; 3] = ["get", "put", "delete"];

    /// Counts one request of `op` (other operations are ignored) that took `secs`.
    pub fn observe(&self, op: &str, secs: f64) {
        let Some(i) = Self::OPS.iter().position(|o| *o == op) else {
            return;
        };
        let bucket = (0..LATENCY_BUCKETS)
            .find(|&b| secs <= latency_bound(b))
            .unwrap_or(LATENCY_BUCKETS);
        self.buckets[i][bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts of `OPS[i]` so far.
    pub fn snapshot(&self, i: usize) -> OpBuckets {
        std::array::from_fn(|b| self.buckets[i][b].load(Ordering::Relaxed))
    }
}

pub struct Metrics {
    registry: Registry,
    pub ops: OpTotals,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<OpLabels, Histogram>,
    pub quorum_failures: Family<OpLabels, Counter>,
    pub read_repairs: Counter,
    pub hints_queued: Counter,
    pub rpc_batches: Counter,
    pub rpc_batched_requests: Counter,
    pub hints_delivered: Counter,
    pub hints_dropped: Counter,
    pub merges_refused: Counter,
    pub storage_failed: Gauge,
    pub storage_errors: Counter,
    pub journal_damaged: Gauge,
    pub http_connections: Gauge,
    pub http_connections_refused: Counter,
    pub repairing: Gauge,
    pub aae_exchanges: Counter,
    pub list_pages: Counter,
    pub list_keys_scanned: Counter,
    pub precondition_failed: Counter,
    pub expired_keys_reaped: Counter,
    pub reaped_bytes: Counter,
    pub rebuild_partitions_pending: Gauge,
    pub rebuild_partitions_done: Counter,
    pub rebuild_keys: Counter,
    pub rebuild_bytes: Counter,
    pub rebuild_resumed: Counter,
    pub aae_keys_repaired: Counter,
    pub aae_bytes_sent: Counter,
    pub aae_bytes_received: Counter,
    pub phi: Family<PeerLabels, Gauge<f64, AtomicU64>>,
    pub peers_unreachable_direct: Gauge,
    pub peers_marked_unreachable: Counter,
}

impl Default for Metrics {
    // One flat list of registrations, each a name and a help text: long, but split it
    // and the names would no longer read as one table.
    fn default() -> Self {
        let mut registry = Registry::with_prefix("chorus");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Client requests by operation and HTTP status",
            requests.clone(),
        );
        let latency = Family::<OpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(
                LATENCY_START_S,
                2.0,
                LATENCY_BUCKETS as u16,
            ))
        });
        registry.register(
            "request_duration_seconds",
            "Client request latency",
            latency.clone(),
        );
        let quorum_failures = Family::<OpLabels, Counter>::default();
        registry.register(
            "quorum_failures",
            "Requests answered 503 because too few replicas replied",
            quorum_failures.clone(),
        );
        let read_repairs = Counter::default();
        registry.register(
            "read_repairs",
            "Stale replicas sent the merged state after a read",
            read_repairs.clone(),
        );
        let rpc_batches = Counter::default();
        registry.register(
            "rpc_batches",
            "Messages to other replicas that carried several gets and merges",
            rpc_batches.clone(),
        );
        let rpc_batched_requests = Counter::default();
        registry.register(
            "rpc_batched_requests",
            "Gets and merges sent to other replicas inside batches",
            rpc_batched_requests.clone(),
        );
        let hints_queued = Counter::default();
        registry.register(
            "hints_queued",
            "Writes a fallback stored on behalf of an unreachable owner",
            hints_queued.clone(),
        );
        let hints_delivered = Counter::default();
        registry.register(
            "hints_delivered",
            "Hinted writes handed to their owner",
            hints_delivered.clone(),
        );
        let hints_dropped = Counter::default();
        registry.register(
            "hints_dropped",
            "Hints dropped at the bound (anti-entropy covers them)",
            hints_dropped.clone(),
        );
        let merges_refused = Counter::default();
        registry.register(
            "merges_refused",
            "Merges (replication, read repair, handoff, anti-entropy) refused or skipped because the merged state would cross a hard limit; each replica keeps its own versions",
            merges_refused.clone(),
        );
        let storage_failed = Gauge::default();
        registry.register(
            "storage_failed",
            "1 while this node's storage engine is failed (I/O error, poisoned engine): it refuses requests and /health answers 503",
            storage_failed.clone(),
        );
        let storage_errors = Counter::default();
        registry.register(
            "storage_errors",
            "Storage engine errors (I/O, corruption, a closed engine) seen by this node",
            storage_errors.clone(),
        );
        let journal_damaged = Gauge::default();
        registry.register(
            "journal_damaged",
            "1 when this node found its journal damaged or truncated at start (writes fsynced before it stopped were missing)",
            journal_damaged.clone(),
        );
        let repairing = Gauge::default();
        registry.register(
            "repairing",
            "1 while this node repairs its data from its peers (--repair): it answers no read from its own replica",
            repairing.clone(),
        );
        let http_connections = Gauge::default();
        registry.register(
            "http_connections",
            "Client HTTP connections open",
            http_connections.clone(),
        );
        let http_connections_refused = Counter::default();
        registry.register(
            "http_connections_refused",
            "Client HTTP connections refused at --http-max-connections",
            http_connections_refused.clone(),
        );
        let aae_exchanges = Counter::default();
        registry.register(
            "aae_exchanges",
            "Anti-entropy tree exchanges started",
            aae_exchanges.clone(),
        );
        let aae_keys_repaired = Counter::default();
        registry.register(
            "aae_keys_repaired",
            "Keys merged by anti-entropy",
            aae_keys_repaired.clone(),
        );
        let aae_bytes_sent = Counter::default();
        registry.register(
            "aae_bytes_sent",
            "Bytes this node sent in the anti-entropy exchanges it started",
            aae_bytes_sent.clone(),
        );
        let aae_bytes_received = Counter::default();
        registry.register(
            "aae_bytes_received",
            "Bytes this node received in the anti-entropy exchanges it started (trees and pulled objects)",
            aae_bytes_received.clone(),
        );
        let list_pages = counter(
            &mut registry,
            "list_pages",
            "Key-listing pages this node coordinated",
        );
        let list_keys_scanned = counter(
            &mut registry,
            "list_keys_scanned",
            "Stored entries this node's replica read for key listings",
        );
        let precondition_failed = counter(
            &mut registry,
            "precondition_failed",
            "Conditional writes refused with 412 (If-None-Match / If-Match did not hold)",
        );
        let expired_keys_reaped = counter(
            &mut registry,
            "expired_keys_reaped",
            "Keys whose TTL had expired that this node's replica dropped from disk",
        );
        let reaped_bytes = counter(
            &mut registry,
            "reaped_bytes",
            "Encoded bytes of dead keys (tombstones, expired values) this node's replica dropped",
        );
        let rebuild_partitions_pending = Gauge::default();
        registry.register(
            "rebuild_partitions_pending",
            "Partitions this node is rebuilding or has queued for a bulk stream from another owner",
            rebuild_partitions_pending.clone(),
        );
        let rebuild_partitions_done = counter(
            &mut registry,
            "rebuild_partitions_done",
            "Partition streams this node completed",
        );
        let rebuild_keys = counter(
            &mut registry,
            "rebuild_keys",
            "Objects this node pulled in partition streams (merged like any replica merge)",
        );
        let rebuild_bytes = counter(
            &mut registry,
            "rebuild_bytes",
            "Stored bytes (keys and objects) this node pulled in partition streams",
        );
        let rebuild_resumed = counter(
            &mut registry,
            "rebuild_resumed",
            "Partition streams resumed from a cursor persisted before this process started",
        );
        let phi = Family::<PeerLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "peer_phi",
            "Phi-accrual suspicion of each peer",
            phi.clone(),
        );
        let peers_unreachable_direct = Gauge::default();
        registry.register(
            "peers_unreachable_direct",
            "Peers this node's own calls cannot reach now (a streak of failed calls, no answer to a probe since), routed around as if down whatever gossip says",
            peers_unreachable_direct.clone(),
        );
        let peers_marked_unreachable = counter(
            &mut registry,
            "peers_marked_unreachable",
            "Times a peer was marked directly unreachable (a count that climbs while the cluster looks healthy means marks flap)",
        );
        Metrics {
            registry,
            peers_unreachable_direct,
            peers_marked_unreachable,
            ops: OpTotals::default(),
            requests,
            latency,
            quorum_failures,
            read_repairs,
            hints_queued,
            rpc_batches,
            rpc_batched_requests,
            hints_delivered,
            hints_dropped,
            merges_refused,
            storage_failed,
            storage_errors,
            journal_damaged,
            http_connections,
            http_connections_refused,
            repairing,
            aae_exchanges,
            aae_keys_repaired,
            aae_bytes_sent,
            aae_bytes_received,
            list_pages,
            list_keys_scanned,
            precondition_failed,
            expired_keys_reaped,
            reaped_bytes,
            rebuild_partitions_pending,
            rebuild_partitions_done,
            rebuild_keys,
            rebuild_bytes,
            rebuild_resumed,
            phi,
        }
    }
}

fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let counter = Counter::default();
    registry.register(name, help, counter.clone());
    counter
}

impl Metrics {
    /// Records one client request (HTTP or RESP): its count by status, its latency, a
    /// quorum failure when it answered 503, and the dashboard's totals.
    pub fn record_request(&self, op: &'static str, status: u16, secs: f64) {
        self.requests
            .get_or_create(&RequestLabels { op, status })
            .inc();
        self.latency.get_or_create(&OpLabels { op }).observe(secs);
        if status == 503 {
            self.quorum_failures.get_or_create(&OpLabels { op }).inc();
        }
        self.ops.observe(op, secs);
    }

    /// Quorum failures of `op` so far.
    pub fn quorum_failures_of(&self, op: &'static str) -> u64 {
        self.quorum_failures
            .get(&OpLabels { op })
            .map_or(0, |c| c.get())
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_totals_bucket_by_the_histogram_bounds_and_ignore_other_ops() {
        let t = OpTotals::default();
        t.observe("get", 0.00005);
        t.observe("get", 0.0001);
        t.observe("get", 0.00015);
        t.observe("put", 1e6);
        t.observe("resp_get", 0.001);
        let get = t.snapshot(0);
        assert_eq!((get[0], get[1]), (2, 1));
        assert_eq!(t.snapshot(1)[LATENCY_BUCKETS], 1);
        assert_eq!(t.snapshot(2).iter().sum::<u64>(), 0);
    }
}

//! The node's Prometheus metrics (`GET /metrics`): one registry, the counters and histograms
//! every part of the node updates. Owns names and help texts; computes nothing itself.

use std::sync::atomic::AtomicU64;

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

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<OpLabels, Histogram>,
    pub quorum_failures: Family<OpLabels, Counter>,
    pub read_repairs: Counter,
    pub hints_queued: Counter,
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
    pub aae_keys_repaired: Counter,
    pub aae_bytes_sent: Counter,
    pub aae_bytes_received: Counter,
    pub phi: Family<PeerLabels, Gauge<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("chorus");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Client requests by operation and HTTP status",
            requests.clone(),
        );
        let latency = Family::<OpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
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
        let phi = Family::<PeerLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "peer_phi",
            "Phi-accrual suspicion of each peer",
            phi.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            quorum_failures,
            read_repairs,
            hints_queued,
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
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

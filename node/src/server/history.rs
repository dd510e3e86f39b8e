//! The dashboard's recent history: one sample per second of the node's cumulative request,
//! healing and hint figures, the last [`CAPACITY`] of them, and the per-interval series the
//! charts draw (requests/s, p99 latency, quorum failures, exchanges, keys repaired, hints)
//! computed from consecutive samples.
//!
//! Pure and bounded: the caller passes each sample with its time; this module must not read
//! clocks or metrics itself, and never holds more than [`CAPACITY`] samples.

use std::collections::VecDeque;

use serde_json::{json, Map, Value};

use chorus_core::metrics::{latency_bound, OpBuckets, OpTotals};

/// Samples kept: 300 one-second intervals, five minutes.
pub const CAPACITY: usize = 301;

/// The node's cumulative figures at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Unix time of the sample in milliseconds.
    pub t_ms: u64,
    /// Requests by latency bucket, per operation of [`OpTotals::OPS`].
    pub ops: [OpBuckets; 3],
    pub quorum_failures: [u64; 3],
    pub aae_exchanges: u64,
    pub aae_keys_repaired: u64,
    pub hints_queued: u64,
    pub hints_delivered: u64,
    /// Hints this node holds right now (a level, not a count since start).
    pub hints_pending: u64,
}

#[derive(Default)]
pub struct History {
    samples: VecDeque<Sample>,
}

impl History {
    /// Keeps `sample`, dropping the oldest beyond [`CAPACITY`]. A sample older than the
    /// last one (the wall clock stepped back) restarts the history rather than drawing
    /// negative intervals.
    pub fn record(&mut self, sample: Sample) {
        if self
            .samples
            .back()
            .is_some_and(|last| last.t_ms >= sample.t_ms)
        {
            self.samples.clear();
        }
        if self.samples.len() == CAPACITY {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// One point per interval between consecutive samples, oldest first.
    pub fn series(&self) -> Vec<Value> {
        self.samples
            .iter()
            .zip(self.samples.iter().skip(1))
            .map(|(a, b)| point(a, b))
            .collect()
    }
}

/// The figures of the interval from `a` to `b`.
fn point(a: &Sample, b: &Sample) -> Value {
    let secs = (b.t_ms - a.t_ms) as f64 / 1000.0;
    let mut out = Map::new();
    out.insert("t_ms".into(), json!(b.t_ms));
    for (i, op) in OpTotals::OPS.iter().enumerate() {
        let delta: Vec<u64> = b.ops[i]
            .iter()
            .zip(&a.ops[i])
            .map(|(b, a)| b.saturating_sub(*a))
            .collect();
        let count: u64 = delta.iter().sum();
        out.insert(
            (*op).into(),
            json!({
                "rps": count as f64 / secs,
                "p99_ms": quantile(0.99, &delta).map(|s| s * 1000.0),
                "quorum_failures": b.quorum_failures[i].saturating_sub(a.quorum_failures[i]),
            }),
        );
    }
    let delta = |f: fn(&Sample) -> u64| f(b).saturating_sub(f(a));
    out.insert("aae_exchanges".into(), json!(delta(|s| s.aae_exchanges)));
    out.insert(
        "aae_keys_repaired".into(),
        json!(delta(|s| s.aae_keys_repaired)),
    );
    out.insert("hints_queued".into(), json!(delta(|s| s.hints_queued)));
    out.insert(
        "hints_delivered".into(),
        json!(delta(|s| s.hints_delivered)),
    );
    out.insert("hints_pending".into(), json!(b.hints_pending));
    Value::Object(out)
}

/// The `q` quantile in seconds of requests counted by latency bucket, interpolated
/// linearly inside its bucket as Prometheus' `histogram_quantile` does (a request in the
/// +Inf bucket counts as the largest finite bound). None without requests.
fn quantile(q: f64, counts: &[u64]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        if c > 0 && (seen + c) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { latency_bound(i - 1) };
            let upper = latency_bound(i);
            if upper.is_infinite() {
                return Some(lower);
            }
            return Some(lower + (upper - lower) * (rank - seen as f64) / c as f64);
        }
        seen += c;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::metrics::LATENCY_BUCKETS;

    fn sample(t_ms: u64, gets_in_bucket: &[(usize, u64)]) -> Sample {
        let mut s = Sample {
            t_ms,
            ..Sample::default()
        };
        for &(b, n) in gets_in_bucket {
            s.ops[0][b] = n;
        }
        s
    }

    #[test]
    fn the_history_is_bounded_and_restarts_when_time_steps_back() {
        let mut h = History::default();
        for t in 0..(CAPACITY as u64 + 50) {
            h.record(sample(1000 + t * 1000, &[]));
        }
        assert_eq!(h.samples.len(), CAPACITY);
        assert_eq!(h.series().len(), CAPACITY - 1);
        h.record(sample(5, &[]));
        assert_eq!(h.samples.len(), 1);
        assert!(h.series().is_empty());
    }

    #[test]
    fn a_point_has_rates_and_p99_from_the_interval_only() {
        let mut h = History::default();
        h.record(sample(10_000, &[(3, 1000)]));
        // 2 s later: 200 more gets, 197 in bucket 0 (<= 0.1 ms), 3 in bucket 5 (<= 3.2 ms).
        h.record(sample(12_000, &[(0, 197), (3, 1000), (5, 3)]));
        let p = &h.series()[0];
        assert_eq!(p["t_ms"], 12_000);
        assert_eq!(p["get"]["rps"], 100.0);
        let p99 = p["get"]["p99_ms"].as_f64().unwrap();
        assert!(p99 > 1.6 && p99 <= 3.2, "{p99}");
        assert_eq!(p["put"]["rps"], 0.0);
        assert!(p["put"]["p99_ms"].is_null());
    }

    #[test]
    fn quantile_of_the_infinite_bucket_is_the_largest_bound() {
        let mut counts = [0u64; LATENCY_BUCKETS + 1];
        counts[LATENCY_BUCKETS] = 3;
        assert_eq!(
            quantile(0.99, &counts),
            Some(latency_bound(LATENCY_BUCKETS - 1))
        );
        assert_eq!(quantile(0.99, &[0; 4]), None);
        assert!((quantile(0.5, &[2, 0]).unwrap() - 0.00005).abs() < 1e-12);
    }
}

//! Phi-accrual failure detector (Hayashibara et al. 2004), computed as Akka does: a
//! sliding window of heartbeat intervals, a normal distribution with a floor on its
//! standard deviation and an acceptable pause added to its mean, and the logistic
//! approximation of the normal CDF.
//!
//! Owns: the interval history and phi of one monitored member. Must not: know about
//! members, states or gossip, or read a clock (time is passed in).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::error::GossipError;

/// Settings of the phi-accrual detector.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhiConfig {
    /// Suspect a member once its phi exceeds this (Cassandra's and Akka's 8: a false
    /// positive chance of about 1e-8 if the model were exact).
    pub threshold: f64,
    /// Intervals kept (oldest dropped first).
    pub max_samples: usize,
    /// Floor on the standard deviation. Heartbeats arrive indirectly through gossip, so
    /// observed intervals bunch and spread (0 to ~1.5 s at a 500 ms interval); without
    /// a generous floor a quiet spell after a regular one would read as a failure.
    pub min_std_dev_ms: f64,
    /// Added to the mean interval: a pause this long (GC, a busy core, a lost round) is
    /// tolerated before phi climbs. Akka's default.
    pub acceptable_pause_ms: u64,
    /// Before any interval is known, assume this mean (with a quarter of it as deviation).
    pub first_heartbeat_estimate_ms: u64,
}

impl Default for PhiConfig {
    fn default() -> Self {
        PhiConfig {
            threshold: 8.0,
            max_samples: 1000,
            min_std_dev_ms: 500.0,
            acceptable_pause_ms: 3000,
            first_heartbeat_estimate_ms: 1000,
        }
    }
}

impl PhiConfig {
    pub(crate) fn validate(&self) -> Result<(), GossipError> {
        let ok = self.threshold.is_finite()
            && self.threshold > 0.0
            && self.max_samples >= 1
            && self.min_std_dev_ms.is_finite()
            && self.min_std_dev_ms > 0.0
            && self.first_heartbeat_estimate_ms >= 1;
        if ok {
            Ok(())
        } else {
            Err(GossipError::InvalidConfig(format!(
                "phi: threshold and min_std_dev_ms must be positive and finite, max_samples and first_heartbeat_estimate_ms at least 1 (got {self:?})"
            )))
        }
    }
}

/// The interval history and phi of one monitored member.
#[derive(Clone, Debug)]
pub struct PhiDetector {
    config: PhiConfig,
    intervals: VecDeque<u64>,
    // Running sums keep phi O(1); integers so adding and removing samples is exact.
    sum: u64,
    sum_sq: u128,
    last_ms: Option<u64>,
}

impl PhiDetector {
    /// A detector that has seen no heartbeat yet.
    pub fn new(config: PhiConfig) -> PhiDetector {
        PhiDetector {
            config,
            intervals: VecDeque::new(),
            sum: 0,
            sum_sq: 0,
            last_ms: None,
        }
    }

    /// Records a heartbeat seen at `now_ms`.
    pub fn heartbeat(&mut self, now_ms: u64) {
        match self.last_ms {
            None => {
                // Akka's bootstrap: two samples around the estimate, so the first phi
                // values are neither zero-variance nor wildly wide.
                let mean = self.config.first_heartbeat_estimate_ms;
                let dev = mean / 4;
                self.record(mean - dev);
                self.record(mean + dev);
            }
            Some(last) => {
                let now_ms = now_ms.max(last);
                // The first heartbeat after a failure is not a sample: a long outage
                // would skew the mean and slow every later detection (as in Akka).
                if self.phi(now_ms) < self.config.threshold {
                    self.record(now_ms - last);
                }
            }
        }
        self.last_ms = Some(now_ms.max(self.last_ms.unwrap_or(0)));
    }

    fn record(&mut self, interval: u64) {
        if self.intervals.len() == self.config.max_samples {
            let old = self
                .intervals
                .pop_front()
                .expect("window is non-empty when full");
            self.sum -= old;
            self.sum_sq -= u128::from(old) * u128::from(old);
        }
        self.intervals.push_back(interval);
        self.sum += interval;
        self.sum_sq += u128::from(interval) * u128::from(interval);
    }

    /// Suspicion level at `now_ms`: -log10 of the probability that a heartbeat still
    /// arrives after this long. 0 before the first heartbeat.
    pub fn phi(&self, now_ms: u64) -> f64 {
        let Some(last) = self.last_ms else { return 0.0 };
        let n = self.intervals.len() as f64;
        let mean = self.sum as f64 / n;
        let variance = (self.sum_sq as f64 / n - mean * mean).max(0.0);
        let std_dev = variance.sqrt().max(self.config.min_std_dev_ms);
        let elapsed = now_ms.saturating_sub(last) as f64;
        phi_of(
            elapsed,
            mean + self.config.acceptable_pause_ms as f64,
            std_dev,
        )
    }

    /// Mean of the recorded intervals, for display.
    pub fn mean_interval_ms(&self) -> Option<f64> {
        (!self.intervals.is_empty()).then(|| self.sum as f64 / self.intervals.len() as f64)
    }
}

/// Akka's `phi`: with y = (elapsed - mean) / std_dev and e = exp(-y (1.5976 + 0.070566 y^2))
/// (a logistic approximation of the normal CDF), phi = -log10(e / (1 + e)). That equals
/// log10(1 + exp(a)) with a = y (1.5976 + 0.070566 y^2); computed as a softplus it stays
/// finite where Akka's form overflows to infinity (y beyond about 20).
fn phi_of(elapsed: f64, mean: f64, std_dev: f64) -> f64 {
    let y = (elapsed - mean) / std_dev;
    let a = y * (1.5976 + 0.070566 * y * y);
    let softplus = if a > 0.0 {
        a + (-a).exp().ln_1p()
    } else {
        a.exp().ln_1p()
    };
    softplus / std::f64::consts::LN_10
}

#[cfg(test)]
mod tests {
    use std::f64::consts::LOG10_2;

    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-4, "{a} != {b}");
    }

    /// No acceptable pause and a low floor, so the bootstrap alone sets the distribution.
    fn plain() -> PhiConfig {
        PhiConfig {
            threshold: 8.0,
            max_samples: 1000,
            min_std_dev_ms: 100.0,
            acceptable_pause_ms: 0,
            first_heartbeat_estimate_ms: 1000,
        }
    }

    #[test]
    fn phi_is_zero_before_any_heartbeat() {
        assert_eq!(PhiDetector::new(plain()).phi(1_000_000), 0.0);
    }

    #[test]
    fn bootstrap_matches_hand_computed_values() {
        // Bootstrap samples 750 and 1250: mean 1000, variance ((250^2 + 250^2) / 2)
        // = 62500, std dev 250 (over the 100 floor).
        let mut d = PhiDetector::new(plain());
        d.heartbeat(10_000);
        // elapsed 1000: y = 0, a = 0, phi = log10(1 + e^0) = log10 2 = 0.30103.
        close(d.phi(11_000), LOG10_2);
        // elapsed 1500: y = 2, a = 2 (1.5976 + 0.070566 * 4) = 3.759728,
        // e^a = 42.9375, phi = log10(43.9375) = 1.64283.
        close(d.phi(11_500), 1.64283);
        // elapsed 500: y = -2, a = -3.759728, phi = log10(1 + 1/42.9375) = 0.0099988.
        close(d.phi(10_500), 0.0099988);
        // elapsed 2000: y = 4, a = 4 (1.5976 + 0.070566 * 16) = 10.906624,
        // phi = log10(1 + e^10.906624) = 4.73669.
        close(d.phi(12_000), 4.73669);
    }

    #[test]
    fn acceptable_pause_and_floor_shift_the_curve() {
        // Defaults: bootstrap mean 1000 + pause 3000 = 4000; std dev 250 is under the
        // floor, so 500. elapsed 6000: y = (6000 - 4000) / 500 = 4, phi = 4.73669 as
        // above; elapsed 7000: y = 6, a = 6 (1.5976 + 0.070566 * 36) = 24.827856,
        // phi = log10(1 + e^a) = 10.78260.
        let mut d = PhiDetector::new(PhiConfig::default());
        d.heartbeat(0);
        close(d.phi(4000), LOG10_2);
        close(d.phi(6000), 4.73669);
        close(d.phi(7000), 10.78260);
    }

    #[test]
    fn samples_update_mean_and_deviation() {
        // Bootstrap 750, 1250, then intervals 1000 and 1000: mean 1000, variance
        // (250^2 + 250^2 + 0 + 0) / 4 = 31250, std dev 176.777. elapsed 1250:
        // y = 250 / 176.777 = 1.414214, a = 1.414214 (1.5976 + 0.070566 * 2) = 2.458938,
        // e^a = 11.692392, phi = log10(12.692392) = 1.10354.
        let mut d = PhiDetector::new(plain());
        d.heartbeat(0);
        d.heartbeat(1000);
        d.heartbeat(2000);
        assert_eq!(d.mean_interval_ms(), Some(1000.0));
        close(d.phi(3000), LOG10_2);
        close(d.phi(3250), 1.10354);
    }

    #[test]
    fn window_drops_oldest_samples() {
        // max_samples 2: after intervals 100 and 300 the bootstrap is gone; mean 200,
        // variance (100^2 + 100^2) / 2 = 10000, std dev 100 (the floor). elapsed 200:
        // y = 0, phi = log10 2.
        let mut d = PhiDetector::new(PhiConfig {
            max_samples: 2,
            ..plain()
        });
        d.heartbeat(0);
        d.heartbeat(100);
        d.heartbeat(400);
        assert_eq!(d.mean_interval_ms(), Some(200.0));
        close(d.phi(600), LOG10_2);
    }

    #[test]
    fn interval_after_an_outage_is_not_a_sample() {
        let mut d = PhiDetector::new(plain());
        d.heartbeat(0);
        // 60 s of silence: phi far over 8, so the 60 s interval is not recorded.
        assert!(d.phi(60_000) > 8.0);
        d.heartbeat(60_000);
        assert_eq!(d.mean_interval_ms(), Some(1000.0));
        close(d.phi(61_000), LOG10_2);
    }

    #[test]
    fn phi_stays_finite_for_huge_gaps() {
        let mut d = PhiDetector::new(plain());
        d.heartbeat(0);
        let p = d.phi(u64::MAX / 2);
        assert!(p.is_finite() && p > 1e6, "{p}");
    }
}

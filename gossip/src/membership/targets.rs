//! Peer choice: whom a round gossips with.
//!
//! Owns: the choice among live members, seeds and down members. Must not: build
//! messages, or judge liveness (it reads the verdicts `liveness` left on the records).

use std::collections::BTreeSet;

use rand::seq::IndexedRandom;
use rand::Rng;

use super::record::Liveness;
use super::Membership;

impl Membership {
    /// Addresses to send this round's digest to: up to `fanout` random live members, the
    /// seeds while no member is live, and now and then a down member.
    pub(super) fn choose_targets(&self, rng: &mut impl Rng) -> Vec<String> {
        let fanout = self.config.fanout;
        let mut live = Vec::new();
        let mut down = Vec::new();
        for (name, m) in &self.members {
            if *name == self.config.name || m.status.is_tombstone() {
                continue;
            }
            if m.liveness == Liveness::Down {
                down.push(m.address.as_str());
            } else {
                live.push(m.address.as_str());
            }
        }
        let mut targets: Vec<&str> = live.choose_multiple(rng, fanout).copied().collect();
        if live.is_empty() {
            // Retry the seeds every round, for ever: a node alone may be the first up.
            let seeds: BTreeSet<&str> = self
                .config
                .seeds
                .iter()
                .map(String::as_str)
                .filter(|s| *s != self.config.address)
                .collect();
            let seeds: Vec<&str> = seeds.into_iter().collect();
            targets.extend(seeds.choose_multiple(rng, fanout).copied());
        }
        // Probe a down member now and then, with Cassandra's odds down / (live + 1), so a
        // healed partition or a returning node is noticed even when no live peer can
        // relay it.
        if !down.is_empty()
            && rng.random_bool((down.len() as f64 / (live.len() + 1) as f64).min(1.0))
        {
            let probe = *down.choose(rng).expect("non-empty");
            if !targets.contains(&probe) {
                if targets.len() >= fanout {
                    targets.pop();
                }
                targets.push(probe);
            }
        }
        targets.into_iter().map(String::from).collect()
    }
}

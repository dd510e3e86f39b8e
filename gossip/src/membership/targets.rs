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
    /// seeds while no member is live (and now and then one no known member is at), and
    /// now and then a down member.
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
            let seeds = self.seeds_other_than(&[self.config.address.as_str()]);
            targets.extend(seeds.choose_multiple(rng, fanout).copied());
        } else {
            // Now and then (odds 1/(live+1), as Cassandra gossips to a seed) also try one
            // seed no known member is at: two groups that formed apart (every node of each
            // restarted behind a partition and met only its own group through the seeds)
            // would otherwise never hear of each other (simulation seeds 1434 and 1105).
            // Once every seed is a known member's address this draws nothing.
            let known: Vec<&str> = self.members.values().map(|m| m.address.as_str()).collect();
            let strangers = self.seeds_other_than(&known);
            if !strangers.is_empty() && rng.random_bool(1.0 / (live.len() + 1) as f64) {
                let seed = *strangers.choose(rng).expect("non-empty");
                if targets.len() >= fanout {
                    targets.pop();
                }
                targets.push(seed);
            }
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

    /// The seed addresses not in `excluded`, sorted and listed once.
    fn seeds_other_than(&self, excluded: &[&str]) -> Vec<&str> {
        let seeds: BTreeSet<&str> = self
            .config
            .seeds
            .iter()
            .map(String::as_str)
            .filter(|s| *s != self.config.address && !excluded.contains(s))
            .collect();
        seeds.into_iter().collect()
    }
}

//! Analysis: balance and movement figures of the claim, as numbers and markdown tables.
//!
//! It owns the definitions of the figures (what "balance" and "moved" mean) so the example,
//! the `chorus ring simulate` command and the tests agree. It must not influence placement:
//! it only builds rings through [`Ring::new`] and compares them.

use std::fmt::Write as _;

use crate::Ring;

/// Balance of one ring, counting every partition-replica.
#[derive(Clone, Debug, PartialEq)]
pub struct Balance {
    /// Fair replicas per member: `ring_size * replicas / members`.
    pub fair: f64,
    /// Most loaded member's replicas over `fair`.
    pub max_ratio: f64,
    /// Least loaded member's replicas over `fair`.
    pub min_ratio: f64,
    /// The best `max_ratio` any claim could reach: `ceil(fair) / fair`.
    pub best_max_ratio: f64,
}

pub fn balance(ring: &Ring) -> Balance {
    let loads: Vec<usize> = ring
        .members()
        .iter()
        .map(|m| ring.primary_partitions(m).len())
        .collect();
    let fair = ring.ring_size() as f64 * ring.replicas() as f64 / loads.len() as f64;
    let max = *loads.iter().max().expect("a ring has members");
    let min = *loads.iter().min().expect("a ring has members");
    Balance {
        fair,
        max_ratio: max as f64 / fair,
        min_ratio: min as f64 / fair,
        best_max_ratio: fair.ceil() / fair,
    }
}

/// Partition-replicas that `after` places on a member that did not hold that partition in
/// `before`: the copies a membership change forces the cluster to transfer.
///
/// # Panics
/// If the rings have different sizes.
pub fn moved_replicas(before: &Ring, after: &Ring) -> usize {
    assert_eq!(
        before.ring_size(),
        after.ring_size(),
        "rings of different sizes"
    );
    (0..after.ring_size())
        .map(|p| {
            let old = before.primaries(p);
            after
                .primaries(p)
                .iter()
                .filter(|m| !old.contains(m))
                .count()
        })
        .sum()
}

/// Fewest replicas any claim must move when a member joins a ring of `k` members: the
/// newcomer's fair share.
pub fn ideal_join(ring_size: u32, n: usize, k: usize) -> f64 {
    let total = ring_size as f64 * n.min(k + 1) as f64;
    total / (k + 1) as f64
}

/// Fewest replicas any claim must move when a member leaves a ring of `k` members: the
/// leaver's fair share, less what the smaller ring no longer needs (nothing moves while
/// `k <= n`, every partition just has one replica fewer).
pub fn ideal_leave(ring_size: u32, n: usize, k: usize) -> f64 {
    let before = ring_size as f64 * n.min(k) as f64;
    let after = ring_size as f64 * n.min(k - 1) as f64;
    (after - before * (k - 1) as f64 / k as f64).max(0.0)
}

/// Replicas moved by one kind of membership change, over the sampled members.
#[derive(Clone, Debug, PartialEq)]
pub struct Movement {
    pub ideal: f64,
    pub mean: f64,
    pub worst: usize,
    pub samples: usize,
}

impl Movement {
    fn from_samples(ideal: f64, moved: &[usize]) -> Movement {
        Movement {
            ideal,
            mean: moved.iter().sum::<usize>() as f64 / moved.len() as f64,
            worst: moved.iter().copied().max().unwrap_or(0),
            samples: moved.len(),
        }
    }

    /// `worst / ideal`, or `None` when the ideal is to move nothing.
    pub fn worst_ratio(&self) -> Option<f64> {
        (self.ideal > 0.0).then(|| self.worst as f64 / self.ideal)
    }

    pub fn mean_ratio(&self) -> Option<f64> {
        (self.ideal > 0.0).then(|| self.mean / self.ideal)
    }
}

/// Names of simulated members, `node-000` upwards.
pub fn node_names(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("node-{i:03}")).collect()
}

/// How many different newcomers a join is measured with; the newcomer's name decides which
/// partitions it wins, so one name alone could flatter or slander the claim.
pub const JOIN_SAMPLES: usize = 4;
/// How many members a leave is measured with: all of them up to this count, else this many
/// spread evenly over the sorted names.
pub const LEAVE_SAMPLES: usize = 10;

/// All figures for one member count.
#[derive(Clone, Debug, PartialEq)]
pub struct Figures {
    pub nodes: usize,
    pub balance: Balance,
    /// `nodes` -> `nodes + 1`.
    pub join: Movement,
    /// `nodes` -> `nodes - 1`; `None` for a single node.
    pub leave: Option<Movement>,
}

/// Measures a ring of `nodes` simulated members against its joins and leaves.
///
/// # Panics
/// If `ring_size`, `n` or `nodes` do not make a valid ring.
pub fn figures(ring_size: u32, n: usize, nodes: usize) -> Figures {
    let build = |names: &[String]| Ring::new(ring_size, n, names.iter().cloned()).expect("ring");
    let names = node_names(nodes);
    let ring = build(&names);

    let joined: Vec<usize> = (0..JOIN_SAMPLES)
        .map(|j| {
            let mut more = names.clone();
            more.push(format!("joiner-{j}"));
            moved_replicas(&ring, &build(&more))
        })
        .collect();

    let leave = (nodes > 1).then(|| {
        let samples = nodes.min(LEAVE_SAMPLES);
        let left: Vec<usize> = (0..samples)
            .map(|s| {
                let gone = s * nodes / samples;
                let fewer: Vec<String> = names
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| i != gone)
                    .map(|(_, m)| m.clone())
                    .collect();
                moved_replicas(&ring, &build(&fewer))
            })
            .collect();
        Movement::from_samples(ideal_leave(ring_size, n, nodes), &left)
    });

    Figures {
        nodes,
        balance: balance(&ring),
        join: Movement::from_samples(ideal_join(ring_size, n, nodes), &joined),
        leave,
    }
}

/// A markdown table of [`figures`] for each member count. Movement is in
/// partition-replicas; a ratio is moved over ideal, `-` where the ideal is to move nothing.
pub fn report(ring_size: u32, n: usize, node_counts: &[usize]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "ring_size {ring_size}, n {n}\n");
    let _ = writeln!(
        out,
        "| nodes | fair | max/fair | best max/fair | min/fair \
         | join ideal | join moved mean / worst | join ratio mean / worst \
         | leave ideal | leave moved mean / worst | leave ratio mean / worst |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for &nodes in node_counts {
        let f = figures(ring_size, n, nodes);
        let b = &f.balance;
        let leave = f
            .leave
            .as_ref()
            .map_or_else(|| "- | - | -".to_string(), movement_cells);
        let _ = writeln!(
            out,
            "| {nodes} | {:.2} | {:.3} | {:.3} | {:.3} | {} | {leave} |",
            b.fair,
            b.max_ratio,
            b.best_max_ratio,
            b.min_ratio,
            movement_cells(&f.join),
        );
    }
    out
}

fn movement_cells(m: &Movement) -> String {
    let ratio = |r: Option<f64>| r.map_or_else(|| "-".to_string(), |r| format!("{r:.2}"));
    format!(
        "{:.1} | {:.1} / {} | {} / {}",
        m.ideal,
        m.mean,
        m.worst,
        ratio(m.mean_ratio()),
        ratio(m.worst_ratio())
    )
}

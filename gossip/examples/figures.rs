//! Prints the figures in README.md: convergence, detection time and false suspicions,
//! all on the simulated network (virtual time, seeded).
//!
//! cargo run -p chorus-gossip --release --example figures

use chorus_gossip::sim::{self, SimConfig};

fn stats(mut v: Vec<u64>) -> (u64, u64, u64) {
    v.sort();
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    let seeds = 1..=5u64;
    println!("## Convergence: n nodes started at once, node 0 the only seed; rounds of 500 ms until everyone sees everyone alive ({} seeds)\n", seeds.clone().count());
    println!("| nodes | network | max message | rounds min / median / max |");
    println!("|---:|---|---:|---|");
    for n in [10, 50, 200] {
        for (network, make) in [
            ("1-20 ms", SimConfig::default as fn() -> SimConfig),
            ("jittery", || SimConfig::jittery(0)),
        ] {
            for bound in [60_000, 4096] {
                if bound == 4096 && n != 200 {
                    continue;
                }
                let rounds: Vec<u64> = seeds
                    .clone()
                    .map(|seed| {
                        let c = sim::convergence(
                            n,
                            SimConfig { seed, ..make() },
                            |c| {
                                c.max_message_bytes = bound;
                                c.max_kv_bytes = c.max_kv_bytes.min(bound / 4);
                            },
                            100,
                        );
                        c.rounds.expect("converges within 100 rounds")
                    })
                    .collect();
                let (lo, mid, hi) = stats(rounds);
                println!("| {n} | {network} | {bound} | {lo} / {mid} / {hi} |");
            }
        }
    }

    println!("\n## Crash detection: jittery network, interval 500 ms, one node killed after 60 s; time from the kill to each observer's Suspect and Down ({} seeds, every observer)\n", seeds.clone().count());
    println!(
        "| nodes | threshold | suspect min / median / max (s) | down min / median / max (s) |"
    );
    println!("|---:|---:|---|---|");
    for (n, threshold) in [(10, 5.0), (10, 8.0), (10, 12.0), (50, 8.0)] {
        let mut suspect = Vec::new();
        let mut down = Vec::new();
        for seed in seeds.clone() {
            let d = sim::crash_detection(
                n,
                SimConfig::jittery(seed),
                |c| c.phi.threshold = threshold,
                60_000,
                120_000,
            );
            suspect.extend(d.suspect_ms.iter().map(|t| t.expect("suspected")));
            down.extend(d.down_ms.iter().map(|t| t.expect("marked down")));
        }
        let s = stats(suspect);
        let d = stats(down);
        let sec = |ms: u64| ms as f64 / 1000.0;
        println!(
            "| {n} | {threshold} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} |",
            sec(s.0),
            sec(s.1),
            sec(s.2),
            sec(d.0),
            sec(d.1),
            sec(d.2)
        );
    }

    let hours = 4.0;
    println!("\n## False suspicions: 10 healthy nodes, jittery network, each node paused on average every 5 min; {hours} virtual hours per row\n");
    println!("| pause | threshold | pauses | suspect / node-hour | down / node-hour |");
    println!("|---:|---:|---:|---:|---:|");
    for (pause_ms, threshold) in [
        (1000, 8.0),
        (1000, 5.0),
        (2000, 8.0),
        (3000, 8.0),
        (4000, 8.0),
        (6000, 8.0),
    ] {
        let f = sim::false_suspicions(
            10,
            SimConfig::jittery(100 + pause_ms),
            |c| c.phi.threshold = threshold,
            hours,
            pause_ms,
            300_000,
        );
        println!(
            "| {:.0} s | {threshold} | {} | {:.2} | {:.2} |",
            pause_ms as f64 / 1000.0,
            f.pauses,
            f.suspects as f64 / f.node_hours,
            f.downs as f64 / f.node_hours
        );
    }
}

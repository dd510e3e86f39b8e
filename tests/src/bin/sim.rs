//! `sim`: runs seeded whole-cluster simulations (see `chorus_tests::sim`).
//!
//! `sim --seed 17 --verbose` replays one scenario with every event printed;
//! `sim --seeds 1..1000 [--nodes 5] [--faults heavy]` runs a batch on every core (one
//! scenario per thread at a time), prints progress and a summary, and exits 1 when any
//! scenario failed, listing the command that replays each failure.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::Parser;

use chorus_tests::sim::{self, Faults, Options};

#[derive(Parser, Debug)]
#[command(about = "Deterministic simulation of a chorus cluster under faults")]
struct Args {
    /// One seed to run (prints its digest; with --verbose, every event).
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// A range of seeds, `A..B` (B excluded) or `A..=B`.
    #[arg(long)]
    seeds: Option<String>,
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// none, light or heavy.
    #[arg(long, default_value = "light")]
    faults: Faults,
    /// Virtual seconds of workload under faults per scenario.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    #[arg(long, default_value_t = 4)]
    clients: usize,
    #[arg(long, default_value_t = 6)]
    keys: usize,
    /// No late joiner (by default about half the scenarios start one node late).
    #[arg(long)]
    no_join: bool,
    /// No strict-quorum (pr/pw) requests.
    #[arg(long)]
    no_strict: bool,
    /// Test-only: writes answer with the first build's context (issue 14's bug: it covers
    /// siblings the writer never saw). The checker must then report lost writes.
    #[arg(long)]
    old_answer_context: bool,
    /// Also fail nodes' disks for a while (every write an I/O error), then recover them.
    #[arg(long)]
    disk_faults: bool,
    /// Some writes carry a TTL, and every node's clock is skewed (up to 500 ms either way).
    #[arg(long)]
    ttl: bool,
    /// An operator changes the bucket's properties (max_siblings) while clients run;
    /// every node reloads them as a real node does.
    #[arg(long)]
    props: bool,
    /// Print every event of the scenario (and debug logs of the nodes).
    #[arg(long)]
    verbose: bool,
    /// Worker threads for a batch (default: every core).
    #[arg(long)]
    threads: Option<usize>,
}

fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("--seeds wants A..B or A..=B, got {text:?}");
    if let Some((a, b)) = text.split_once("..=") {
        let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        return Ok((a, b + 1));
    }
    let (a, b) = text.split_once("..").ok_or_else(bad)?;
    let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if a >= b {
        return Err(bad());
    }
    Ok((a, b))
}

fn main() {
    let args = Args::parse();
    if args.nodes < 3 {
        eprintln!("sim: --nodes must be at least 3 (the replication factor)");
        std::process::exit(2);
    }
    let base = Options {
        seed: 0,
        nodes: args.nodes,
        faults: args.faults,
        verbose: args.verbose,
        duration: Duration::from_secs(args.duration),
        clients: args.clients,
        keys: args.keys,
        late_join: !args.no_join,
        strict_quorums: !args.no_strict,
        old_answer_context: args.old_answer_context,
        script: None,
        disk_faults: args.disk_faults,
        ttl: args.ttl,
        props: args.props,
    };
    let options = move |seed: u64| Options {
        seed,
        ..base.clone()
    };
    if args.verbose {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug")),
            )
            .without_time()
            .try_init();
    }
    let (start, end) = match (&args.seed, &args.seeds) {
        (Some(seed), _) => (*seed, seed + 1),
        (None, Some(range)) => match parse_range(range) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("sim: {e}");
                std::process::exit(2);
            }
        },
        (None, None) => (1, 2),
    };
    let total = end - start;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, total as usize);
    let began = Instant::now();
    let next = Arc::new(AtomicU64::new(start));
    let (tx, rx) = mpsc::channel();
    let mut workers = Vec::new();
    for _ in 0..threads {
        let (next, tx, options) = (next.clone(), tx.clone(), options.clone());
        workers.push(std::thread::spawn(move || loop {
            let seed = next.fetch_add(1, Ordering::SeqCst);
            if seed >= end {
                return;
            }
            let report = sim::run(&options(seed));
            if tx.send(report).is_err() {
                return;
            }
        }));
    }
    drop(tx);
    let mut done = 0u64;
    let mut failed = Vec::new();
    let (mut writes, mut acked, mut reads) = (0usize, 0usize, 0u64);
    let mut healing = sim::Healing::default();
    let (mut max_siblings, mut reaped, mut lost) = (0usize, 0usize, 0usize);
    let mut expired = 0usize;
    let single = total == 1;
    for report in rx {
        done += 1;
        writes += report.writes;
        acked += report.acked;
        reads += report.reads;
        healing += report.healing;
        max_siblings = max_siblings.max(report.max_siblings);
        reaped += report.tombstones_reaped;
        expired += report.expired;
        lost += report.lost;
        if single {
            println!(
                "seed {}: digest {} ({} events, {} messages, {} writes of which {} acknowledged, {} reads, {:.1} s virtual)",
                report.seed,
                report.digest,
                report.events,
                report.messages,
                report.writes,
                report.acked,
                report.reads,
                report.virtual_ms as f64 / 1000.0
            );
            println!(
                "  {:?}; at most {} siblings; {} acknowledged tombstones reaped; {} acknowledged values expired",
                report.healing, report.max_siblings, report.tombstones_reaped, report.expired
            );
        }
        if !report.failures.is_empty() {
            if !single {
                eprintln!();
            }
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "seed {} FAILED:", report.seed);
            for f in report.failures.iter().take(10) {
                let _ = writeln!(out, "  {f}");
            }
            if report.failures.len() > 10 {
                let _ = writeln!(out, "  ... and {} more", report.failures.len() - 10);
            }
            let _ = writeln!(out, "  replay: {}", options(report.seed).replay_command());
            let _ = out.flush();
            failed.push(report.seed);
        }
        if !single {
            let rate = done as f64 / began.elapsed().as_secs_f64();
            eprint!(
                "\r{done}/{total} scenarios, {} failed, {rate:.1} scenarios/s   ",
                failed.len()
            );
            let _ = std::io::stderr().flush();
        }
    }
    for w in workers {
        let _ = w.join();
    }
    let secs = began.elapsed().as_secs_f64();
    if !single {
        eprintln!();
    }
    println!(
        "{done} scenarios ({} nodes, {} faults) in {secs:.1} s on {threads} threads: {:.2} scenarios/s; {writes} writes ({acked} acknowledged), {reads} reads; {} failed, {lost} acknowledged writes lost",
        args.nodes,
        args.faults,
        done as f64 / secs,
        failed.len()
    );
    println!("healing over the batch: {healing:?}; at most {max_siblings} siblings on a key; {reaped} acknowledged tombstones reaped; {expired} acknowledged values expired");
    if !failed.is_empty() {
        failed.sort_unstable();
        println!("failed seeds: {failed:?}");
        for seed in &failed {
            println!("  {}", options(*seed).replay_command());
        }
        std::process::exit(1);
    }
}

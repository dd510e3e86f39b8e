//! A scenario is a function of its seed: the same seed gives the same event log (digest),
//! another seed a different one.

use chorus_tests::sim::{self, Faults, Options};

#[test]
fn a_seed_replays_the_same_trace() {
    let mut options = Options::new(7);
    options.faults = Faults::Heavy;
    let first = sim::run(&options);
    let second = sim::run(&options);
    assert!(
        first.failures.is_empty(),
        "seed 7 failed: {:?}",
        first.failures
    );
    assert!(
        first.events > 100,
        "the scenario did something ({} events)",
        first.events
    );
    assert_eq!(first.digest, second.digest, "same seed, different traces");
    assert_eq!(
        (first.writes, first.acked, first.events),
        (second.writes, second.acked, second.events)
    );

    let other = sim::run(&Options { seed: 8, ..options });
    assert_ne!(first.digest, other.digest, "two seeds gave the same trace");
}

/// With TTLs, skewed clocks and bucket-property changes too: a node coordinating a key
/// listing once ran its own replica's scan on the blocking pool, off the virtual clock,
/// and seed 1871 gave a different trace on about one run in two (now scans of a memory
/// engine run inline: `Storage::scans_block`).
#[test]
fn a_seed_with_ttls_and_property_changes_replays_the_same_trace() {
    let mut options = Options::new(1871);
    options.faults = Faults::Heavy;
    options.ttl = true;
    options.props = true;
    let digests: Vec<String> = (0..4).map(|_| sim::run(&options).digest).collect();
    assert!(
        digests.iter().all(|d| *d == digests[0]),
        "same seed, different traces: {digests:?}"
    );
}

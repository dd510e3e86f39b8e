//! A write whose first primary was just killed, before the failure detector has called it
//! down: the coordinator learns the request could not be sent (the dead peer's connection
//! idled out, a new dial finds no one) and lets the next primary mint it, so the write
//! succeeds within its own timeout instead of failing until detection.

use std::time::{Duration, Instant};

use chorus_tests::api;
use chorus_tests::cluster::{args, ClusterOptions, TestCluster, CLUSTER_DEADLINE};

#[test]
fn a_write_whose_first_primary_was_just_killed_succeeds_before_detection() {
    // A slow failure detector (phi 40: tens of seconds) so "before detection" is a wide
    // window even on a busy machine; the timeout is the default 2 s.
    let mut cluster = TestCluster::start_converged(ClusterOptions {
        nodes: 4,
        extra_args: args(&["--phi-threshold", "40"]),
        ..ClusterOptions::default()
    });
    let coordinator = cluster.url(3);
    let key = (0..10_000)
        .map(|i| format!("k{i}"))
        .find(|k| {
            let owners = api::owners(&coordinator, "b", k).expect("preference list");
            owners[0] == "n1" && !owners.contains(&"n4".to_string())
        })
        .expect("some key has n1 first and n4 not among its owners");
    // The n4 -> n1 connection is warm, as it is under load.
    api::put_ok(&coordinator, "b", &key, b"before", "", None);

    cluster.nodes[0].kill9();
    let killed = Instant::now();
    let mut attempts = Vec::new();
    let succeeded = loop {
        assert!(
            killed.elapsed() < CLUSTER_DEADLINE,
            "no write succeeded within {CLUSTER_DEADLINE:?} of the kill: {attempts:?}"
        );
        let down = api::members(&coordinator)
            .expect("status")
            .get("n1")
            .is_some_and(|(state, _)| state == "down");
        assert!(
            !down,
            "n1 was detected down before any write got past it: {attempts:?}"
        );
        let started = Instant::now();
        let r = api::put(&coordinator, "b", &key, b"after", "timeout=2000", None).expect("PUT");
        attempts.push((killed.elapsed(), r.status, started.elapsed()));
        if r.status == 204 {
            break started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!(
        "FIGURE first write past a killed first primary: {:?} after the kill, took {succeeded:?} (attempts {attempts:?})",
        killed.elapsed()
    );
    assert!(succeeded < Duration::from_millis(2000), "{attempts:?}");
    // Written blind, "after" is a sibling of "before" (and of any 503'd attempt that a
    // replica did store): it must be among what a quorum read returns.
    let (status, _, values) = api::get_json(&coordinator, "b", &key, "r=2").expect("GET");
    assert!(status == 200 || status == 300, "GET answered {status}");
    assert!(values.contains(&b"after".to_vec()), "{values:?}");
}

//! Membership on real `chorus` processes: convergence from one seed, failure detection after
//! `kill -9`, a restart seen as a new generation, and a node without the cluster's credential
//! kept out. Every wait is on a condition with a generous deadline (CI: 2 busy cores).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chorus_tests::api;
use chorus_tests::cluster::{chorus_bin, ClusterOptions, TestCluster, CLUSTER_DEADLINE};

#[test]
fn five_nodes_from_one_seed_converge_detect_a_kill_and_see_the_restart() {
    let started = Instant::now();
    let mut cluster = TestCluster::start_converged(ClusterOptions {
        nodes: 5,
        first_node_as_seed: true,
        ..Default::default()
    });
    println!("5 nodes seeded by n1 converged in {:?}", started.elapsed());
    let observers = [0, 1, 2, 3];
    let generation_before: HashMap<usize, u64> = observers
        .iter()
        .map(|&i| (i, api::members(&cluster.url(i)).unwrap()["n5"].1))
        .collect();
    assert!(
        generation_before
            .values()
            .all(|&g| g > 0 && g == generation_before[&0]),
        "every node sees n5's generation: {generation_before:?}"
    );

    // kill -9 n5: every other node must call it down, each within the deadline.
    cluster.nodes[4].kill9();
    let killed = Instant::now();
    let mut detected: HashMap<usize, Duration> = HashMap::new();
    let mut last = String::new();
    while detected.len() < observers.len() && killed.elapsed() < CLUSTER_DEADLINE {
        for &i in &observers {
            if detected.contains_key(&i) {
                continue;
            }
            match api::members(&cluster.url(i)) {
                Ok(m) if m.get("n5").is_some_and(|(s, _)| s == "down") => {
                    detected.insert(i, killed.elapsed());
                }
                Ok(m) => last = format!("n{} sees n5 as {:?}", i + 1, m.get("n5")),
                Err(e) => last = e,
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        detected.len(),
        observers.len(),
        "not every node saw n5 down within {CLUSTER_DEADLINE:?}: {detected:?}; last: {last}"
    );
    let slowest = detected.values().max().copied().unwrap_or_default();
    let fastest = detected.values().min().copied().unwrap_or_default();
    println!("FIGURE detection after kill -9: first node {fastest:?}, last node {slowest:?} (gossip interval 200 ms)");
    // Nothing else went down meanwhile (a busy machine may make a live node suspect for a
    // moment, but not down).
    for &i in &observers {
        let members = api::members(&cluster.url(i)).unwrap();
        for (name, (state, _)) in &members {
            if name != "n5" {
                assert_ne!(
                    state,
                    "down",
                    "n{} sees {name} down while only n5 was killed",
                    i + 1
                );
            }
        }
    }

    // Restart n5 on the same data directory: alive again everywhere, with a higher generation.
    let restarted = Instant::now();
    cluster.nodes[4].start();
    cluster.nodes[4].wait_healthy();
    cluster.wait_alive(&[0, 1, 2, 3, 4], &["n1", "n2", "n3", "n4", "n5"]);
    for &i in &observers {
        let url = cluster.url(i);
        chorus_tests::cluster::wait_for(
            &format!("n{} to see n5's new generation", i + 1),
            CLUSTER_DEADLINE,
            || {
                let (state, generation) = api::members(&url)?["n5"].clone();
                if state == "alive" && generation > generation_before[&i] {
                    Ok(())
                } else {
                    Err(format!(
                        "n5 is {state} with generation {generation} (was {})",
                        generation_before[&i]
                    ))
                }
            },
        );
    }
    println!(
        "FIGURE restart seen alive with a new generation by every node after {:?}",
        restarted.elapsed()
    );
    // The restarted node knows everyone (it kept its identity and rejoined).
    let own = api::members(&cluster.url(4)).unwrap();
    assert_eq!(own.len(), 5, "n5 lists {own:?}");
}

#[test]
fn a_node_without_the_credential_cannot_join() {
    let mut cluster = TestCluster::start_converged(ClusterOptions {
        nodes: 3,
        ..Default::default()
    });
    let stranger_certs = cluster.dir.path().join("stranger-certs");
    let status = Command::new(chorus_bin())
        .args(["certs", "init", "--dir"])
        .arg(&stranger_certs)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());

    // The stranger (its own CA) seeds from n1, as a legitimate newcomer would.
    let stranger = cluster.add_node("stranger", Some(stranger_certs), Vec::new());
    cluster.nodes[stranger].start();
    cluster.nodes[stranger].wait_healthy();
    // A legitimate newcomer started after it: once the cluster lists n4, the stranger had at
    // least as much time to get in.
    let certs = cluster.certs.clone();
    let newcomer = cluster.add_node("n4", Some(certs), Vec::new());
    cluster.nodes[newcomer].start();
    cluster.nodes[newcomer].wait_healthy();
    let everyone = [0, 1, 2, newcomer];
    let observation = Instant::now();
    cluster.wait_alive(&everyone, &["n1", "n2", "n3", "n4"]);
    // Keep watching for as long as it took n4 to join again (at least 3 s, ~15 gossip rounds).
    let window = observation.elapsed().max(Duration::from_secs(3));
    let watch = Instant::now();
    let mut polls = 0;
    while watch.elapsed() < window {
        for &i in &everyone {
            let members = api::members(&cluster.url(i)).unwrap();
            assert!(
                !members.contains_key("stranger"),
                "n{} lists the stranger: {members:?}",
                i + 1
            );
            assert_eq!(members.len(), 4, "n{} lists {members:?}", i + 1);
        }
        polls += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(polls > 0);
    // The stranger is still running, and alone: it learned no member either.
    assert!(
        cluster.nodes[stranger].is_running(),
        "the stranger exited: {}",
        cluster.nodes[stranger].log_text()
    );
    let its_view = api::members(&cluster.url(stranger)).unwrap();
    assert_eq!(
        its_view.keys().collect::<Vec<_>>(),
        vec!["stranger"],
        "the stranger learned members: {its_view:?}"
    );
    // And it cannot use the cluster's data: a write through it has no replica but itself.
    let r = api::put(&cluster.url(stranger), "b", "k", b"v", "w=2", None).unwrap();
    assert!(
        r.status == 503 || r.status == 400,
        "a write needing 2 replicas through the stranger: HTTP {}",
        r.status
    );
    println!(
        "the stranger stayed out for {:?} of observation",
        observation.elapsed()
    );
}

/// A node killed and restarted at once (same address, new generation): its peers must stop
/// using their connection to the dead incarnation as soon as gossip shows the new one, not
/// only when that connection idles out (10 s without packets).
#[test]
fn a_node_restarted_at_once_is_reachable_as_soon_as_its_new_generation_is_seen() {
    let mut cluster = TestCluster::start_converged(ClusterOptions {
        nodes: 3,
        ..Default::default()
    });
    api::put_ok(&cluster.url(0), "b", "k", b"v", "w=all", None);
    let generation = api::members(&cluster.url(0)).unwrap()["n3"].1;
    // Traffic on the n1 -> n3 connection just before the kill.
    assert_eq!(
        api::get_kv(&cluster.url(0), "b", "k", "r=all")
            .unwrap()
            .status,
        200
    );
    cluster.nodes[2].restart();
    let killed = Instant::now();
    let n1 = cluster.url(0);
    chorus_tests::cluster::wait_for("n1 to see n3's new generation", CLUSTER_DEADLINE, || {
        let (state, g) = api::members(&n1)?["n3"].clone();
        if g > generation && state == "alive" {
            Ok(())
        } else {
            Err(format!("{state} {g}"))
        }
    });
    let seen = killed.elapsed();
    chorus_tests::cluster::wait_for("a read at r=all through n1", CLUSTER_DEADLINE, || {
        let r = api::get_kv(&n1, "b", "k", "r=all&timeout=500")?;
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("HTTP {} {}", r.status, r.error_message()))
        }
    });
    let reachable = killed.elapsed();
    println!("FIGURE quick restart: n1 saw n3's new generation {seen:?} after the kill, read from it at r=all after {reachable:?}");
    // A connection to the dead incarnation idles out only after 10 s without packets; until
    // then it swallows gossip replies and requests. Dropping it when the new incarnation
    // connects makes this a matter of one gossip round.
    assert!(
        reachable < Duration::from_secs(6),
        "n1 took {reachable:?} to reach the restarted n3"
    );
}

//! Identity on real `chorus` processes (issue 15): a second process claiming a live
//! node's name is refused and the live node keeps running; nodes whose `--n` differs do
//! not each keep serving as a cluster of their own.

use chorus_tests::api;
use chorus_tests::cluster::{args, wait_for, ClusterOptions, TestCluster, CLUSTER_DEADLINE};

/// (generation, heartbeat) of `name` as the node at `url` sees it.
fn seen(url: &str, name: &str) -> Result<(u64, u64), String> {
    let status = api::status(url)?;
    let member = status
        .member(name)
        .ok_or_else(|| format!("{url} does not list {name}"))?;
    Ok((member.generation, member.heartbeat))
}

/// Issue 15, defect 6: the newcomer's higher generation won, the node holding the data was
/// told to stop and exited 2, and an empty store took its ring share.
#[test]
fn a_second_process_with_a_live_nodes_name_exits_and_the_live_node_keeps_running() {
    let mut cluster = TestCluster::start_converged(ClusterOptions::default());
    let (n1, n3) = (cluster.url(0), cluster.url(2));
    let before = seen(&n1, "n2").unwrap().0;
    let certs = cluster.certs.clone();
    let impostor = cluster.add_node("impostor", Some(certs), Vec::new());
    cluster.nodes[impostor].name = "n2".into();
    cluster.nodes[impostor].start();
    let code = cluster.nodes[impostor].wait_exit(CLUSTER_DEADLINE);
    assert_eq!(code, Some(2), "the newcomer must be refused and exit 2");
    let log = cluster.nodes[impostor].log_text();
    assert!(log.contains("is taken by the live node"), "{log}");

    // n2 keeps gossiping after the newcomer is gone, with its own generation.
    let (_, heartbeat) = seen(&n3, "n2").unwrap();
    wait_for("n3 to see n2's heartbeat go on", CLUSTER_DEADLINE, || {
        let (generation, now) = seen(&n3, "n2")?;
        if generation == before && now >= heartbeat + 10 {
            Ok(())
        } else {
            Err(format!(
                "generation {generation} (was {before}), heartbeat {now}"
            ))
        }
    });
    assert!(cluster.nodes[1].is_running(), "the live n2 was evicted");
    cluster.wait_alive(&[0, 1, 2], &["n1", "n2", "n3"]);
    api::put_ok(&cluster.url(1), "id", "k", b"v", "w=all", None);
}

/// Issue 15: nodes started with different `--n` each kept running as a one-node cluster
/// that acknowledged writes; a `--ring-size` mismatch into a cluster already exited 2.
#[test]
fn a_node_whose_n_differs_exits_2_whether_it_joins_a_cluster_or_meets_a_lone_node() {
    // Joining a cluster.
    let mut cluster = TestCluster::start_converged(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    let certs = cluster.certs.clone();
    let joiner = cluster.add_node("n3", Some(certs), args(&["--n", "2"]));
    cluster.nodes[joiner].start();
    assert_eq!(cluster.nodes[joiner].wait_exit(CLUSTER_DEADLINE), Some(2));
    let log = cluster.nodes[joiner].log_text();
    assert!(log.contains("--n 2"), "{log}");

    // Two lone nodes: the one started later gives up.
    let mut lone = TestCluster::start(ClusterOptions {
        nodes: 1,
        ..Default::default()
    });
    lone.nodes[0].wait_healthy();
    let certs = lone.certs.clone();
    let later = lone.add_node("m2", Some(certs), args(&["--n", "2"]));
    lone.nodes[later].start();
    assert_eq!(
        lone.nodes[later].wait_exit(CLUSTER_DEADLINE),
        Some(2),
        "two one-node clusters with different --n kept serving"
    );
    let log = lone.nodes[later].log_text();
    assert!(log.contains("replication factor"), "{log}");
    assert!(lone.nodes[0].is_running());
}

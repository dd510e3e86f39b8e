//! `chorus remove` on real processes, for the two ways a removed node comes back (issue
//! 25): a dead node restarted with its data directory brings no deleted key back (the
//! cluster reaps no tombstone while a removed member may return), and a node removed while
//! it was only cut off hands everything it acknowledged to the owners before it stops.
//! Judged by what clients wrote and read, every wait on a condition with a deadline.

use std::process::Command;
use std::time::Duration;

use chorus_tests::api;
use chorus_tests::cluster::{
    args, chorus_bin, wait_for, ClusterOptions, TestCluster, CLUSTER_DEADLINE,
};

const KEYS: usize = 60;

fn key(i: usize) -> String {
    format!("k{i:03}")
}

/// `chorus remove NAME` through node `via`, with the cluster's admin credential.
fn remove(cluster: &TestCluster, via: usize, name: &str) {
    let out = Command::new(chorus_bin())
        .args(["remove", name, "--node", &cluster.url(via), "--certs"])
        .arg(&cluster.certs)
        .output()
        .expect("run chorus remove");
    assert!(
        out.status.success(),
        "chorus remove {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn options(nodes: usize) -> ClusterOptions {
    ClusterOptions {
        nodes,
        extra_args: args(&[
            "--tombstone-grace-ms",
            "1000",
            "--healing-interval-ms",
            "200",
        ]),
        ..Default::default()
    }
}

#[test]
fn a_dead_node_removed_then_restarted_with_its_data_brings_no_deleted_key_back() {
    let mut cluster = TestCluster::start_converged(options(5));
    let n1 = cluster.url(0);
    for i in 0..KEYS {
        api::put_ok(&n1, "b", &key(i), b"before the delete", "w=all", None);
    }
    cluster.nodes[4].kill9();
    cluster.wait_state(&[0, 1, 2, 3], "n5", "down");
    for i in 0..KEYS {
        let r = api::delete(&n1, "b", &key(i), "", None).unwrap();
        assert_eq!(r.status, 204, "delete {}: {}", key(i), r.error_message());
    }
    remove(&cluster, 0, "n5");
    cluster.wait_state(&[0, 1, 2, 3], "n5", "left");
    // Either the majority keeps the tombstones because n5 may return with its data, or
    // (the bug) it reaps them: wait for whichever happens, then bring n5 back.
    let majority: Vec<String> = (0..4).map(|i| cluster.url(i)).collect();
    let outcome = wait_for(
        "reaping to pause for n5, or the tombstones to be reaped",
        CLUSTER_DEADLINE,
        || {
            let status = api::status(&n1)?;
            if status
                .reaping_paused
                .as_deref()
                .is_some_and(|r| r.contains("removed") && r.contains("n5"))
            {
                return Ok("paused");
            }
            let reaped = majority
                .iter()
                .all(|url| matches!(api::local(url, "b", &key(0)), Ok(None)));
            if reaped {
                return Ok("reaped");
            }
            Err(format!("reaping_paused: {:?}", status.reaping_paused))
        },
    );
    eprintln!("before n5 returns: {outcome}");

    cluster.nodes[4].start();
    cluster.nodes[4].wait_healthy();
    let all = ["n1", "n2", "n3", "n4", "n5"];
    cluster.wait_alive(&[0, 1, 2, 3, 4], &all);
    for node in 0..5 {
        let url = cluster.url(node);
        for i in 0..KEYS {
            // A 503 (a peer not yet reachable again from this node) is retried; a value
            // is a deleted key come back.
            let what = format!("{} at r=all through n{}", key(i), node + 1);
            wait_for(&what, CLUSTER_DEADLINE, || {
                let r = api::get_kv(&url, "b", &key(i), "r=all")?;
                match r.status {
                    404 => Ok(()),
                    200 => panic!("{what} came back after the removed n5 returned"),
                    other => Err(format!("HTTP {other}: {}", r.error_message())),
                }
            });
        }
    }
    // Reaping resumes once n5 is a member again and its copies are reconciled.
    wait_for(
        "reaping to resume on n1",
        CLUSTER_DEADLINE,
        || match api::status(&n1)?.reaping_paused {
            Some(r) if r.contains("removed") => Err(r),
            _ => Ok(()),
        },
    );
}

#[test]
fn a_node_removed_while_cut_off_hands_its_writes_over_before_it_stops() {
    let mut cluster = TestCluster::start_converged(options(5));
    let n5 = cluster.url(4);
    // Cut n5 off from the rest: only it takes these writes (w=1, sloppy quorum).
    for i in 0..4 {
        cluster.nodes[i].pause();
    }
    for name in ["n1", "n2", "n3", "n4"] {
        cluster.wait_state(&[4], name, "down");
    }
    for i in 0..KEYS {
        api::put_ok(
            &n5,
            "b",
            &key(i),
            format!("only n5 took {i}").as_bytes(),
            "w=1",
            None,
        );
    }
    // Now the rest come back while n5 is the one cut off, and an operator removes it.
    cluster.nodes[4].pause();
    for i in 0..4 {
        cluster.nodes[i].resume();
    }
    cluster.wait_state(&[0, 1, 2, 3], "n5", "down");
    remove(&cluster, 0, "n5");
    cluster.wait_state(&[0, 1, 2, 3], "n5", "left");

    cluster.nodes[4].resume();
    assert_eq!(
        cluster.nodes[4].wait_exit(Duration::from_secs(120)),
        Some(2),
        "the removed node stops (exit 2) once it handed everything over"
    );
    let log = cluster.nodes[4].log_text();
    assert!(
        log.contains("handed every key over"),
        "n5's log says why it stopped"
    );
    let n1 = cluster.url(0);
    for i in 0..KEYS {
        let (status, _, values) = api::get_json(&n1, "b", &key(i), "").unwrap();
        assert_eq!(
            status,
            200,
            "{}: n5 acknowledged it, and it is gone",
            key(i)
        );
        assert_eq!(values, vec![format!("only n5 took {i}").into_bytes()]);
    }
}

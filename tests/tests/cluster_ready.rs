//! `/ready` on real processes: a node that found fewer ring members than a key's N replicas
//! is alive (`/health` 200) but not ready (`/ready` 503 `too_few_members`), and becomes
//! ready once the others join; meanwhile it says why in its log at WARN. Every wait is on
//! a condition with a generous deadline.

use chorus_tests::api;
use chorus_tests::cluster::{wait_for, ClusterOptions, TestCluster, CLUSTER_DEADLINE};

/// `/ready`'s status and error code (`ready` for a 200).
fn readiness(base: &str) -> Result<(u16, String), String> {
    let r = api::get(base, "/ready")?;
    let body = r.json()?;
    let code = match r.status {
        200 => body["status"].as_str(),
        _ => body["error"].as_str(),
    };
    Ok((r.status, code.unwrap_or_default().to_string()))
}

#[test]
fn a_node_alone_is_alive_but_not_ready_until_n_members_join() {
    let mut cluster = TestCluster::start(ClusterOptions {
        nodes: 1,
        ..Default::default()
    });
    cluster.nodes[0].wait_healthy();
    let alone = cluster.url(0);
    assert_eq!(
        readiness(&alone).unwrap(),
        (503, "too_few_members".to_string()),
        "a lonely node with n=3 is not ready"
    );
    let health = api::get(&alone, "/health").unwrap();
    assert_eq!(health.status, 200, "a lonely node is still alive");
    let node = &cluster.nodes[0];
    wait_for(
        "the lonely node to warn in its log",
        CLUSTER_DEADLINE,
        || {
            let log = node.log_text();
            match log.contains("WARN") && log.contains("not ready") && log.contains("--seeds") {
                true => Ok(()),
                false => Err(log.lines().last().unwrap_or_default().to_string()),
            }
        },
    );

    for name in ["n2", "n3"] {
        let i = cluster.add_node(name, Some(cluster.certs.clone()), Vec::new());
        cluster.nodes[i].start();
    }
    for i in 0..3 {
        let url = cluster.url(i);
        wait_for(
            &format!("n{} to be ready", i + 1),
            CLUSTER_DEADLINE,
            || match readiness(&url)? {
                (200, status) if status == "ready" => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }

    // A member that dies is still a member: one down node must not take every other
    // node out of a load balancer's rotation.
    cluster.nodes[2].kill9();
    cluster.wait_alive(&[0, 1], &["n1", "n2"]);
    assert_eq!(
        readiness(&cluster.url(0)).unwrap(),
        (200, "ready".to_string())
    );
}

/// Issue 25 item 5: failed gossip to a seed reaches WARN (once per 10 s per address), so a
/// wrong `--seeds` entry shows in the log without raising RUST_LOG.
#[test]
fn a_seed_nobody_listens_at_is_reported_at_warn() {
    let nobody = format!("127.0.0.1:{}", chorus_tests::cluster::free_port());
    let mut cluster = TestCluster::start(ClusterOptions {
        nodes: 1,
        extra_args: chorus_tests::cluster::args(&["--seeds", &nobody]),
        ..Default::default()
    });
    cluster.nodes[0].wait_healthy();
    let node = &cluster.nodes[0];
    let expected = format!("gossip to {nobody} failed");
    let warned = wait_for(
        "the failed seed to be logged at WARN",
        CLUSTER_DEADLINE,
        || {
            let log = node.log_text();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(&expected)).collect();
            match lines.iter().any(|l| l.contains("WARN")) {
                true => Ok(lines.len()),
                false => Err(format!("{} matching lines, none at WARN", lines.len())),
            }
        },
    );
    assert!(warned >= 1);
    cluster.nodes[0].stop();
}

//! Addresses that name machines, on real processes: nodes that advertise and seed by DNS
//! name (`localhost:PORT`; every socket still binds 127.0.0.1) form a cluster, gossip the
//! names, and replicate through them; a wildcard `--listen` without `--advertise` is
//! refused before anything binds or is written.

use std::process::Command;

use chorus_tests::api;
use chorus_tests::cluster::{chorus_bin, free_port, ClusterOptions, TestCluster};

#[test]
fn nodes_named_by_dns_form_a_cluster_and_replicate_through_the_names() {
    let cluster = TestCluster::start_converged(ClusterOptions {
        nodes: 3,
        first_node_as_seed: true,
        names: true,
        ..Default::default()
    });
    for i in 0..3 {
        let status = api::status(&cluster.url(i)).unwrap();
        for member in &status.members {
            let node = &cluster.nodes[cluster.index_of(&member.name)];
            assert_eq!(
                member.address,
                format!("localhost:{}", node.listen.port()),
                "n{} gossips {}'s advertised name",
                i + 1,
                member.name
            );
        }
    }
    // w=all needs every replica over QUIC, each dialled by its resolved name.
    api::put_ok(&cluster.url(0), "b", "k", b"v", "w=all", None);
    let (status, _, values) = api::get_json(&cluster.url(2), "b", "k", "r=all").unwrap();
    assert_eq!((status, values), (200, vec![b"v".to_vec()]));
}

#[test]
fn a_wildcard_listen_without_advertise_is_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n1");
    let out = Command::new(chorus_bin())
        .args(["start", "--name", "n1", "--insecure"])
        .args(["--listen", &format!("0.0.0.0:{}", free_port())])
        .args(["--http", &format!("127.0.0.1:{}", free_port())])
        .arg("--data")
        .arg(&data)
        .output()
        .expect("run chorus start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--advertise"), "{stderr}");
    assert!(!data.exists(), "nothing is written before the refusal");
}

#[test]
fn a_seed_that_is_not_host_and_port_is_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["db2", "db_2:7000", "db2:0", "db2:70000"] {
        let out = Command::new(chorus_bin())
            .args(["start", "--name", "n1", "--insecure"])
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--http", &format!("127.0.0.1:{}", free_port())])
            .arg("--data")
            .arg(dir.path().join("n1"))
            .args(["--seeds", bad])
            .output()
            .expect("run chorus start");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains(bad), "{bad}: {stderr}");
    }
}

//! Keyspace operations against real `chorus` processes (issue 18): key listing pages back
//! exactly the live keys through every node, with a node down, and says when a partition
//! could not be covered; conditional writes (`If-None-Match: *`, `If-Match`) refuse with
//! 412 exactly when their precondition does not hold; bucket properties set through one
//! node are in force on every node and after a full restart, judged by what requests do
//! (a refused sibling, a refused quorum), not by what the nodes report. Expected key sets
//! come from what the test wrote and deleted, never from the server's answers.

use std::collections::BTreeSet;

use chorus_api::{KeyPageBody, CONTEXT_HEADER};
use chorus_tests::api::{self, assert_error};
use chorus_tests::cluster::{
    args, chorus_bin, wait_for, ClusterOptions, TestCluster, CLUSTER_DEADLINE,
};

const BUCKETS: [&str; 3] = ["users", "orders", "users2"];
/// Keys per bucket: 25,002 in all.
const KEYS: usize = 8_334;

fn key(i: usize) -> String {
    format!("key-{i:05}")
}

/// Writes `KEYS` keys into each bucket from 8 threads, then deletes every tenth key of
/// the first bucket. Returns the live keys per bucket.
fn fill(url: &str) -> Vec<BTreeSet<String>> {
    std::thread::scope(|scope| {
        for t in 0..8 {
            scope.spawn(move || {
                for (b, bucket) in BUCKETS.iter().enumerate() {
                    for i in (t..KEYS).step_by(8) {
                        let value = format!("{b}-{i}");
                        api::put_ok(url, bucket, &key(i), value.as_bytes(), "w=all", None);
                        if b == 0 && i % 10 == 0 {
                            let r = api::delete(url, bucket, &key(i), "w=all", None).unwrap();
                            assert_eq!(r.status, 204, "{}", r.error_message());
                        }
                    }
                }
            });
        }
    });
    BUCKETS
        .iter()
        .enumerate()
        .map(|(b, _)| {
            (0..KEYS)
                .filter(|i| b != 0 || i % 10 != 0)
                .map(key)
                .collect()
        })
        .collect()
}

fn page(url: &str, bucket: &str, limit: usize, after: Option<&str>) -> KeyPageBody {
    let mut path = format!("/kv/{bucket}?keys=true&limit={limit}");
    if let Some(after) = after {
        path += &format!("&after={after}");
    }
    let r = api::get(url, &path).unwrap();
    assert_eq!(r.status, 200, "{path}: {}", r.error_message());
    serde_json::from_slice(&r.body).expect("a listing page")
}

/// Every page of a listing, checked for order, bounds and duplicates; returns the keys
/// and whether every page was complete.
fn list_all(url: &str, bucket: &str, limit: usize) -> (Vec<String>, bool) {
    let mut keys: Vec<String> = Vec::new();
    let mut complete = true;
    let mut after: Option<String> = None;
    for _ in 0..10_000 {
        let p = page(url, bucket, limit, after.as_deref());
        assert!(p.keys.len() <= limit, "a page of {} keys", p.keys.len());
        complete &= p.complete;
        keys.extend(
            p.keys.iter().map(|k| {
                String::from_utf8(k.bytes().expect("a key")).expect("HTTP keys are UTF-8")
            }),
        );
        match p.next {
            Some(next) => after = Some(next),
            None => return (keys, complete),
        }
    }
    panic!("a listing of {bucket} did not end after 10,000 pages");
}

fn assert_lists_exactly(url: &str, bucket: &str, limit: usize, want: &BTreeSet<String>) {
    let (keys, complete) = list_all(url, bucket, limit);
    assert!(
        complete,
        "{bucket} through {url}: a partition was not covered"
    );
    let unique: BTreeSet<String> = keys.iter().cloned().collect();
    assert_eq!(unique.len(), keys.len(), "{bucket}: a key was listed twice");
    let missing: Vec<_> = want.difference(&unique).take(5).collect();
    let extra: Vec<_> = unique.difference(want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{bucket} through {url} (limit {limit}): {} listed, {} written; missing {missing:?}, not live {extra:?}",
        unique.len(),
        want.len()
    );
}

#[test]
fn listing_25k_keys_in_3_buckets_pages_back_exactly_the_live_keys_through_every_node() {
    let mut cluster = TestCluster::start_converged(ClusterOptions {
        extra_args: args(&["--healing-interval-ms", "600000"]),
        ..Default::default()
    });
    let live = fill(&cluster.url(0));
    for (i, limit) in [(0, 1000), (1, 777), (2, 10_000)] {
        for (bucket, want) in BUCKETS.iter().zip(&live) {
            assert_lists_exactly(&cluster.url(i), bucket, limit, want);
        }
    }
    assert!(list_all(&cluster.url(0), "never-written", 100).0.is_empty());

    // N=3 on 3 nodes: with one node dead every partition still has a primary to ask.
    cluster.nodes[2].kill9();
    for i in [0, 1] {
        assert_lists_exactly(&cluster.url(i), BUCKETS[0], 1000, &live[0]);
    }
    assert!(api::metric(&cluster.url(0), "chorus_list_pages").unwrap() > 0.0);

    // The CLI pages through everything too.
    let out = std::process::Command::new(chorus_bin())
        .args(["keys", BUCKETS[1], "--all", "--limit", "5000", "--node"])
        .arg(cluster.url(0))
        .output()
        .expect("run chorus keys");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: BTreeSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(printed, live[1]);
}

#[test]
fn a_partition_no_replica_answers_for_is_named_and_its_keys_are_not_guessed() {
    let mut cluster = TestCluster::start_converged(ClusterOptions {
        extra_args: args(&["--healing-interval-ms", "600000", "--n", "1"]),
        ..Default::default()
    });
    let url = cluster.url(0);
    let keys: Vec<String> = (0..300).map(key).collect();
    for k in &keys {
        api::put_ok(&url, "b", k, b"v", "w=1", None);
    }
    // Where each key lives, from the ring (N=1: one owner).
    let owner: Vec<String> = keys
        .iter()
        .map(|k| api::owners(&url, "b", k).unwrap().remove(0))
        .collect();
    cluster.nodes[2].kill9();
    let want: BTreeSet<String> = keys
        .iter()
        .zip(&owner)
        .filter(|(_, o)| *o != "n3")
        .map(|(k, _)| k.clone())
        .collect();
    assert!(want.len() < keys.len(), "n3 owns none of 300 keys");

    let (listed, complete) = list_all(&url, "b", 1000);
    assert!(!complete, "n3's partitions cannot be covered with n3 dead");
    assert_eq!(listed.iter().cloned().collect::<BTreeSet<_>>(), want);
    let first = page(&url, "b", 10_000, None);
    assert!(!first.uncovered_partitions.is_empty());

    let out = std::process::Command::new(chorus_bin())
        .args(["keys", "b", "--all", "--node", &url])
        .output()
        .expect("run chorus keys");
    assert_eq!(out.status.code(), Some(1), "an incomplete listing exits 1");
    assert!(String::from_utf8_lossy(&out.stderr).contains("incomplete"));
}

#[test]
fn listing_parameters_are_checked() {
    let cluster = TestCluster::start_converged(ClusterOptions {
        nodes: 1,
        extra_args: args(&["--n", "1"]),
        ..Default::default()
    });
    let url = cluster.url(0);
    for (path, code) in [
        ("/kv/b", "invalid_parameter"),
        ("/kv/b?keys=true&limit=0", "invalid_parameter"),
        ("/kv/b?keys=true&limit=10001", "invalid_parameter"),
        ("/kv/b?keys=true&after=nonsense", "invalid_cursor"),
        ("/kv/b?keys=true&r=2", "invalid_parameter"),
    ] {
        assert_error(&api::get(&url, path).unwrap(), 400, code, path);
    }
}

fn put_with(url: &str, key: &str, value: &[u8], headers: &[(&str, &str)]) -> api::Response {
    api::call(url, "PUT", &api::kv("c", key, ""), headers, value).unwrap()
}

#[test]
fn conditional_writes_refuse_with_412_exactly_when_their_precondition_fails() {
    let cluster = TestCluster::start_converged(ClusterOptions::default());
    let (n1, n2) = (cluster.url(0), cluster.url(1));

    // If-None-Match: * creates a missing key, then refuses: the value stays the first one.
    let created = put_with(&n1, "new", b"first", &[("if-none-match", "*")]);
    assert_eq!(created.status, 204, "{}", created.error_message());
    let refused = put_with(&n2, "new", b"second", &[("if-none-match", "*")]);
    assert_error(
        &refused,
        412,
        "precondition_failed",
        "If-None-Match on an existing key",
    );
    let current = refused
        .header(CONTEXT_HEADER)
        .expect("a 412 carries the context");
    let (status, context, values) = api::get_json(&n1, "c", "new", "r=all").unwrap();
    assert_eq!((status, values), (200, vec![b"first".to_vec()]));
    assert_eq!(current, context);

    // A deleted key counts as absent.
    let r = api::delete(&n1, "c", "new", "w=all", None).unwrap();
    assert_eq!(r.status, 204);
    let again = put_with(&n2, "new", b"third", &[("if-none-match", "*")]);
    assert_eq!(again.status, 204, "{}", again.error_message());

    // If-Match: a context from before another write is stale; a fresh one replaces all.
    let stale = api::put_ok(&n1, "c", "m", b"v1", "w=all", None);
    let (_, read, _) = api::get_json(&n1, "c", "m", "r=all").unwrap();
    api::put_ok(&n2, "c", "m", b"v2", "w=all", Some(&read));
    for old in [read.as_str(), stale.as_str()] {
        let r = put_with(&n1, "m", b"v3", &[("if-match", old)]);
        assert_error(
            &r,
            412,
            "precondition_failed",
            "If-Match with a stale context",
        );
    }
    let (_, fresh, _) = api::get_json(&n1, "c", "m", "r=all").unwrap();
    let quoted = format!("\"{fresh}\"");
    let ok = put_with(&n2, "m", b"v4", &[("if-match", &quoted)]);
    assert_eq!(ok.status, 204, "{}", ok.error_message());
    let (_, _, values) = api::get_json(&n1, "c", "m", "r=all").unwrap();
    assert_eq!(values, vec![b"v4".to_vec()], "If-Match leaves no sibling");
    assert!(api::metric(&n1, "chorus_precondition_failed").unwrap() >= 2.0);

    for headers in [
        vec![("if-none-match", "\"x\"")],
        vec![("if-none-match", "*"), ("if-match", fresh.as_str())],
        vec![
            ("if-match", fresh.as_str()),
            (CONTEXT_HEADER, fresh.as_str()),
        ],
    ] {
        let r = put_with(&n1, "m", b"x", &headers);
        assert_error(&r, 400, "invalid_precondition", &format!("{headers:?}"));
    }
    let other_key = put_with(&n1, "other", b"x", &[("if-match", fresh.as_str())]);
    assert_error(
        &other_key,
        400,
        "invalid_context",
        "If-Match with another key's context",
    );

    // The CLI: --if-absent on an existing key exits 1 and prints the current context.
    let out = std::process::Command::new(chorus_bin())
        .args(["put", "c", "m", "x", "--if-absent", "--node", &n1])
        .output()
        .expect("run chorus put");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("context: "));
}

/// Whether `url` enforces `max_siblings` = 2 on bucket `b` now: two blind writes to a
/// fresh key, then a third must be refused (409). Each probe uses its own key.
fn enforces_two_siblings(url: &str, probe: &mut u32) -> Result<(), String> {
    *probe += 1;
    let key = format!("probe-{probe}");
    for v in [b"1", b"2"] {
        let r = api::put(url, "b", &key, v, "w=1", None)?;
        if r.status != 204 {
            return Err(format!("blind write {}: {}", r.status, r.error_message()));
        }
    }
    let third = api::put(url, "b", &key, b"3", "w=1", None)?;
    match third.status {
        409 => Ok(()),
        other => Err(format!("a third sibling got {other}")),
    }
}

fn props_put(url: &str, body: &str) -> api::Response {
    api::put_props(url, "b", body).unwrap()
}

#[test]
fn bucket_properties_set_on_one_node_are_in_force_on_every_node_and_after_a_full_restart() {
    let mut cluster = TestCluster::start_converged(ClusterOptions::default());
    let mut probe = 0;
    // Before: three blind writes are three siblings.
    let key = "before";
    for v in [b"1", b"2", b"3"] {
        api::put_ok(&cluster.url(1), "b", key, v, "w=1", None);
    }
    let r = props_put(&cluster.url(0), r#"{"w": "all", "max_siblings": 2}"#);
    assert_eq!(r.status, 200, "{}", r.error_message());
    for i in 0..3 {
        let url = cluster.url(i);
        wait_for(
            &format!("n{} to enforce the props", i + 1),
            CLUSTER_DEADLINE,
            || enforces_two_siblings(&url, &mut probe),
        );
        let shown = api::props(&url, "b").unwrap();
        assert_eq!(shown.props.w.as_deref(), Some("all"), "{shown:?}");
        assert_eq!(shown.set_by.as_deref(), Some("n1"), "{shown:?}");
    }
    // w=all from the bucket: with n3 dead a default write fails, the request's own w wins.
    cluster.nodes[2].kill9();
    let r = api::put(&cluster.url(1), "b", "w", b"x", "", None).unwrap();
    assert_error(
        &r,
        503,
        "quorum_unavailable",
        "w=all from the bucket's props",
    );
    assert_eq!(r.json().unwrap()["needed"], 3);
    api::put_ok(&cluster.url(1), "b", "w", b"x", "w=2", None);

    // A full restart: every node stops, then all start again.
    cluster.nodes[2].start();
    for node in &mut cluster.nodes {
        node.stop();
    }
    for node in &mut cluster.nodes {
        node.start();
    }
    for node in &cluster.nodes {
        node.wait_healthy();
    }
    cluster.wait_alive(&[0, 1, 2], &["n1", "n2", "n3"]);
    for i in 0..3 {
        let url = cluster.url(i);
        wait_for(
            &format!("n{} to enforce the props after the restart", i + 1),
            CLUSTER_DEADLINE,
            || enforces_two_siblings(&url, &mut probe),
        );
    }
    // Clearing them brings the node defaults back everywhere.
    let r = props_put(&cluster.url(2), "{}");
    assert_eq!(r.status, 200, "{}", r.error_message());
    for i in 0..3 {
        let url = cluster.url(i);
        wait_for(
            &format!("n{} to drop the props", i + 1),
            CLUSTER_DEADLINE,
            || match enforces_two_siblings(&url, &mut probe) {
                Ok(()) => Err("still refuses a third sibling".to_string()),
                Err(_) => Ok(()),
            },
        );
    }
    for bad in [
        r#"{"r": "5"}"#,
        r#"{"expiry": 5}"#,
        r#"{"ttl": 0}"#,
        "not json",
        r#"{"pr": "3", "r": "1"}"#,
    ] {
        assert_error(&props_put(&cluster.url(0), bad), 400, "invalid_props", bad);
    }
}

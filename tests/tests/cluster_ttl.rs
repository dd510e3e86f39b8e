//! TTL against real `chorus` processes (issue 18): a value written with a TTL is gone from
//! every read once it expires, its expiry changes no Merkle tree, the reaper takes it off
//! every disk once every owner holds it, and it stays gone after a node that was down
//! during the expiry returns and anti-entropy runs. Values without a TTL, written beside
//! them, must all stay. What is expected comes from what the test wrote, never from the
//! server's answers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chorus_api::EXPIRES_AT_HEADER;
use chorus_tests::api::{self, assert_error};
use chorus_tests::cluster::{args, wait_for, ClusterOptions, TestCluster, CLUSTER_DEADLINE};

const BUCKET: &str = "sessions";
const KEYS: usize = 100;

fn expiring(i: usize) -> String {
    format!("t{i:03}")
}

fn kept(i: usize) -> String {
    format!("p{i:03}")
}

/// Each node's Merkle root per partition it holds.
fn roots(url: &str) -> BTreeMap<u64, String> {
    api::partitions(url)
        .unwrap()
        .into_iter()
        .map(|(id, _, _, root)| (id, root))
        .collect()
}

/// Every key answers `status` through `url` at `query`.
fn all_answer(
    url: &str,
    keys: impl Iterator<Item = String>,
    query: &str,
    status: u16,
) -> Result<(), String> {
    for key in keys {
        let r = api::get_kv(url, BUCKET, &key, query)?;
        if r.status != status {
            return Err(format!(
                "{key} through {url} ({query}): {} not {status}",
                r.status
            ));
        }
    }
    Ok(())
}

fn sum_metric(cluster: &TestCluster, name: &str) -> f64 {
    (0..3)
        .map(|i| api::metric(&cluster.url(i), name).unwrap())
        .sum()
}

#[test]
fn values_with_a_ttl_vanish_at_expiry_leave_the_trees_alone_are_reaped_and_stay_gone() {
    let mut cluster = TestCluster::start_converged(ClusterOptions {
        extra_args: args(&[
            "--healing-interval-ms",
            "200",
            "--tombstone-grace-ms",
            "1000",
        ]),
        ..Default::default()
    });
    let n1 = cluster.url(0);
    let written = Instant::now();
    for i in 0..KEYS {
        api::put_ok(
            &n1,
            BUCKET,
            &expiring(i),
            b"short-lived",
            "w=all&ttl=2",
            None,
        );
        api::put_ok(&n1, BUCKET, &kept(i), b"kept", "w=all", None);
    }
    let first = api::get_kv(&n1, BUCKET, &expiring(0), "r=all").unwrap();
    if written.elapsed() < Duration::from_millis(1_500) {
        assert_eq!(first.status, 200, "a value read before its TTL is there");
        assert!(
            first.header(EXPIRES_AT_HEADER).is_some(),
            "the read says when it expires"
        );
    }

    // n3 is down through the expiry: no owner may reap meanwhile, and it returns holding
    // every expired value.
    assert_eq!(cluster.nodes[2].stop(), Some(0), "a clean stop");
    let before = [roots(&n1), roots(&cluster.url(1))];
    wait_for("every TTL value to expire", CLUSTER_DEADLINE, || {
        all_answer(&n1, (0..KEYS).map(expiring), "r=2", 404)
    });
    assert!(
        written.elapsed() >= Duration::from_secs(2),
        "expired before its TTL"
    );
    all_answer(&n1, (0..KEYS).map(kept), "r=2", 200).unwrap();
    let after = [roots(&n1), roots(&cluster.url(1))];
    assert_eq!(
        before, after,
        "an expiry changed a Merkle tree (nothing was written)"
    );
    assert!(
        api::local(&n1, BUCKET, &expiring(0)).unwrap().is_some(),
        "reaped while an owner was down"
    );

    cluster.nodes[2].start();
    cluster.nodes[2].wait_healthy();
    let n3 = cluster.url(2);
    // Before it heard from anyone, n3 answers from its own copies: expired, so absent.
    all_answer(&n3, (0..KEYS).map(expiring), "r=one", 404).unwrap();
    cluster.wait_alive(&[0, 1, 2], &["n1", "n2", "n3"]);
    wait_for(
        "the reaper to take every expired key off every disk",
        CLUSTER_DEADLINE,
        || {
            for i in 0..3 {
                for k in (0..KEYS).map(expiring) {
                    if api::local(&cluster.url(i), BUCKET, &k)?.is_some() {
                        return Err(format!("n{} still holds {k}", i + 1));
                    }
                }
            }
            Ok(())
        },
    );
    assert!(sum_metric(&cluster, "chorus_expired_keys_reaped") >= (3 * KEYS) as f64);
    assert!(sum_metric(&cluster, "chorus_reaped_bytes") > 0.0);

    // Anti-entropy rounds on every node must not bring any of them back.
    let exchanges = |i: usize| api::metric(&cluster.url(i), "chorus_aae_exchanges").unwrap();
    let start: Vec<f64> = (0..3).map(exchanges).collect();
    wait_for(
        "five more anti-entropy exchanges per node",
        CLUSTER_DEADLINE,
        || match (0..3).find(|&i| exchanges(i) < start[i] + 5.0) {
            Some(i) => Err(format!(
                "n{} has done {} more",
                i + 1,
                exchanges(i) - start[i]
            )),
            None => Ok(()),
        },
    );
    for i in 0..3 {
        let url = cluster.url(i);
        all_answer(&url, (0..KEYS).map(expiring), "r=all", 404).unwrap();
        all_answer(&url, (0..KEYS).map(kept), "r=all", 200).unwrap();
        for k in (0..KEYS).map(expiring) {
            assert!(
                api::local(&url, BUCKET, &k).unwrap().is_none(),
                "{k} came back on n{}",
                i + 1
            );
        }
    }
}

#[test]
fn a_bucket_ttl_applies_unless_the_write_gives_its_own_and_bad_ttls_are_refused() {
    let cluster = TestCluster::start_converged(ClusterOptions::default());
    let n1 = cluster.url(0);
    let r = api::call(&n1, "PUT", "/buckets/short/props", &[], br#"{"ttl": 1}"#).unwrap();
    assert_eq!(r.status, 200, "{}", r.error_message());
    let n2 = cluster.url(1);
    // Judged by what a write through n2 does: its value comes back with an expiry.
    let mut probes = 0;
    wait_for("n2 to apply the bucket's ttl", CLUSTER_DEADLINE, || {
        probes += 1;
        let probe = format!("probe{probes}");
        api::put_ok(&n2, "short", &probe, b"v", "w=all", None);
        match api::get_kv(&n2, "short", &probe, "r=all")?.header(EXPIRES_AT_HEADER) {
            Some(_) => Ok(()),
            None => Err("written without an expiry".to_string()),
        }
    });
    let put = |key: &str, headers: &[(&str, &str)]| {
        let path = api::kv("short", key, "w=all");
        api::call(&n2, "PUT", &path, headers, b"v").unwrap()
    };
    let written = Instant::now();
    assert_eq!(put("default", &[]).status, 204);
    assert_eq!(put("none", &[("x-chorus-ttl", "none")]).status, 204);
    assert_eq!(put("hour", &[("x-chorus-ttl", "1h")]).status, 204);
    let hour = api::get_kv(&n1, "short", "hour", "r=all").unwrap();
    let at: u64 = hour
        .header(EXPIRES_AT_HEADER)
        .expect("an expiry")
        .parse()
        .unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        (now_ms + 3_500_000..=now_ms + 3_600_000).contains(&at),
        "expires at {at}, now {now_ms}"
    );
    wait_for(
        "the bucket's default ttl to expire a value",
        CLUSTER_DEADLINE,
        || match api::get_kv(&n1, "short", "default", "r=all")?.status {
            404 => Ok(()),
            other => Err(format!("still {other}")),
        },
    );
    assert!(
        written.elapsed() >= Duration::from_secs(1),
        "expired before its TTL"
    );
    for key in ["none", "hour"] {
        let r = api::get_kv(&n1, "short", key, "r=all").unwrap();
        assert_eq!(r.status, 200, "{key}: its own TTL overrides the bucket's");
    }
    assert!(api::get_kv(&n1, "short", "none", "")
        .unwrap()
        .header(EXPIRES_AT_HEADER)
        .is_none());

    // Refused, and nothing written.
    for (headers, query, what) in [
        (&[("x-chorus-ttl", "0")][..], "", "a zero TTL"),
        (
            &[("x-chorus-ttl", "soon")][..],
            "",
            "a TTL that is no duration",
        ),
        (&[][..], "ttl=3651d", "a TTL over ten years"),
        (&[("x-chorus-ttl", "5")][..], "ttl=5", "a TTL given twice"),
    ] {
        let r = api::call(
            &n1,
            "PUT",
            &api::kv("plain", "refused", query),
            headers,
            b"v",
        )
        .unwrap();
        assert_error(&r, 400, "invalid_ttl", what);
    }
    let r = api::get_kv(&n1, "plain", "refused", "ttl=5").unwrap();
    assert_error(&r, 400, "invalid_parameter", "a TTL on a GET");
    assert_eq!(
        api::get_kv(&n1, "plain", "refused", "r=all")
            .unwrap()
            .status,
        404
    );
    let r = api::call(&n1, "PUT", "/buckets/plain/props", &[], br#"{"ttl": 0}"#).unwrap();
    assert_eq!(r.status, 400, "a zero bucket ttl: {}", r.error_message());
}

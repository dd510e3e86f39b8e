//! Healing on real `chorus` processes: hinted handoff through a fallback, anti-entropy
//! rebuilding a wiped node, growing and shrinking the cluster under load, and a delete that
//! survives a node being down, restarts, anti-entropy and reaping. Healing rounds are made
//! short by flags; every wait is on a condition with a generous deadline.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chorus_tests::api::{self, Local};
use chorus_tests::cluster::{
    args, chorus_bin, wait_for, ClusterOptions, TestCluster, CLUSTER_DEADLINE,
};

/// Twice the usual deadline, for conditions that need many healing rounds.
const HEALING_DEADLINE: Duration = Duration::from_secs(120);

/// Writes `keys` (`prefix-{i}` = `value-{i}`) at `w` through the given nodes, from a few
/// threads; panics on any failure.
fn write_keys(urls: &[String], bucket: &str, prefix: &str, keys: usize, query: &str) {
    let threads = 4;
    std::thread::scope(|scope| {
        for t in 0..threads {
            let urls = urls.to_vec();
            scope.spawn(move || {
                for i in (t..keys).step_by(threads) {
                    api::put_ok(
                        &urls[i % urls.len()],
                        bucket,
                        &format!("{prefix}-{i}"),
                        format!("value-{i}").as_bytes(),
                        query,
                        None,
                    );
                }
            });
        }
    });
}

fn sum_metric(cluster: &TestCluster, nodes: &[usize], name: &str) -> f64 {
    nodes
        .iter()
        .map(|&i| api::metric(&cluster.url(i), name).unwrap_or(0.0))
        .sum()
}

#[test]
fn a_fallback_takes_writes_for_a_dead_owner_and_hands_them_over_after_its_restart() {
    let mut cluster = TestCluster::start_converged(ClusterOptions {
        nodes: 4,
        extra_args: args(&["--healing-interval-ms", "200"]),
        ..Default::default()
    });
    cluster.nodes[3].kill9();
    cluster.wait_state(&[0, 1, 2], "n4", "down");
    let live: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();

    // Writes at w=2 through every live node; for the keys n4 owns, a fallback stands in.
    let keys = 120;
    write_keys(&live, "h", "key", keys, "w=2");
    let mut hinted: Vec<(String, String)> = Vec::new(); // (key, fallback)
    for i in 0..keys {
        let key = format!("key-{i}");
        let list = api::preference_list(&live[0], "h", &key).unwrap();
        let primaries: Vec<&str> = list
            .iter()
            .filter(|(_, p)| *p)
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(primaries.len(), 3);
        if primaries.contains(&"n4") {
            let fallback = list
                .iter()
                .find(|(n, p)| !p && n != "n4")
                .map(|(n, _)| n.clone())
                .expect("a fallback");
            hinted.push((key, fallback));
        }
    }
    assert!(
        hinted.len() > keys / 2,
        "n4 owns {} of {keys} keys",
        hinted.len()
    );
    // Acknowledged at w=2 by the two live primaries, a write reaches its fallback a moment
    // later (replication goes on after the answer).
    wait_for(
        "every fallback to hold its hinted copies",
        CLUSTER_DEADLINE,
        || {
            for (key, fallback) in &hinted {
                let i = cluster.index_of(fallback);
                let value = format!("value-{}", key.trim_start_matches("key-")).into_bytes();
                if api::local(&cluster.url(i), "h", key)? != Some(Local::Values(vec![value])) {
                    return Err(format!("{fallback} does not hold the hinted copy of {key}"));
                }
            }
            Ok(())
        },
    );
    // w=3 needs the fallback too, and succeeds.
    let (key, _) = &hinted[0];
    api::put_ok(&live[1], "h", "sloppy", b"three copies", "w=3", None);
    let queued = sum_metric(&cluster, &[0, 1, 2], "chorus_hints_queued");
    assert!(
        queued >= hinted.len() as f64,
        "hints queued: {queued}, keys hinted: {}",
        hinted.len()
    );
    println!(
        "{} of {keys} keys written for n4 through fallbacks ({queued} hints queued); first: {key}",
        hinted.len()
    );

    // n4 comes back: it gets every hinted key, and the fallbacks drop their copies.
    let restarted = Instant::now();
    cluster.nodes[3].start();
    cluster.nodes[3].wait_healthy();
    let n4 = cluster.url(3);
    let mut pending = hinted.clone();
    wait_for("hinted handoff to n4", HEALING_DEADLINE, || {
        let mut still = Vec::new();
        for (key, fallback) in &pending {
            let on_owner = api::local(&n4, "h", key)?.is_some();
            let on_fallback =
                api::local(&cluster.url(cluster.index_of(fallback)), "h", key)?.is_some();
            if !on_owner || on_fallback {
                still.push((key.clone(), fallback.clone()));
            }
        }
        let left = still.len();
        pending = still;
        if left == 0 {
            Ok(())
        } else {
            Err(format!(
                "{left} keys not yet handed over, e.g. {:?}",
                pending.first()
            ))
        }
    });
    let elapsed = restarted.elapsed();
    for (key, _) in &hinted {
        let i_value = key.trim_start_matches("key-");
        assert_eq!(
            api::local(&n4, "h", key).unwrap(),
            Some(Local::Values(vec![format!("value-{i_value}").into_bytes()]))
        );
    }
    let delivered = sum_metric(&cluster, &[0, 1, 2], "chorus_hints_delivered");
    assert!(
        delivered >= hinted.len() as f64,
        "hints delivered: {delivered}"
    );
    println!(
        "FIGURE hinted handoff: {} keys on n4 and off the fallbacks {elapsed:?} after its restart",
        hinted.len()
    );
}

/// Stops a node, wipes its data directory and restarts it; healing alone (no reads) must
/// restore every key and make every replica's Merkle roots equal: anti-entropy for small
/// partitions, partition streams (`cluster_rebuild`) for those of 64 keys or more.
fn anti_entropy_restores_a_wiped_node(keys: usize) {
    let mut cluster = TestCluster::start_converged(ClusterOptions {
        nodes: 3,
        extra_args: args(&["--healing-interval-ms", "100"]),
        ..Default::default()
    });
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let writing = Instant::now();
    write_keys(&urls, "aae", "key", keys, "w=all");
    println!("wrote {keys} keys at w=all in {:?}", writing.elapsed());

    cluster.nodes[2].kill9();
    std::fs::remove_dir_all(&cluster.nodes[2].data).unwrap();
    let sent_before = sum_metric(&cluster, &[0, 1], "chorus_aae_bytes_sent");
    let received_before = sum_metric(&cluster, &[0, 1], "chorus_aae_bytes_received");
    let repaired_before = sum_metric(&cluster, &[0, 1], "chorus_aae_keys_repaired");
    let restarted = Instant::now();
    cluster.nodes[2].start();
    cluster.nodes[2].wait_healthy();

    let roots = |i: usize| -> Result<BTreeMap<u64, (u64, String)>, String> {
        Ok(api::partitions(&cluster.url(i))?
            .into_iter()
            .map(|(id, _, keys, root)| (id, (keys, root)))
            .collect())
    };
    wait_for("anti-entropy to rebuild n3", HEALING_DEADLINE, || {
        let n3 = roots(2)?;
        let held: u64 = n3.values().map(|(k, _)| k).sum();
        if held != keys as u64 {
            return Err(format!("n3 holds {held} of {keys} keys"));
        }
        for i in 0..2 {
            let other = roots(i)?;
            if other != n3 {
                let differing = other.iter().filter(|(id, v)| n3.get(id) != Some(v)).count();
                return Err(format!(
                    "n{} and n3 differ in {differing} partitions",
                    i + 1
                ));
            }
        }
        Ok(())
    });
    let elapsed = restarted.elapsed();
    let sent = sum_metric(&cluster, &[0, 1, 2], "chorus_aae_bytes_sent") - sent_before;
    let received = sum_metric(&cluster, &[0, 1, 2], "chorus_aae_bytes_received") - received_before;
    let repaired = sum_metric(&cluster, &[0, 1, 2], "chorus_aae_keys_repaired") - repaired_before;
    let exchanges = sum_metric(&cluster, &[0, 1, 2], "chorus_aae_exchanges");
    // Partitions of at least `rebuild::MIN_BULK_KEYS` keys are streamed whole instead.
    let streamed = sum_metric(&cluster, &[2], "chorus_rebuild_keys");
    assert!(
        repaired + streamed >= keys as f64,
        "keys repaired: {repaired}, streamed: {streamed}"
    );
    // The repair must not have come from reads: none were made.
    assert_eq!(sum_metric(&cluster, &[0, 1, 2], "chorus_read_repairs"), 0.0);
    println!(
        "FIGURE anti-entropy restored {keys} keys on a wiped node in {elapsed:?}: {} bytes exchanged ({sent} sent and {received} received by the nodes that started the exchanges), {repaired} keys repaired, {streamed} streamed, {exchanges} exchanges (healing interval 100 ms, ring 64)",
        sent + received
    );
}

#[test]
fn anti_entropy_alone_restores_a_wiped_node_1k_keys() {
    let keys = std::env::var("CHORUS_AAE_KEYS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(1000);
    anti_entropy_restores_a_wiped_node(keys);
}

#[test]
#[ignore = "10k keys: about 20 s more (debug build); run with --run-ignored only"]
fn anti_entropy_alone_restores_a_wiped_node_10k_keys() {
    anti_entropy_restores_a_wiped_node(10_000);
}

#[test]
fn growing_to_four_and_leaving_under_load_loses_no_acknowledged_write() {
    let extra = args(&["--n", "2", "--healing-interval-ms", "200"]);
    let mut cluster = TestCluster::start_converged(ClusterOptions {
        nodes: 3,
        extra_args: extra.clone(),
        ..Default::default()
    });
    let writer_urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut failures: BTreeMap<String, usize> = BTreeMap::new();
            for i in 0..5000 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(240) {
                    break;
                }
                let key = format!("load-{i}");
                let target = i % writer_urls.len();
                match api::put(
                    &writer_urls[target],
                    "grow",
                    &key,
                    key.as_bytes(),
                    "w=2&timeout=3000",
                    None,
                ) {
                    Ok(r) if r.status == 204 => acked.lock().unwrap().push(key),
                    Ok(r) => {
                        *failures
                            .entry(format!("n{}: HTTP {}", target + 1, r.status))
                            .or_default() += 1
                    }
                    Err(_) => {
                        *failures
                            .entry(format!("n{}: no answer", target + 1))
                            .or_default() += 1
                    }
                }
                std::thread::sleep(Duration::from_millis(20)); // a light load: ~50 writes/s at most
            }
            failures
        })
    };
    let acked_count = || acked.lock().unwrap().len();
    wait_for("the load to get going", CLUSTER_DEADLINE, || {
        if acked_count() >= 50 {
            Ok(())
        } else {
            Err(format!("{} acked", acked_count()))
        }
    });

    // Grow: n4 joins under load and takes its share.
    let certs = cluster.certs.clone();
    let n4 = cluster.add_node("n4", Some(certs), extra);
    let joining = Instant::now();
    cluster.nodes[n4].start();
    cluster.nodes[n4].wait_healthy();
    cluster.wait_alive(&[0, 1, 2, 3], &["n1", "n2", "n3", "n4"]);
    let at_join = acked_count();
    wait_for(
        "transfers to n4 to finish under load",
        HEALING_DEADLINE,
        || {
            for i in 0..4 {
                let status = api::status(&cluster.url(i))?;
                let transfers = status.transfers.len();
                if transfers > 0 {
                    return Err(format!("n{} still transfers {transfers} partitions", i + 1));
                }
                if api::partitions(&cluster.url(i))?
                    .iter()
                    .any(|(_, role, keys, _)| role == "fallback" && *keys > 0)
                {
                    return Err(format!("n{} still holds data it does not own", i + 1));
                }
            }
            if api::partitions(&cluster.url(n4))?.is_empty() {
                return Err("n4 holds nothing yet".into());
            }
            if acked_count() < at_join + 50 {
                return Err(format!(
                    "only {} writes acknowledged since the join",
                    acked_count() - at_join
                ));
            }
            Ok(())
        },
    );
    println!(
        "FIGURE join: n4 took its share under load in {:?}",
        joining.elapsed()
    );

    // Leave: n3 hands its data over and exits, still under load.
    let leaving = Instant::now();
    let out = std::process::Command::new(chorus_bin())
        .args(["leave", "--node", &cluster.url(2), "--certs"])
        .arg(&cluster.certs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chorus leave: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let code = cluster.nodes[2].wait_exit(HEALING_DEADLINE);
    assert_eq!(
        code,
        Some(0),
        "n3 exits cleanly once it has handed everything over: {}",
        cluster.nodes[2].log_text()
    );
    let leave_time = leaving.elapsed();
    cluster.wait_state(&[0, 1, 3], "n3", "left");
    let at_leave = acked_count();
    wait_for("more writes after the leave", CLUSTER_DEADLINE, || {
        if acked_count() >= at_leave + 30 {
            Ok(())
        } else {
            Err(format!("{} since", acked_count() - at_leave))
        }
    });
    stop.store(true, Ordering::Relaxed);
    let failures = writer.join().unwrap();
    let acked: Vec<String> = acked.lock().unwrap().clone();
    println!("FIGURE leave: n3 handed over and exited in {leave_time:?}; {} writes acknowledged; not acknowledged: {failures:?}", acked.len());

    // Every acknowledged key is on exactly its N=2 owners, and on no other node.
    let remaining = [0usize, 1, 3];
    let owners: HashMap<String, Vec<String>> = acked
        .iter()
        .map(|k| (k.clone(), api::owners(&cluster.url(0), "grow", k).unwrap()))
        .collect();
    wait_for(
        "every acknowledged key on exactly its owners",
        HEALING_DEADLINE,
        || {
            for key in &acked {
                let expected = &owners[key];
                if expected.len() != 2 || expected.contains(&"n3".to_string()) {
                    return Err(format!("{key} is owned by {expected:?}"));
                }
                let mut holders = Vec::new();
                for &i in &remaining {
                    match api::local(&cluster.url(i), "grow", key)? {
                        Some(Local::Values(v)) if v == vec![key.as_bytes().to_vec()] => {
                            holders.push(cluster.nodes[i].name.clone())
                        }
                        Some(other) => return Err(format!("n{} holds {other:?} for {key}", i + 1)),
                        None => {}
                    }
                }
                holders.sort();
                let mut want = expected.clone();
                want.sort();
                if holders != want {
                    return Err(format!("{key} is on {holders:?}, owners {want:?}"));
                }
            }
            Ok(())
        },
    );
    for key in &acked {
        let r = api::get_kv(&cluster.url(0), "grow", key, "r=all").unwrap();
        assert_eq!((r.status, &r.body[..]), (200, key.as_bytes()), "{key}");
    }
    println!(
        "{} acknowledged keys, each on exactly its 2 owners",
        acked.len()
    );
}

#[test]
fn a_deleted_key_stays_deleted_through_a_down_owner_restarts_anti_entropy_and_reaping() {
    let mut cluster = TestCluster::start_converged(ClusterOptions {
        nodes: 3,
        extra_args: args(&[
            "--ring-size",
            "16",
            "--healing-interval-ms",
            "200",
            "--tombstone-grace-ms",
            "2000",
        ]),
        ..Default::default()
    });
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let n = |i: usize| urls[i].clone();
    api::put_ok(&n(0), "d", "gone", b"alive", "w=all", None);
    api::put_ok(&n(0), "d", "kept", b"still here", "w=all", None);
    let (_, context, _) = api::get_json(&n(1), "d", "gone", "r=all").unwrap();

    // Delete while n3 is down: n3 keeps the old value on disk.
    cluster.nodes[2].kill9();
    let r = api::delete(&n(0), "d", "gone", "w=2", Some(&context)).unwrap();
    assert_eq!(r.status, 204, "{}", r.error_message());
    assert_eq!(api::get_kv(&n(1), "d", "gone", "r=2").unwrap().status, 404);

    // n3 restarts with the stale value; anti-entropy (no reads) gives it the tombstone.
    cluster.nodes[2].start();
    cluster.nodes[2].wait_healthy();
    let restarted = Instant::now();
    // (n3 restarted with the old value on disk; a healing round may already be fixing it.)
    let at_restart = api::local(&n(2), "d", "gone").unwrap();
    assert!(
        matches!(at_restart, Some(Local::Values(_)) | Some(Local::Tombstone)),
        "n3 at restart: {at_restart:?}"
    );
    println!("n3 right after its restart holds {at_restart:?}");
    wait_for(
        "anti-entropy to bring the tombstone to n3",
        HEALING_DEADLINE,
        || match api::local(&n(2), "d", "gone")? {
            Some(Local::Tombstone) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    println!(
        "FIGURE tombstone reached the restarted node by anti-entropy in {:?}",
        restarted.elapsed()
    );
    for i in 0..3 {
        for query in ["r=all", "r=1"] {
            assert_eq!(
                api::get_kv(&n(i), "d", "gone", query).unwrap().status,
                404,
                "through n{} at {query}",
                i + 1
            );
        }
    }

    // Reaping: once every owner holds the tombstone for the grace period, it goes everywhere.
    let reaping = Instant::now();
    wait_for(
        "the tombstone to be reaped on every node",
        HEALING_DEADLINE,
        || {
            for i in 0..3 {
                if let Some(local) = api::local(&n(i), "d", "gone")? {
                    return Err(format!("n{} holds {local:?}", i + 1));
                }
            }
            Ok(())
        },
    );
    println!(
        "FIGURE tombstone reaped on all replicas {:?} after it was everywhere (grace 2 s)",
        reaping.elapsed()
    );

    // Restart n3 again, and let two full anti-entropy cycles run on every node: the key must
    // not come back from anywhere.
    cluster.nodes[2].restart();
    cluster.nodes[2].wait_healthy();
    cluster.wait_alive(&[0, 1, 2], &["n1", "n2", "n3"]);
    let exchanges: Vec<f64> = (0..3)
        .map(|i| api::metric(&n(i), "chorus_aae_exchanges").unwrap())
        .collect();
    wait_for(
        "two anti-entropy cycles on every node",
        HEALING_DEADLINE,
        || {
            for i in 0..3 {
                let now = api::metric(&n(i), "chorus_aae_exchanges")?;
                if now < exchanges[i] + 32.0 {
                    return Err(format!(
                        "n{}: {} exchanges since",
                        i + 1,
                        now - exchanges[i]
                    ));
                }
                if api::local(&n(i), "d", "gone")?.is_some() {
                    return Err(format!("the deleted key is back on n{}", i + 1));
                }
            }
            Ok(())
        },
    );
    for i in 0..3 {
        assert_eq!(
            api::local(&n(i), "d", "gone").unwrap(),
            None,
            "n{} holds the deleted key again",
            i + 1
        );
        assert_eq!(
            api::get_kv(&n(i), "d", "gone", "r=all").unwrap().status,
            404,
            "through n{}",
            i + 1
        );
        let r = api::get_kv(&n(i), "d", "kept", "r=all").unwrap();
        assert_eq!(
            (r.status, &r.body[..]),
            (200, &b"still here"[..]),
            "the other key is untouched"
        );
    }
}

//! Rebuilding a replaced node on real `chorus` processes: a node whose data directory was
//! wiped pulls its partitions as streams (`rebuild`), and a rebuild killed halfway resumes
//! from its persisted cursors and completes. Completeness is judged from the keys the test
//! wrote (each one read from the rebuilt node's own replica) and from Merkle roots equal
//! to the peers'; every wait is on a condition with a generous deadline.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chorus_tests::api::{self, Local};
use chorus_tests::cluster::{args, wait_for, ClusterOptions, TestCluster};

/// Generous: a debug build on 2 busy cores.
const REBUILD_DEADLINE: Duration = Duration::from_secs(180);
const THREADS: usize = 4;

fn key_count() -> usize {
    std::env::var("CHORUS_REBUILD_KEYS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(20_000)
}

/// What the test wrote: key -> Some(value), or None for a key it deleted afterwards.
type Written = BTreeMap<String, Option<String>>;

/// The value of key `i`: 100 bytes, as in the issue's measurement.
fn value(i: usize) -> String {
    format!("{i:0>100}")
}

/// Writes `prefix-{i}` = `value(i)` at w=all through the given nodes, then deletes every
/// tenth at w=all, so tombstones must stream too.
fn write_keys(urls: &[String], prefix: &str, keys: usize) -> Written {
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            scope.spawn(move || {
                for i in (t..keys).step_by(THREADS) {
                    let (url, key) = (&urls[i % urls.len()], format!("{prefix}-{i}"));
                    let context = api::put_ok(url, "r", &key, value(i).as_bytes(), "w=all", None);
                    if i % 10 == 0 {
                        let r = api::delete(url, "r", &key, "w=all", Some(&context)).unwrap();
                        assert_eq!(r.status, 204, "DELETE {key}: {}", r.error_message());
                    }
                }
            });
        }
    });
    (0..keys)
        .map(|i| (format!("{prefix}-{i}"), (i % 10 != 0).then(|| value(i))))
        .collect()
}

/// Every written key, read from node `url`'s own replica: the value written, or a tombstone.
fn assert_all_local(url: &str, written: &Written) {
    let entries: Vec<(&String, &Option<String>)> = written.iter().collect();
    let wrong: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = entries
            .chunks(entries.len().div_ceil(THREADS))
            .map(|chunk| {
                scope.spawn(move || {
                    let mut wrong = Vec::new();
                    for (key, value) in chunk {
                        let want = match value {
                            Some(v) => Local::Values(vec![v.as_bytes().to_vec()]),
                            None => Local::Tombstone,
                        };
                        let got = api::local(url, "r", key).unwrap();
                        if got.as_ref() != Some(&want) {
                            wrong.push(format!("{key}: {got:?}"));
                        }
                    }
                    wrong
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        wrong.is_empty(),
        "{} of {} keys wrong on the rebuilt node, e.g. {:?}",
        wrong.len(),
        written.len(),
        &wrong[..wrong.len().min(5)]
    );
}

/// Partition -> (keys, Merkle root) of one node.
fn roots(url: &str) -> Result<BTreeMap<u64, (u64, String)>, String> {
    Ok(api::partitions(url)?
        .into_iter()
        .map(|(id, _, keys, root)| (id, (keys, root)))
        .collect())
}

/// Waits until node 3 holds `keys` keys with every partition's count and root equal to
/// both peers'.
fn wait_rebuilt(cluster: &TestCluster, keys: usize) {
    wait_for("n3 to be rebuilt", REBUILD_DEADLINE, || {
        let n3 = roots(&cluster.url(2))?;
        let held: u64 = n3.values().map(|(k, _)| k).sum();
        if held != keys as u64 {
            return Err(format!("n3 holds {held} of {keys} keys"));
        }
        for i in 0..2 {
            let other = roots(&cluster.url(i))?;
            let differing = other.iter().filter(|(id, v)| n3.get(id) != Some(v)).count();
            if differing > 0 || other.len() != n3.len() {
                return Err(format!(
                    "n{} and n3 differ in {differing} partitions",
                    i + 1
                ));
            }
        }
        Ok(())
    });
}

fn metric(cluster: &TestCluster, i: usize, name: &str) -> f64 {
    api::metric(&cluster.url(i), name).unwrap_or(0.0)
}

/// Stops n3, wipes its data directory and starts it again, empty.
fn wipe_and_restart_n3(cluster: &mut TestCluster) -> Instant {
    cluster.nodes[2].kill9();
    std::fs::remove_dir_all(&cluster.nodes[2].data).unwrap();
    let started = Instant::now();
    cluster.nodes[2].start();
    cluster.nodes[2].wait_healthy();
    started
}

#[test]
fn a_wiped_node_is_rebuilt_by_partition_streams_with_every_key_and_tombstone() {
    let keys = key_count();
    let mut cluster = TestCluster::start_converged(ClusterOptions::default());
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let writing = Instant::now();
    let written = write_keys(&urls, "key", keys);
    println!("wrote {keys} keys at w=all in {:?}", writing.elapsed());

    let started = wipe_and_restart_n3(&mut cluster);
    wait_rebuilt(&cluster, keys);
    let elapsed = started.elapsed();
    let pulled = metric(&cluster, 2, "chorus_rebuild_keys");
    let bytes = metric(&cluster, 2, "chorus_rebuild_bytes");
    // The streams did the work, not one segment exchange per round (nor reads: none made).
    assert!(
        pulled >= keys as f64 * 0.9,
        "keys pulled by streams: {pulled}"
    );
    assert_eq!(metric(&cluster, 2, "chorus_read_repairs"), 0.0);
    println!(
        "FIGURE wiped node rebuilt ({keys} keys, every tenth a tombstone) in {elapsed:?}: {pulled} keys and {bytes} bytes streamed, {} keys repaired by anti-entropy (default flags, debug build)",
        metric(&cluster, 2, "chorus_aae_keys_repaired")
    );
    assert_all_local(&cluster.url(2), &written);
    let status = api::status(&cluster.url(2)).unwrap();
    assert_eq!(status.rebuild.partitions_pending, 0, "{status:?}");
    assert_eq!(status.rebuild.keys_done as f64, pulled, "{status:?}");
}

#[test]
fn a_rebuild_killed_halfway_resumes_from_its_cursors_and_loses_no_write() {
    let keys = key_count();
    // 256 KiB/s: the rebuild of about 3 MB lasts long enough to be caught halfway, and a
    // partition (about 45 KB) takes several pages of 16 KiB, so a kill leaves cursors.
    let mut cluster = TestCluster::start_converged(ClusterOptions {
        extra_args: args(&["--rebuild-bytes-per-s", "262144"]),
        ..Default::default()
    });
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let mut written = write_keys(&urls, "key", keys);
    // In repair mode n3 answers no read until every partition matched the other owners:
    // that must not end while streams are still filling it.
    cluster.nodes[2].set_extra_args(args(&["--rebuild-bytes-per-s", "262144", "--repair"]));
    wipe_and_restart_n3(&mut cluster);

    let n3 = cluster.url(2);
    let halfway = wait_for("n3's rebuild to be under way", REBUILD_DEADLINE, || {
        let status = api::status(&n3)?;
        let done = status.rebuild.keys_done;
        let pending = status.rebuild.partitions_pending;
        if done >= keys as u64 / 4 && pending > 0 {
            assert!(status.repairing, "repair ended mid-stream: {status:?}");
            Ok(done)
        } else {
            Err(format!("{:?}", status.rebuild))
        }
    });
    cluster.nodes[2].restart();
    cluster.nodes[2].wait_healthy();
    println!("killed n3 with {halfway} of {keys} keys streamed, restarted it");
    // Polled through the rest of the rebuild: the repair lasts at least as long as it.
    wait_for(
        "n3 to resume its streams and end them",
        REBUILD_DEADLINE,
        || {
            let status = api::status(&n3)?;
            let pending = status.rebuild.partitions_pending;
            assert!(
                pending == 0 || status.repairing,
                "repair ended mid-stream: {status:?}"
            );
            match metric(&cluster, 2, "chorus_rebuild_resumed") {
                r if r >= 1.0 && pending == 0 => Ok(()),
                r => Err(format!("{r} streams resumed, {pending} partitions pending")),
            }
        },
    );
    // Writes racing the streams are merged, never lost.
    written.extend(write_keys(&urls[..2], "during", 500));
    wait_rebuilt(&cluster, written.len());
    let pulled_after = metric(&cluster, 2, "chorus_rebuild_keys");
    assert!(
        pulled_after < keys as f64,
        "the restarted node pulled {pulled_after} keys: it started over"
    );
    println!("FIGURE after the restart n3 pulled {pulled_after} of {keys} keys to complete");
    wait_for(
        "n3's repair to end",
        REBUILD_DEADLINE,
        || match api::status(&n3)?.repairing {
            false => Ok(()),
            true => Err("still repairing".to_string()),
        },
    );
    assert_all_local(&n3, &written);
}

//! Crash tests of the disk engine: a child process writes as fast as it can and reports
//! each acknowledged put, the parent kills it with SIGKILL mid-stream, reopens the store
//! and checks that every acknowledged write is there with the right value. Also: opening
//! paths that cannot hold a store fails with an error, not a panic.
//!
//! The child is this same test binary re-executed on the ignored test `child_writer`
//! (`--exact child_writer --ignored --nocapture`), which does nothing unless the
//! environment names a directory; this works under both `cargo test` and
//! `cargo nextest run`, which both run libtest binaries.

use chorus_core::storage::{FjallStorage, PartitionId, Storage, StorageError, SyncMode};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DIR_VAR: &str = "CHORUS_DURABILITY_CHILD_DIR";
const MODE_VAR: &str = "CHORUS_DURABILITY_CHILD_MODE";
const WRITER_THREADS: u64 = 4;
const PARTITIONS: u64 = 8;
/// How long the parent waits for the acks it wants before declaring the child stuck.
const DEADLINE: Duration = Duration::from_secs(60);

fn mode(name: &str) -> SyncMode {
    name.parse().expect("sync mode")
}

fn key_of(id: u64) -> (PartitionId, Vec<u8>) {
    (
        (id % PARTITIONS) as PartitionId,
        format!("key-{id:08}").into_bytes(),
    )
}

/// 100 bytes that depend on the id, so a value from another key or a torn write shows.
fn value_of(id: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(100);
    while v.len() < 100 {
        v.extend_from_slice(
            &id.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(v.len() as u64)
                .to_le_bytes(),
        );
    }
    v.truncate(100);
    v
}

fn id_of(key: &[u8]) -> u64 {
    std::str::from_utf8(key)
        .ok()
        .and_then(|k| k.strip_prefix("key-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected key {key:?} in the store"))
}

/// The child: writes until killed (or a safety cap, should the parent be gone), printing
/// `ack <id>` only after `put` returned.
#[test]
#[ignore = "run by the crash tests as a child process"]
fn child_writer() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    let mode = mode(&std::env::var(MODE_VAR).expect("mode"));
    let store = FjallStorage::open(&dir, mode, 8 << 20).expect("open store");
    let next = AtomicU64::new(0);
    let stop_at = Instant::now() + DEADLINE;
    std::thread::scope(|scope| {
        for _ in 0..WRITER_THREADS {
            scope.spawn(|| {
                let out = std::io::stdout();
                while Instant::now() < stop_at {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    let (p, k) = key_of(id);
                    store.put(p, &k, &value_of(id)).expect("put");
                    // One write per line (stdout is line buffered) so a kill cannot leave
                    // half an ack that parses as another id.
                    writeln!(out.lock(), "ack {id}").expect("stdout");
                }
            });
        }
    });
}

/// Runs a child writer in `mode` until `acks` puts are acknowledged, kills it with
/// SIGKILL while it is still writing, and checks every acknowledged write survived.
fn kill_and_check(mode_name: &str, acks: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_writer",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(DIR_VAR, dir.path())
        .env(MODE_VAR, mode_name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(id) = line
                .strip_prefix("ack ")
                .and_then(|n| n.parse::<u64>().ok())
            {
                if tx.send(id).is_err() {
                    break;
                }
            }
        }
    });
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let mut acked = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while acked.len() < acks {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(id) => acked.push(id),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "child stopped or stalled after {} acks; its stderr:\n{}",
                    acked.len(),
                    errors.join().unwrap()
                );
            }
        }
    }
    // The child is mid-write right now: it never waits for the parent.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "child was not killed by SIGKILL: {status}"
    );
    // Acks already in the pipe when the child died count too.
    reader.join().unwrap();
    acked.extend(rx.try_iter());
    let _ = errors.join();

    let store = FjallStorage::open(dir.path(), mode(mode_name), 8 << 20).unwrap();
    for &id in &acked {
        let (p, k) = key_of(id);
        assert_eq!(
            store.get(p, &k).unwrap(),
            Some(value_of(id)),
            "acknowledged write {id} lost or damaged ({} acked)",
            acked.len()
        );
    }
    // Unacknowledged writes may or may not have made it, but nothing is damaged.
    let mut present = 0;
    for p in 0..PARTITIONS as PartitionId {
        for (k, v) in store.scan(p, None, usize::MAX).unwrap() {
            assert_eq!(v, value_of(id_of(&k)), "damaged value under {k:?}");
            present += 1;
        }
        let tree = store.tree(p).unwrap();
        let mut expected = chorus_core::storage::MerkleTree::new();
        for (k, v) in store.scan(p, None, usize::MAX).unwrap() {
            expected.insert(&k, &v);
        }
        assert_eq!(tree, expected);
    }
    assert!(present >= acked.len());
}

#[test]
fn periodic_mode_keeps_every_acknowledged_write_across_kill_9() {
    kill_and_check("periodic", 5_000);
}

#[test]
fn always_mode_keeps_every_acknowledged_write_across_kill_9() {
    kill_and_check("always", 500);
}

fn open(path: &std::path::Path) -> Result<FjallStorage, StorageError> {
    FjallStorage::open(path, SyncMode::default(), 1 << 20)
}

#[test]
fn opening_a_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a store").unwrap();
    let err = open(&file).err().expect("opening a file must fail");
    assert!(matches!(err, StorageError::Open { .. }), "{err}");
    // A path below a file cannot be created either.
    assert!(open(&file.join("store")).is_err());
}

#[test]
fn opening_an_unwritable_dir_is_an_error() {
    use std::os::unix::fs::PermissionsExt;
    // /proc refuses new entries even to root.
    let err = open(std::path::Path::new("/proc/self/chorus-store")).err();
    assert!(err.is_some(), "a store under /proc must not open");

    let dir = tempfile::tempdir().unwrap();
    let locked = dir.path().join("read-only");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    // Root ignores permission bits; only assert where they apply.
    let writable = std::fs::write(locked.join("probe"), b"").is_ok();
    let result = open(&locked.join("store"));
    if !writable {
        let err = result
            .err()
            .expect("a store in a read-only directory must not open");
        assert!(matches!(err, StorageError::Open { .. }), "{err}");
    }
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A store with a flushed journal, closed.
fn written_store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()).unwrap();
    for i in 0..500u64 {
        let (p, k) = key_of(i);
        s.put(p, &k, &value_of(i)).unwrap();
    }
    s.flush().unwrap();
    dir
}

/// Copies a closed store. Creating a store costs several fsyncs (about 150 ms here), a
/// copy almost nothing. fjall preallocates its journal with zeros: the copy stops at the
/// first all-zero 64 KiB block and leaves the rest a hole of the same length.
fn copy_store(from: &std::path::Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for file in files_under(from) {
        let mut src = std::fs::File::open(from.join(&file)).unwrap();
        let len = src.metadata().unwrap().len();
        let dest = to.path().join(&file);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let mut out = std::fs::File::create(&dest).unwrap();
        let mut block = vec![0u8; 64 << 10];
        loop {
            let n = src.read(&mut block).unwrap();
            if n == 0 || block[..n].iter().all(|b| *b == 0) {
                break;
            }
            out.write_all(&block[..n]).unwrap();
        }
        out.set_len(len).unwrap();
    }
    to
}

fn files_under(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_owned());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn corrupt_files_give_errors_not_panics() {
    // One file at a time, so every kind of file (journal, tables, version records, the
    // marker) is the only damage in one run.
    let pristine = written_store();
    let layout = files_under(pristine.path());
    assert!(layout
        .iter()
        .any(|f| f.extension().is_some_and(|e| e == "jnl")));
    for file in layout {
        let dir = copy_store(pristine.path());
        let path = dir.path().join(&file);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let len = f.metadata().unwrap().len();
        if len == 0 {
            continue;
        }
        // The journal is preallocated with zeros: damage its written head, not the middle.
        let at = (len / 2).min(16 << 10);
        let mut bytes = vec![0u8; (len - at).min(64) as usize];
        f.read_exact_at(&mut bytes, at).unwrap();
        bytes.iter_mut().for_each(|b| *b = !*b);
        f.write_all_at(&bytes, at).unwrap();
        drop(f);
        let outcome = std::panic::catch_unwind(|| match open(dir.path()) {
            Err(e) => format!("open failed: {e}"),
            Ok(s) => {
                let scans: Vec<_> = (0..PARTITIONS as PartitionId)
                    .map(|p| s.scan(p, None, usize::MAX).map(|v| v.len()))
                    .collect();
                let trees: Vec<_> = (0..PARTITIONS as PartitionId)
                    .map(|p| s.tree(p).is_ok())
                    .collect();
                format!("opened; scans {scans:?}; trees {trees:?}")
            }
        });
        match outcome {
            Ok(report) => eprintln!("damaged {}: {report}", file.display()),
            Err(_) => panic!("damaging {} made the engine panic", file.display()),
        }
    }
}

/// Put throughput per sync mode: `cargo test --release -p chorus-node --test
/// storage_durability put_throughput -- --ignored --nocapture`. A measurement to compare
/// runs on one machine, so it asserts nothing.
#[test]
#[ignore = "measurement, run by hand in release mode"]
fn put_throughput() {
    const THREADS: u64 = 64;
    let per_thread: u64 = std::env::var("CHORUS_BENCH_PUTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    for mode in [SyncMode::default(), SyncMode::Always] {
        let dir = tempfile::tempdir().unwrap();
        let s = FjallStorage::open(dir.path(), mode, 64 << 20).unwrap();
        // Steady state: trees loaded, so every put also reads the old object.
        for p in 0..64 {
            s.tree(p).unwrap();
        }
        let start = Instant::now();
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let s = &s;
                scope.spawn(move || {
                    for i in 0..per_thread {
                        let id = t * per_thread + i;
                        let (_, k) = key_of(id);
                        s.put((id % 64) as PartitionId, &k, &value_of(id)).unwrap();
                    }
                });
            }
        });
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "{mode:?}: {} puts of 100 B from {THREADS} threads in {secs:.2} s = {:.0} puts/s",
            THREADS * per_thread,
            (THREADS * per_thread) as f64 / secs
        );
    }
}

//! A damaged journal is loud (issue 15, defect 5): fjall replays its journal up to the
//! first batch it cannot read and silently drops the rest, so after flipped bytes or a
//! truncated file the store must either fail to open or report the damage; it never opens
//! quietly with acknowledged writes missing.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use chorus_core::storage::{FjallStorage, Storage, SyncMode};

const KEYS: u64 = 300;

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:05}").into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    format!("value-{i}-").repeat(10).into_bytes()
}

/// Writes `KEYS` keys, each acknowledged (returned), and stops cleanly: the journal holds
/// them all (fjall folds the memtable into tables only when it fills).
fn write_keys(dir: &Path) {
    let store = FjallStorage::open(dir, SyncMode::default(), 8 << 20).unwrap();
    for i in 0..KEYS {
        store.put((i % 8) as u32, &key(i), &value(i)).unwrap();
    }
    store.flush().unwrap();
}

/// fjall's active journal and how many bytes of it are written (it is preallocated).
fn journal(dir: &Path) -> (PathBuf, u64) {
    let db = dir.join("db");
    let path = std::fs::read_dir(&db)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
        .max_by_key(|p| {
            p.file_stem()
                .and_then(|s| s.to_str()?.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .expect("a journal");
    let bytes = std::fs::read(&path).unwrap();
    let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    (path, used as u64)
}

/// Reopens the damaged store: it must refuse to open or report the damage, unless every
/// acknowledged write survived.
fn check_loud(dir: &Path, what: &str) -> &'static str {
    let store = match FjallStorage::open(dir, SyncMode::default(), 8 << 20) {
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return "refused to open";
        }
        Ok(store) => store,
    };
    let missing = (0..KEYS)
        .filter(|&i| store.get((i % 8) as u32, &key(i)).unwrap() != Some(value(i)))
        .count();
    match store.journal_damage() {
        Some(reason) => {
            assert!(reason.contains("journal"), "{reason}");
            "reported damage"
        }
        None => {
            assert_eq!(
                missing, 0,
                "{what}: {missing} acknowledged writes gone, and the store says nothing"
            );
            "lost nothing"
        }
    }
}

#[test]
fn flipped_journal_bytes_are_reported_or_refused_never_silent() {
    let mut outcomes = Vec::new();
    for eighth in 1..8 {
        let dir = tempfile::tempdir().unwrap();
        write_keys(dir.path());
        let (path, used) = journal(dir.path());
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xA5; 8], used * eighth / 8).unwrap();
        drop(file);
        outcomes.push(check_loud(
            dir.path(),
            &format!("8 bytes flipped at {eighth}/8"),
        ));
    }
    println!("FIGURE flipped bytes: {outcomes:?}");
    assert!(outcomes.contains(&"reported damage") || outcomes.contains(&"refused to open"));
}

#[test]
fn a_truncated_journal_is_reported_never_silent() {
    for fraction in [2, 4] {
        let dir = tempfile::tempdir().unwrap();
        write_keys(dir.path());
        let (path, used) = journal(dir.path());
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(used / fraction).unwrap();
        drop(file);
        assert_eq!(
            check_loud(dir.path(), &format!("journal cut to 1/{fraction}")),
            "reported damage"
        );
    }
}

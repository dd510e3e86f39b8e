//! The behaviour suite both engines must pass, plus what only the disk engine has
//! (reopen, open errors). Owns no production code.

use super::*;
use proptest::prelude::*;

/// Runs each named suite function against both engines, as `memory::name` and
/// `fjall::name`, so a difference in semantics shows up as a failure of one of them.
macro_rules! for_both_engines {
    ($($name:ident),* $(,)?) => {
        mod memory_engine {
            $(#[test] fn $name() { super::$name(&super::MemoryStorage::new()); })*
        }
        mod fjall_engine {
            $(#[test] fn $name() {
                let dir = tempfile::tempdir().unwrap();
                super::$name(&super::open_fjall(dir.path()));
            })*
        }
    };
}

for_both_engines!(
    put_get_overwrite_remove,
    scan_pages_in_key_order_within_a_partition,
    partitions_and_key_counts,
    meta_round_trip,
    hints_per_owner,
    tree_tracks_puts_and_removes,
    tree_is_independent_of_write_order,
    differing_segments_are_exactly_the_changed_ones,
    scan_segment_returns_the_segment,
    limits_are_errors,
    concurrent_writers_keep_tree_exact,
    put_replacing_matches_put,
);

fn open_fjall(dir: &std::path::Path) -> FjallStorage {
    FjallStorage::open(dir, SyncMode::default(), 1 << 20).unwrap()
}

fn put_get_overwrite_remove(s: &dyn Storage) {
    assert_eq!(s.get(1, b"k").unwrap(), None);
    s.put(1, b"k", b"v1").unwrap();
    assert_eq!(s.get(1, b"k").unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(
        s.get(2, b"k").unwrap(),
        None,
        "partitions are separate namespaces"
    );
    s.put(1, b"k", b"v2").unwrap();
    assert_eq!(s.get(1, b"k").unwrap().as_deref(), Some(&b"v2"[..]));
    s.put(1, b"", b"empty key").unwrap();
    s.put(1, b"e", b"").unwrap();
    assert_eq!(s.get(1, b"").unwrap().as_deref(), Some(&b"empty key"[..]));
    assert_eq!(s.get(1, b"e").unwrap().as_deref(), Some(&b""[..]));
    s.remove(1, b"k").unwrap();
    assert_eq!(s.get(1, b"k").unwrap(), None);
    s.remove(1, b"k").unwrap();
    s.remove(9, b"never").unwrap();
    assert_eq!(s.key_count(1).unwrap(), 2);
    s.flush().unwrap();
}

fn scan_pages_in_key_order_within_a_partition(s: &dyn Storage) {
    for i in (0..25u32).rev() {
        s.put(5, format!("k{i:02}").as_bytes(), &i.to_le_bytes())
            .unwrap();
    }
    // Neighbours, including the extreme partition ids, must not leak into the scan.
    s.put(4, b"zzz", b"x").unwrap();
    s.put(6, b"", b"x").unwrap();
    s.put(u32::MAX, b"a", b"x").unwrap();
    let mut seen = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = s.scan(5, after.as_deref(), 10).unwrap();
        assert!(page.len() <= 10);
        if page.is_empty() {
            break;
        }
        after = Some(page.last().unwrap().0.clone());
        seen.extend(page);
    }
    let expected: Vec<_> = (0..25u32)
        .map(|i| (format!("k{i:02}").into_bytes(), i.to_le_bytes().to_vec()))
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(
        s.scan(u32::MAX, None, 10).unwrap(),
        vec![(b"a".to_vec(), b"x".to_vec())]
    );
    assert_eq!(s.scan(5, Some(b"k03"), 2).unwrap()[0].0, b"k04");
    assert!(s.scan(7, None, 10).unwrap().is_empty());
}

fn partitions_and_key_counts(s: &dyn Storage) {
    assert!(s.partitions().unwrap().is_empty());
    assert_eq!(s.key_count(3).unwrap(), 0);
    for p in [9u32, 0, 3, u32::MAX] {
        for k in 0..3u8 {
            s.put(p, &[k], b"v").unwrap();
        }
    }
    s.put(3, &[0], b"overwrite").unwrap();
    assert_eq!(s.partitions().unwrap(), vec![0, 3, 9, u32::MAX]);
    assert_eq!(s.key_count(3).unwrap(), 3);
    for k in 0..3u8 {
        s.remove(9, &[k]).unwrap();
    }
    assert_eq!(s.partitions().unwrap(), vec![0, 3, u32::MAX]);
    assert_eq!(s.key_count(9).unwrap(), 0);
}

fn meta_round_trip(s: &dyn Storage) {
    assert_eq!(s.meta_get("node_id").unwrap(), None);
    s.meta_put("node_id", b"n1").unwrap();
    s.meta_put("generation", &7u64.to_le_bytes()).unwrap();
    s.meta_put("generation", &8u64.to_le_bytes()).unwrap();
    assert_eq!(s.meta_get("node_id").unwrap().as_deref(), Some(&b"n1"[..]));
    assert_eq!(
        s.meta_get("generation").unwrap(),
        Some(8u64.to_le_bytes().to_vec())
    );
}

fn hints_per_owner(s: &dyn Storage) {
    assert!(s.hint_owners().unwrap().is_empty());
    s.hint_put("node-b", 2, b"k2", b"v").unwrap();
    s.hint_put("node-b", 1, b"k9", b"v").unwrap();
    s.hint_put("node-b", 1, b"k1", b"old").unwrap();
    s.hint_put("node-b", 1, b"k1", b"new").unwrap();
    // "node" is a prefix of "node-b": its hints must stay separate.
    s.hint_put("node", 1, b"k1", b"x").unwrap();
    s.hint_put("a", 0, b"k", b"x").unwrap();
    assert_eq!(
        s.hint_owners().unwrap(),
        vec![("a".into(), 1), ("node".into(), 1), ("node-b".into(), 3)]
    );
    assert_eq!(
        s.hint_scan("node-b", 10).unwrap(),
        vec![
            (1, b"k1".to_vec(), b"new".to_vec()),
            (1, b"k9".to_vec(), b"v".to_vec()),
            (2, b"k2".to_vec(), b"v".to_vec()),
        ]
    );
    assert_eq!(s.hint_scan("node-b", 1).unwrap().len(), 1);
    assert!(s.hint_scan("nobody", 10).unwrap().is_empty());
    s.hint_remove("node-b", 1, b"k1").unwrap();
    s.hint_remove("node-b", 1, b"k1").unwrap();
    s.hint_remove("node", 1, b"k1").unwrap();
    assert_eq!(
        s.hint_owners().unwrap(),
        vec![("a".into(), 1), ("node-b".into(), 2)]
    );
    // Hints are not objects.
    assert!(s.partitions().unwrap().is_empty());
}

fn tree_tracks_puts_and_removes(s: &dyn Storage) {
    let empty = s.tree(1).unwrap();
    assert_eq!(empty, MerkleTree::new());
    s.put(1, b"a", b"1").unwrap();
    let one = s.tree(1).unwrap();
    assert_ne!(one.root(), empty.root());
    s.put(1, b"b", b"2").unwrap();
    assert_ne!(s.tree(1).unwrap(), one);
    s.remove(1, b"b").unwrap();
    assert_eq!(s.tree(1).unwrap(), one, "remove restores the tree");
    s.put(1, b"a", b"changed").unwrap();
    assert_ne!(s.tree(1).unwrap(), one);
    s.put(1, b"a", b"1").unwrap();
    assert_eq!(s.tree(1).unwrap(), one, "overwrite XORs the old object out");
    s.remove(1, b"a").unwrap();
    assert_eq!(s.tree(1).unwrap(), empty);
    assert_eq!(s.tree(2).unwrap(), empty, "other partitions untouched");
}

fn tree_is_independent_of_write_order(s: &dyn Storage) {
    let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..300u32)
        .map(|i| (i.to_be_bytes().to_vec(), (i * 7).to_le_bytes().to_vec()))
        .collect();
    for (k, v) in &entries {
        s.put(1, k, v).unwrap();
    }
    // Partition 2 gets the same content in another order, with detours.
    for (k, v) in entries.iter().rev() {
        s.put(2, k, b"temporary").unwrap();
        s.put(2, k, v).unwrap();
    }
    s.put(2, b"extra", b"x").unwrap();
    s.remove(2, b"extra").unwrap();
    assert_eq!(s.tree(1).unwrap(), s.tree(2).unwrap());
    assert_eq!(s.tree(1).unwrap(), tree_of(&entries));
}

fn differing_segments_are_exactly_the_changed_ones(s: &dyn Storage) {
    for i in 0..500u32 {
        s.put(1, &i.to_be_bytes(), b"same").unwrap();
        s.put(2, &i.to_be_bytes(), b"same").unwrap();
    }
    let changed = [3u32, 77, 300];
    s.put(2, &changed[0].to_be_bytes(), b"newer").unwrap();
    s.remove(2, &changed[1].to_be_bytes()).unwrap();
    s.put(2, &changed[2].to_be_bytes(), b"newer").unwrap();
    let mut expected: Vec<usize> = changed
        .iter()
        .map(|i| MerkleTree::segment_of(&i.to_be_bytes()))
        .collect();
    expected.sort_unstable();
    expected.dedup();
    let (a, b) = (s.tree(1).unwrap(), s.tree(2).unwrap());
    assert_eq!(a.differing_segments(&b), expected);
    assert_ne!(a.root(), b.root());
}

fn scan_segment_returns_the_segment(s: &dyn Storage) {
    for i in 0..3000u32 {
        s.put(1, &i.to_be_bytes(), &i.to_le_bytes()).unwrap();
    }
    let seg = MerkleTree::segment_of(&42u32.to_be_bytes());
    let got = s.scan_segment(1, seg).unwrap();
    let expected: Vec<_> = (0..3000u32)
        .filter(|i| MerkleTree::segment_of(&i.to_be_bytes()) == seg)
        .map(|i| (i.to_be_bytes().to_vec(), i.to_le_bytes().to_vec()))
        .collect();
    assert!(expected.iter().any(|(k, _)| k == &42u32.to_be_bytes()));
    assert_eq!(got, expected);
    let two = s.scan_segments(1, &[seg, seg + 1]).unwrap();
    assert_eq!(
        two.len(),
        expected.len() + s.scan_segment(1, seg + 1).unwrap().len()
    );
}

fn limits_are_errors(s: &dyn Storage) {
    let long = vec![0u8; MAX_KEY_LEN + 1];
    assert!(matches!(
        s.put(1, &long, b"v"),
        Err(StorageError::TooLong { .. })
    ));
    assert!(matches!(s.get(1, &long), Err(StorageError::TooLong { .. })));
    let owner = "o".repeat(MAX_NAME_LEN + 1);
    assert!(matches!(
        s.hint_put(&owner, 1, b"k", b"v"),
        Err(StorageError::TooLong { .. })
    ));
    assert!(matches!(
        s.meta_put(&owner, b"v"),
        Err(StorageError::TooLong { .. })
    ));
    let max = vec![1u8; MAX_KEY_LEN];
    s.put(1, &max, b"v").unwrap();
    assert_eq!(s.scan(1, None, 1).unwrap()[0].0, max);
}

fn concurrent_writers_keep_tree_exact(s: &dyn Storage) {
    // Four threads overwrite and remove the same keys; the tree kept incrementally must
    // equal the tree of whatever content won.
    std::thread::scope(|scope| {
        for t in 0..4u8 {
            scope.spawn(move || {
                for i in 0..200u32 {
                    let k = (i % 50).to_be_bytes();
                    if (i + t as u32).is_multiple_of(7) {
                        s.remove(1, &k).unwrap();
                    } else {
                        s.put(1, &k, &[t, i as u8]).unwrap();
                    }
                }
            });
        }
    });
    let content = s.scan(1, None, usize::MAX).unwrap();
    assert_eq!(s.tree(1).unwrap(), tree_of(&content));
    assert_eq!(s.key_count(1).unwrap(), content.len() as u64);
}

fn put_replacing_matches_put(s: &dyn Storage) {
    s.tree(1).unwrap(); // the tree is loaded: put_replacing must keep it exact
    s.put_replacing(1, b"a", None, b"1").unwrap();
    s.put_replacing(1, b"b", None, b"2").unwrap();
    s.put_replacing(1, b"a", Some(b"1"), b"3").unwrap();
    assert_eq!(s.get(1, b"a").unwrap().as_deref(), Some(&b"3"[..]));
    assert_eq!(s.key_count(1).unwrap(), 2);
    let expected = tree_of(&[
        (b"a".to_vec(), b"3".to_vec()),
        (b"b".to_vec(), b"2".to_vec()),
    ]);
    assert_eq!(s.tree(1).unwrap(), expected);
}

fn tree_of(entries: &[(Vec<u8>, Vec<u8>)]) -> MerkleTree {
    let mut t = MerkleTree::new();
    for (k, v) in entries {
        t.insert(k, v);
    }
    t
}

#[test]
fn fjall_reopen_keeps_data_trees_meta_and_hints() {
    let dir = tempfile::tempdir().unwrap();
    let (trees, counts, scans) = {
        let s = open_fjall(dir.path());
        for i in 0..400u32 {
            s.put(i % 4, &i.to_be_bytes(), &(i * 3).to_le_bytes())
                .unwrap();
        }
        s.remove(1, &5u32.to_be_bytes()).unwrap();
        s.meta_put("generation", b"3").unwrap();
        s.hint_put("node-c", 2, b"k", b"v").unwrap();
        s.hint_put("node-c", 3, b"k", b"v").unwrap();
        // Load one partition's tree before closing and leave the others unloaded, so
        // both the incrementally kept and the rebuilt tree are compared after reopen.
        let _ = s.tree(0).unwrap();
        s.put(0, b"after load", b"x").unwrap();
        let trees: Vec<_> = (0..4).map(|p| s.tree(p).unwrap()).collect();
        let counts: Vec<_> = (0..4).map(|p| s.key_count(p).unwrap()).collect();
        let scans: Vec<_> = (0..4)
            .map(|p| s.scan(p, None, usize::MAX).unwrap())
            .collect();
        s.flush().unwrap();
        (trees, counts, scans)
    };
    let s = open_fjall(dir.path());
    assert_eq!(s.partitions().unwrap(), vec![0, 1, 2, 3]);
    for p in 0..4u32 {
        assert_eq!(s.scan(p, None, usize::MAX).unwrap(), scans[p as usize]);
        assert_eq!(s.tree(p).unwrap(), trees[p as usize]);
        assert_eq!(s.key_count(p).unwrap(), counts[p as usize]);
    }
    assert_eq!(
        s.meta_get("generation").unwrap().as_deref(),
        Some(&b"3"[..])
    );
    assert_eq!(s.hint_owners().unwrap(), vec![("node-c".into(), 2)]);
}

#[test]
fn fjall_always_mode_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = FjallStorage::open(dir.path(), SyncMode::Always, 1 << 20).unwrap();
        std::thread::scope(|scope| {
            for t in 0..4u32 {
                let s = &s;
                scope.spawn(move || {
                    for i in 0..25u32 {
                        s.put(t, &i.to_be_bytes(), b"v").unwrap();
                    }
                });
            }
        });
    }
    let s = FjallStorage::open(dir.path(), SyncMode::Always, 1 << 20).unwrap();
    assert_eq!((0..4).map(|p| s.key_count(p).unwrap()).sum::<u64>(), 100);
}

#[test]
fn fjall_open_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let s = open_fjall(&store);
    // A second handle, as a second process would, finds the store locked.
    assert!(matches!(
        FjallStorage::open(&store, SyncMode::default(), 1 << 20),
        Err(StorageError::Locked(_))
    ));
    drop(s);
    open_fjall(&store);

    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = FjallStorage::open(&file, SyncMode::default(), 1 << 20)
        .err()
        .unwrap();
    assert!(matches!(err, StorageError::Open { .. }), "{err}");

    let foreign = dir.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("data.db"), b"someone else's").unwrap();
    let err = FjallStorage::open(&foreign, SyncMode::default(), 1 << 20)
        .err()
        .unwrap();
    assert!(err.to_string().contains("not a chorus store"), "{err}");
    assert!(
        foreign.join("data.db").exists(),
        "a foreign directory is left alone"
    );

    std::fs::write(store.join("CHORUS_STORE"), b"chorus store format 99\n").unwrap();
    assert!(FjallStorage::open(&store, SyncMode::default(), 1 << 20).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any sequence of puts and removes leaves the incrementally kept tree equal to the
    /// tree built from the final content, and equal content gives equal trees whatever
    /// the order it was written in.
    #[test]
    fn incremental_tree_matches_content(
        ops in proptest::collection::vec((0u8..20, proptest::option::of(0u8..4)), 0..120)
    ) {
        let s = MemoryStorage::new();
        for (k, v) in &ops {
            match v {
                Some(v) => s.put(1, &[*k], &[*v]).unwrap(),
                None => s.remove(1, &[*k]).unwrap(),
            }
        }
        let content = s.scan(1, None, usize::MAX).unwrap();
        prop_assert_eq!(s.tree(1).unwrap(), tree_of(&content));
        let replay = MemoryStorage::new();
        for (k, v) in content.iter().rev() {
            replay.put(1, k, v).unwrap();
        }
        prop_assert_eq!(replay.tree(1).unwrap(), s.tree(1).unwrap());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The disk engine answers every read with the newest bytes written, through its cache
    /// of recent writes and after a reopen without it: puts (some too big to cache),
    /// overwrites through `put_replacing` and removes, against a map of what was written.
    #[test]
    fn fjall_reads_are_the_newest_write_with_and_without_its_cache(
        ops in proptest::collection::vec((0u8..2, 0u8..6, 0u8..4, 0usize..3), 1..80)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut model = std::collections::HashMap::<(u32, u8), Vec<u8>>::new();
        {
            let s = open_fjall(dir.path());
            for (p, k, op, size) in &ops {
                let (p, key) = (*p as u32, [*k]);
                let value = vec![*op; [10, 1_000, 2 << 20][*size]];
                match op {
                    0 => { s.remove(p, &key).unwrap(); model.remove(&(p, *k)); }
                    1 => {
                        let old = s.get(p, &key).unwrap();
                        s.put_replacing(p, &key, old.as_deref(), &value).unwrap();
                        model.insert((p, *k), value);
                    }
                    _ => { s.put(p, &key, &value).unwrap(); model.insert((p, *k), value); }
                }
                prop_assert_eq!(s.get(p, &key).unwrap(), model.get(&(p, *k)).cloned());
            }
            for ((p, k), v) in &model {
                prop_assert_eq!(s.get(*p, &[*k]).unwrap(), Some(v.clone()));
            }
        }
        let s = open_fjall(dir.path());
        for p in 0..2u32 {
            for k in 0..6u8 {
                prop_assert_eq!(s.get(p, &[k]).unwrap(), model.get(&(p, k)).cloned());
            }
        }
    }
}

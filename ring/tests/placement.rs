//! Properties of placement through the public API: preference lists, determinism,
//! stability under membership change, key hashing and errors. Case counts stay small so the
//! whole file runs in seconds on two cores.

use std::collections::BTreeSet;

use chorus_ring::analysis::{ideal_join, ideal_leave, moved_replicas, node_names};
use chorus_ring::{key_hash, partition_of, Ring, RingError, DEFAULT_RING_SIZE, MAX_RING_SIZE};
use proptest::prelude::*;

fn ring_sizes() -> impl Strategy<Value = u32> {
    (0u32..=8).prop_map(|e| 1 << e)
}

/// Short names from a small alphabet, so duplicates happen.
fn names() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("[a-e]{1,3}", 1..14)
}

/// A set of distinct names plus a name outside it.
fn members_and_newcomer(
    sizes: std::ops::Range<usize>,
) -> impl Strategy<Value = (Vec<String>, String)> {
    prop::collection::btree_set("[a-z0-9]{1,10}", sizes).prop_flat_map(|set| {
        let members: Vec<String> = set.iter().cloned().collect();
        ("[A-Z]{1,10}", Just(members)).prop_map(|(new, members)| (members, new))
    })
}

/// Members that are fallbacks (not primaries) of `partition` in both rings, in `ring`'s order.
fn shared_fallbacks<'a>(ring: &'a Ring, other: &Ring, partition: u32) -> Vec<&'a str> {
    let k = ring.primaries(partition).len();
    ring.preference_list(partition)[k..]
        .iter()
        .copied()
        .filter(|m| other.members().iter().any(|o| o == m) && !other.is_primary(partition, m))
        .collect()
}

/// Movement bound for rings where every member holds at least 30 replicas before and after
/// the change: the worst measured over 1112 random such cases was 1.61x the ideal (see
/// README), and a claim that ignored stability would move most of the ring.
const MOVEMENT_BOUND: f64 = 2.0;
const MIN_FAIR_FOR_BOUND: f64 = 30.0;

fn fair(ring_size: u32, n: usize, members: usize) -> f64 {
    ring_size as f64 * n.min(members) as f64 / members as f64
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn preference_lists_hold_every_member_once_primaries_first(
        ring_size in ring_sizes(), n in 1usize..6, names in names()
    ) {
        let ring = Ring::new(ring_size, n, names.clone()).unwrap();
        let distinct: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        let k = n.min(distinct.len());
        prop_assert_eq!(ring.members().iter().map(String::as_str).collect::<Vec<_>>(),
                        distinct.iter().copied().collect::<Vec<_>>());
        prop_assert_eq!(ring.replicas(), k);
        for p in 0..ring_size {
            let primaries = ring.primaries(p);
            prop_assert_eq!(primaries.len(), k);
            let unique: BTreeSet<&String> = primaries.iter().collect();
            prop_assert_eq!(unique.len(), k, "repeated primary in {:?}", primaries);
            let list = ring.preference_list(p);
            prop_assert_eq!(list.len(), distinct.len());
            prop_assert_eq!(list.iter().copied().collect::<BTreeSet<_>>(), distinct.clone());
            prop_assert!(list[..k].iter().zip(primaries).all(|(a, b)| a == b));
            for m in ring.members() {
                prop_assert_eq!(ring.is_primary(p, m), primaries.contains(m));
            }
        }
        let total = ring_size as usize * k;
        let mut held = 0;
        for m in ring.members() {
            let mine = ring.primary_partitions(m);
            prop_assert!(mine.len() <= ring.capacity(), "{} holds {} > {}", m, mine.len(), ring.capacity());
            prop_assert!((ring.share(m) - mine.len() as f64 / total as f64).abs() < 1e-12);
            held += mine.len();
        }
        prop_assert_eq!(held, total);
        let fair = total as f64 / distinct.len() as f64;
        prop_assert!(ring.capacity() as f64 <= (fair * 1.1).max(fair.ceil()));
    }

    #[test]
    fn same_set_in_any_order_with_duplicates_gives_the_same_ring(
        ring_size in ring_sizes(),
        n in 1usize..5,
        (names, shuffled) in names().prop_flat_map(|v| {
            let mut doubled = v.clone();
            doubled.extend(v.iter().take(4).cloned());
            (Just(v), Just(doubled).prop_shuffle())
        })
    ) {
        let a = Ring::new(ring_size, n, names).unwrap();
        let b = Ring::new(ring_size, n, shuffled).unwrap();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn partition_of_is_in_range_deterministic_and_the_top_bits_of_key_hash(
        ring_size in (0u32..=12).prop_map(|e| 1 << e),
        bucket in prop::collection::vec(any::<u8>(), 0..16),
        key in prop::collection::vec(any::<u8>(), 0..32)
    ) {
        let p = partition_of(ring_size, &bucket, &key);
        prop_assert!(p < ring_size);
        prop_assert_eq!(p, partition_of(ring_size, &bucket, &key));
        let expected = if ring_size == 1 { 0 } else { (key_hash(&bucket, &key) >> (64 - ring_size.trailing_zeros())) as u32 };
        prop_assert_eq!(p, expected);
    }

    #[test]
    fn splitting_the_same_bytes_differently_gives_different_keys(
        bytes in prop::collection::vec(any::<u8>(), 1..24), i in any::<prop::sample::Index>(), j in any::<prop::sample::Index>()
    ) {
        let (i, j) = (i.index(bytes.len() + 1), j.index(bytes.len() + 1));
        prop_assume!(i != j);
        prop_assert_ne!(key_hash(&bytes[..i], &bytes[i..]), key_hash(&bytes[..j], &bytes[j..]));
    }
}

proptest! {
    // Each case builds three rings of up to 1024 partitions.
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn a_join_keeps_fallback_order_and_moves_little(
        ring_size in prop::sample::select(vec![256u32, 1024]),
        n in 1usize..=5,
        (members, newcomer) in members_and_newcomer(2..40)
    ) {
        let k = members.len();
        prop_assume!(fair(ring_size, n, k + 1) >= MIN_FAIR_FOR_BOUND);
        let before = Ring::new(ring_size, n, members.clone()).unwrap();
        let mut more = members.clone();
        more.push(newcomer.clone());
        let after = Ring::new(ring_size, n, more).unwrap();
        for p in 0..ring_size {
            prop_assert_eq!(shared_fallbacks(&before, &after, p), shared_fallbacks(&after, &before, p));
        }
        let moved = moved_replicas(&before, &after) as f64;
        let ideal = ideal_join(ring_size, n, k);
        // No lower bound applies to the newcomer's load, but everything it holds was moved.
        let taken = after.primary_partitions(&newcomer).len();
        prop_assert!(taken > 0 && moved >= taken as f64, "moved {} < taken {}", moved, taken);
        prop_assert!(moved <= MOVEMENT_BOUND * ideal, "moved {} > {} x ideal {}", moved, MOVEMENT_BOUND, ideal);
    }

    #[test]
    fn a_leave_keeps_fallback_order_and_moves_little(
        ring_size in prop::sample::select(vec![256u32, 1024]),
        n in 1usize..=5,
        (members, _) in members_and_newcomer(2..40),
        gone in any::<prop::sample::Index>()
    ) {
        let k = members.len();
        prop_assume!(fair(ring_size, n, k) >= MIN_FAIR_FOR_BOUND);
        let before = Ring::new(ring_size, n, members.clone()).unwrap();
        let gone = gone.index(k);
        let fewer: Vec<String> = members.iter().enumerate().filter(|&(i, _)| i != gone).map(|(_, m)| m.clone()).collect();
        let after = Ring::new(ring_size, n, fewer).unwrap();
        for p in 0..ring_size {
            prop_assert_eq!(shared_fallbacks(&before, &after, p), shared_fallbacks(&after, &before, p));
        }
        let moved = moved_replicas(&before, &after) as f64;
        let ideal = ideal_leave(ring_size, n, k);
        prop_assert!(moved <= MOVEMENT_BOUND * ideal, "moved {} > {} x ideal {}", moved, MOVEMENT_BOUND, ideal);
    }
}

#[test]
fn bad_arguments_are_errors_with_clear_messages() {
    for size in [0, 3, 100, 8192] {
        let err = Ring::new(size, 3, ["a"]).unwrap_err();
        assert_eq!(err, RingError::BadRingSize(size));
        assert!(err.to_string().contains(&format!("got {size}")), "{err}");
        assert!(err.to_string().contains("power of two"), "{err}");
    }
    assert!(Ring::new(MAX_RING_SIZE, 1, ["a"]).is_ok());
    let zero = Ring::new(DEFAULT_RING_SIZE, 0, ["a"]).unwrap_err();
    assert_eq!(zero, RingError::ZeroReplicas);
    assert!(zero.to_string().contains("at least 1"), "{zero}");
    let none = Ring::new(DEFAULT_RING_SIZE, 3, Vec::<String>::new()).unwrap_err();
    assert_eq!(none, RingError::NoMembers);
    assert!(none.to_string().contains("at least one member"), "{none}");
    assert_eq!(
        Ring::new(DEFAULT_RING_SIZE, 3, ["a", ""]).unwrap_err(),
        RingError::EmptyMemberName
    );
    let many = Ring::new(1, 1, (0..=chorus_ring::MAX_MEMBERS).map(|i| i.to_string())).unwrap_err();
    assert_eq!(
        many,
        RingError::TooManyMembers(chorus_ring::MAX_MEMBERS + 1)
    );
}

#[test]
#[should_panic(expected = "invalid ring_size")]
fn partition_of_rejects_a_bad_ring_size() {
    partition_of(3, b"b", b"k");
}

/// Every node must agree on where a key lives, across versions: a change here re-homes data.
#[test]
fn key_hashing_is_pinned() {
    assert_eq!(key_hash(b"", b""), 0x71e0_a991_7356_4931);
    let alice = key_hash(b"users", b"alice");
    assert_eq!(alice, 0x5c51_b2f4_6211_bb36);
    assert_eq!(partition_of(64, b"users", b"alice"), 23);
    assert_eq!(partition_of(4096, b"users", b"alice"), 1477);
    assert_eq!(partition_of(1, b"users", b"alice"), 0);
    assert_ne!(key_hash(b"ab", b"c"), key_hash(b"a", b"bc"));
}

/// The claim is a cluster-wide contract like key hashing: nodes running different claims
/// would disagree on owners. Changing it needs a coordinated upgrade; this test makes the
/// change deliberate.
#[test]
fn claim_is_pinned() {
    let ring = Ring::new(64, 3, node_names(10)).unwrap();
    let mut all = Vec::new();
    for p in 0..64 {
        all.extend(ring.primaries(p).iter().map(|m| m.as_bytes().to_vec()));
    }
    assert_eq!(
        blake3::hash(&all.concat()).to_hex().as_str(),
        "e8e35166931fad3ebfa52c686382ec78eab38e83686ac2b5429e8392fafb2dec"
    );
}

#[test]
fn keys_spread_evenly_over_partitions() {
    let mut counts = [0u32; 64];
    for i in 0..64 * 200 {
        counts[partition_of(64, b"bucket", format!("key-{i}").as_bytes()) as usize] += 1;
    }
    // 200 expected per partition, standard deviation about 14.
    assert!(
        counts.iter().all(|&c| (130..=270).contains(&c)),
        "{counts:?}"
    );
}

#[test]
fn neighbouring_partitions_rarely_share_all_owners() {
    let ring = Ring::new(64, 3, node_names(10)).unwrap();
    let same = (0..63)
        .filter(|&p| {
            let a: BTreeSet<_> = ring.primaries(p).iter().collect();
            let b: BTreeSet<_> = ring.primaries(p + 1).iter().collect();
            a == b
        })
        .count();
    assert!(same <= 4, "{same} neighbouring pairs share all owners");
}

#[test]
fn fewer_members_than_n_means_everyone_holds_everything() {
    let ring = Ring::new(16, 5, ["x", "y", "z"]).unwrap();
    assert_eq!(ring.n(), 5);
    assert_eq!(ring.replicas(), 3);
    for p in 0..16 {
        assert_eq!(ring.primaries(p).len(), 3);
        assert_eq!(ring.preference_list(p).len(), 3);
    }
    assert!(ring.members().iter().all(|m| ring.share(m) == 1.0 / 3.0));
}

#[test]
fn balance_meets_the_goal_on_the_documented_configurations() {
    for ring_size in [64, 256, 1024] {
        for nodes in [3, 5, 10, 50, 100] {
            let ring = Ring::new(ring_size, 3, node_names(nodes)).unwrap();
            let b = chorus_ring::analysis::balance(&ring);
            assert!(
                b.max_ratio <= 1.10 || b.max_ratio == b.best_max_ratio,
                "{ring_size}/{nodes}: {b:?}"
            );
        }
    }
}

//! Seeds the simulation once failed on, kept so the bugs they found stay fixed. Each test
//! names the bug, the fix and the command that replays it.

use std::time::Duration;

use chorus_tests::sim::{self, workload, Faults, Options};

fn assert_passes(options: Options) -> sim::Report {
    let report = sim::run(&options);
    assert!(
        report.failures.is_empty(),
        "seed {} failed:\n  {}\nreplay: {}",
        options.seed,
        report.failures.join("\n  "),
        options.replay_command()
    );
    assert!(report.acked > 0, "the scenario acknowledged no write");
    report
}

/// The coordinator retried `Request::Coordinate` on the next replica when the first gave
/// no answer in time; the first had often stored the write and only its answer was lost,
/// so one client write was minted as two or three dots (duplicate siblings of one value).
/// Fixed by answering 503 instead of retrying after a missing answer (coordinator.rs).
/// (Seeds 1 and 6 found it; seeds 4 and 5 failed with the retry put back once the harness
/// gained a late joiner and strict quorums. Caveat, checked in the stop that added TTLs:
/// with the retry put back after the "not sent" distinction of issue 13 they no longer
/// fail; they stay as passing scenario tests.)
#[test]
fn coordinate_is_not_retried_after_a_lost_answer_seed_4() {
    assert_passes(Options::new(4));
}

#[test]
fn coordinate_is_not_retried_after_a_lost_answer_seed_5() {
    assert_passes(Options::new(5));
}

/// A tombstone was reaped while a node still held an older copy of the key for a
/// partition it did not own (left over from a fallback write whose hint was delivered);
/// ownership transfer then merged that copy into the owners, whose history of the key was
/// gone with the tombstone, and values the delete had superseded came back. Reaping also
/// treated a member that had not gossiped its pending hints yet (just restarted) as having
/// none. Fixed by gossiping keys awaiting transfer (`pending_transfer`) and reaping only
/// when every member reported zero of both (healing.rs).
///
/// Caveat: the later fix for seed 3 (fallback minters keep a hint) changed these traces,
/// and they no longer hit the reaping bug when it is put back (nor did 1000 other heavy
/// seeds); the failing traces replay at commit 53b33f3 with `--seed 106 --faults heavy
/// --duration 120 --no-join --no-strict`. They stay as passing scenario tests.
#[test]
fn no_reaping_while_a_node_holds_data_awaiting_transfer_seed_106() {
    let mut options = Options::new(106);
    options.faults = Faults::Heavy;
    options.duration = Duration::from_secs(120);
    // The scenarios of the harness that found it (before late joiners and strict quorums).
    options.late_join = false;
    options.strict_quorums = false;
    assert_passes(options);
}

#[test]
fn no_reaping_while_a_node_holds_data_awaiting_transfer_seed_184() {
    let mut options = Options::new(184);
    options.faults = Faults::Heavy;
    options.duration = Duration::from_secs(120);
    // The scenarios of the harness that found it (before late joiners and strict quorums).
    options.late_join = false;
    options.strict_quorums = false;
    assert_passes(options);
}

/// A node restarted behind a partition knew only itself: its ring made it the sole owner
/// of every partition, nobody else was "unreachable", so after the grace period it reaped
/// its tombstones alone while other replicas still held the values they deleted, which
/// then came back. Fixed by reaping only with a ring of at least N members (healing.rs).
/// Caveat, checked in the stop that added TTLs: with that check taken out the seed no
/// longer fails under the current code; it stays as a passing scenario test.
#[test]
fn a_node_that_knows_fewer_than_n_members_reaps_nothing_seed_593() {
    let mut options = Options::new(593);
    options.faults = Faults::Heavy;
    assert_passes(options);
}

/// A fallback that minted a write (`Coordinate` carried no hint) held it without a hint;
/// delivering an older hint for another owner then dropped its whole copy of the key, so a
/// write acknowledged by w=2 replicas was stored on one. Fixed by `Coordinate` carrying
/// `hint_for`, so the minting fallback records the hint with the write (replica.rs).
/// Caveat: under the current code this seed's trace no longer reaches the bug when the fix
/// is reverted; the multi-process test `cluster_healing::a_fallback_takes_writes_for_a_dead_owner...`
/// does (58 hints for 96 keys). It stays as a passing scenario test.
#[test]
fn a_fallback_that_mints_a_write_keeps_it_with_a_hint_seed_3() {
    let mut options = Options::new(3);
    options.faults = Faults::Heavy;
    options.duration = Duration::from_secs(120);
    assert_passes(options);
}

/// Issue 14, scripted: v1 written through n1 to every replica; v2 written blind through
/// n2; v3 through n2 with v2's answer context; a read of every replica. v3's client never
/// saw v1, so v1 must survive. The first build answered a write with the coordinator's
/// whole state, whose vector covered v1, and v3 dropped it; with that answer put back
/// (the test-only switch) the checker must name w1 as lost, dropped by w3.
#[test]
fn a_write_with_its_answer_context_keeps_a_sibling_its_client_never_saw() {
    let mut options = Options::new(1);
    options.nodes = 3;
    options.faults = Faults::None;
    options.late_join = false;
    options.strict_quorums = false;
    options.script = Some(workload::four_steps());
    assert_passes(options.clone());
    options.old_answer_context = true;
    let report = sim::run(&options);
    assert!(
        report.failures.iter().any(|f| f.contains("write w1 on k0")
            && f.contains("is lost")
            && f.contains("dropped by w3")),
        "the old answer context must lose w1: {:?}",
        report.failures
    );
}

/// Issue 15: a node whose disk fails must stop acknowledging, refuse requests, and recover
/// once the disk works again (its healing rounds probe it); the nemesis fails one node's
/// disk at a time with `disk_faults`. With the probe taken out of `Healer::round`, a
/// node whose disk failed never takes a write again and its replicas diverge (seeds 1-8
/// fail the convergence check).
#[test]
fn nodes_whose_disks_fail_for_a_while_lose_nothing_and_recover() {
    let mut errors = 0;
    for seed in 1..=8 {
        let mut options = Options::new(seed);
        options.disk_faults = true;
        errors += assert_passes(options).healing.storage_errors;
    }
    assert!(errors > 0, "no disk fault hit a node's storage in 8 seeds");
}

/// Issue 18, TTL: with skewed clocks and some writes expiring, no read shows a value
/// past its expiry and no value is reaped before it (a value with a one-hour TTL must
/// survive). Seeds 53 and 104 (heavy faults) lose an unexpired value when the reaper
/// counts every value with a TTL as dead (`object::is_dead` ignoring the expiry time);
/// seeds 1 and 2 fail the visibility check when reads show expired values.
#[test]
fn expired_values_are_hidden_and_unexpired_ones_never_reaped_seeds_1_2_53_104() {
    let mut expired = 0;
    for seed in [1, 2, 53, 104] {
        let mut options = Options::new(seed);
        options.ttl = true;
        options.faults = Faults::Heavy;
        expired += assert_passes(options).expired;
    }
    assert!(expired > 0, "no acknowledged value expired in 4 seeds");
}

/// Issue 18, bucket properties: an operator changes `max_siblings` through random nodes
/// under heavy faults; every node's cache must end on the highest `(stamp, set_by)` of
/// the stored versions. Seed 2476 found two changes through one node with one stamp,
/// which the nodes and the rule ordered differently until the encoding broke such ties.
/// Seeds 12 and 2476 fail when `PropsSync` reloads only when a digest differs *and* a
/// reload is due; seed 63 when `versions` puts the lowest first (7 and 9 pass either way).
#[test]
fn bucket_property_changes_converge_on_the_highest_stamp_seeds_7_9_12_63_2476() {
    for seed in [7, 9, 12, 63, 2476] {
        let mut options = Options::new(seed);
        options.props = true;
        options.faults = Faults::Heavy;
        assert_passes(options);
    }
}

/// Groups formed apart never merged: every node of {n1, n2, n5} and of {n3, n4} restarted
/// behind partitions and met only its own group through the seeds, and a node with live
/// peers never tried a seed again, so 300 s after the heal n1 still saw ring members
/// [n1, n2, n5] (issue 25; seeds 1105 and 7597 at 5 nodes and 16 clients, 1434 before).
/// Fixed by trying, with odds 1/(live+1), one seed no known member is at
/// (`gossip/src/membership/targets.rs`). Seed 1105 fails with that taken out.
#[test]
fn groups_formed_apart_merge_through_a_seed_seed_1105() {
    let mut options = Options::new(1105);
    options.faults = Faults::Heavy;
    options.clients = 16;
    options.keys = 6;
    options.disk_faults = true;
    options.ttl = true;
    options.props = true;
    assert_passes(options);
}

//! Whole-cluster scenarios on the simulated network: convergence, failure detection,
//! restarts, partitions, leave and remove, refusals and message bounds. Every test is
//! seeded and runs on virtual time.

use std::collections::BTreeMap;

use chorus_gossip::sim::{self, Sim, SimConfig};
use chorus_gossip::{
    ClusterConfig, Event, GossipError, GossipMessage, MemberBody, MemberState, MemberUpdate,
    MessageV1, Payload, Peer, Stamp, Status,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn events_about(sim: &Sim, observer: usize, name: &str) -> Vec<(u64, Event)> {
    sim.node(observer)
        .events
        .iter()
        .filter(|(_, e)| match e {
            Event::Joined { name: n }
            | Event::Suspect { name: n }
            | Event::Down { name: n }
            | Event::Alive { name: n }
            | Event::Restarted { name: n, .. }
            | Event::Leaving { name: n }
            | Event::Left { name: n }
            | Event::Removed { name: n } => n == name,
            Event::Rejected { .. } | Event::ConfigMismatch { .. } | Event::Reincarnated { .. } => {
                false
            }
        })
        .cloned()
        .collect()
}

fn listed(sim: &Sim, observer: usize, name: &str) -> bool {
    sim.node(observer)
        .membership
        .members(sim.now_ms())
        .iter()
        .any(|v| v.name == name)
}

#[test]
fn clusters_of_10_50_200_converge_from_one_seed() {
    for n in [10, 50, 200] {
        let c = sim::convergence(
            n,
            SimConfig {
                seed: n as u64,
                ..SimConfig::default()
            },
            |_| {},
            40,
        );
        println!("{n} nodes converged in {:?} rounds", c.rounds);
        let rounds = c
            .rounds
            .unwrap_or_else(|| panic!("{n} nodes did not converge in 40 rounds"));
        assert!(rounds <= 15, "{n} nodes took {rounds} rounds");
    }
}

#[test]
fn crashed_node_is_marked_down_by_everyone_at_thresholds_5_8_12() {
    let mut medians = Vec::new();
    for threshold in [5.0, 8.0, 12.0] {
        let d = sim::crash_detection(
            10,
            SimConfig::jittery(7),
            |c| c.phi.threshold = threshold,
            60_000,
            60_000,
        );
        let down: Vec<u64> = d
            .down_ms
            .iter()
            .map(|t| {
                t.unwrap_or_else(|| {
                    panic!("an observer never marked the crashed node down at {threshold}")
                })
            })
            .collect();
        let suspect: Vec<u64> = d
            .suspect_ms
            .iter()
            .map(|t| t.expect("suspected before down"))
            .collect();
        let worst = *down.iter().max().unwrap();
        println!("threshold {threshold}: suspect {suspect:?}, down {down:?}");
        // About 1 s of mean interval + 3 s acceptable pause + 2.5-3 std devs of 0.5 s,
        // then 2 s suspect-to-down: 8-10 s. 20 s leaves room for gossip lag.
        assert!(
            worst <= 20_000,
            "threshold {threshold}: slowest observer took {worst} ms"
        );
        assert!(
            suspect.iter().all(|&s| s >= 3_000),
            "no suspicion before the acceptable pause"
        );
        let mut sorted = down.clone();
        sorted.sort();
        medians.push(sorted[sorted.len() / 2]);
    }
    assert!(
        medians[0] <= medians[1] && medians[1] <= medians[2],
        "higher thresholds detect later: {medians:?}"
    );
}

#[test]
fn one_second_pauses_under_jitter_never_mark_anyone_down() {
    let hours = 3.0;
    let f = sim::false_suspicions(10, SimConfig::jittery(11), |_| {}, hours, 1000, 300_000);
    println!(
        "{} pauses of 1 s over {} node-hours: {} suspect, {} down ({:.3} suspect/node-hour)",
        f.pauses,
        f.node_hours,
        f.suspects,
        f.downs,
        f.suspects as f64 / f.node_hours
    );
    assert!(f.pauses >= 200, "the run did pause nodes ({})", f.pauses);
    assert_eq!(f.downs, 0, "a 1 s pause must not mark a node down");
    assert!(f.suspects as f64 / f.node_hours <= 1.0);
}

#[test]
fn long_pauses_do_get_noticed() {
    // The counterpart of the test above: the same measurement reports downs once the
    // pauses are far past the acceptable pause, so a zero above is not vacuous.
    let f = sim::false_suspicions(10, SimConfig::jittery(12), |_| {}, 0.2, 15_000, 300_000);
    assert!(f.pauses > 0 && f.downs > 0, "{f:?}");
}

#[test]
fn restarted_node_is_seen_with_new_generation_without_flapping() {
    let mut sim = Sim::with_cluster(SimConfig::jittery(21), 10, |_| {});
    sim.run_for(30_000);
    assert!(sim.converged());
    let name = Sim::name(4);
    sim.crash(4);
    sim.run_for(1_000);
    let restarted_at = sim.now_ms();
    sim.restart(4);
    let all: Vec<usize> = (0..10).collect();
    let took = sim.run_until_true(30_000, 100, |s| s.all_see(&all, MemberState::Alive));
    assert!(took.is_some(), "the restarted node is seen alive again");
    sim.run_for(60_000);
    for i in (0..10).filter(|&i| i != 4) {
        let view = sim.node(i).membership.members(sim.now_ms());
        let v = view.iter().find(|v| v.name == name).unwrap();
        assert_eq!(
            (v.state, v.generation),
            (MemberState::Alive, 2),
            "as seen by node {i}"
        );
        let events = events_about(&sim, i, &name);
        let restarts: Vec<_> = events
            .iter()
            .filter(|(_, e)| matches!(e, Event::Restarted { .. }))
            .collect();
        assert_eq!(restarts.len(), 1, "node {i}: {events:?}");
        assert_eq!(
            restarts[0].1,
            Event::Restarted {
                name: name.clone(),
                generation: 2
            }
        );
        assert!(
            !events.iter().any(|(t, e)| *t >= restarted_at
                && matches!(e, Event::Suspect { .. } | Event::Down { .. })),
            "node {i} flapped: {events:?}"
        );
    }
}

#[test]
fn restart_after_being_marked_down_comes_back_once() {
    let mut sim = Sim::with_cluster(SimConfig::jittery(22), 8, |_| {});
    sim.run_for(30_000);
    let name = Sim::name(3);
    sim.crash(3);
    sim.run_for(20_000);
    assert!((0..8).filter(|&i| i != 3).all(|i| sim
        .node(i)
        .membership
        .state_of(&name, sim.now_ms())
        == Some(MemberState::Down)));
    let restarted_at = sim.now_ms();
    sim.restart(3);
    sim.run_for(30_000);
    for i in (0..8).filter(|&i| i != 3) {
        let after: Vec<_> = events_about(&sim, i, &name)
            .into_iter()
            .filter(|(t, _)| *t >= restarted_at)
            .map(|(_, e)| e)
            .collect();
        assert_eq!(
            after,
            vec![Event::Restarted {
                name: name.clone(),
                generation: 2
            }],
            "node {i}"
        );
        assert!(sim.node(i).membership.is_reachable(&name, sim.now_ms()));
    }
}

#[test]
fn restart_reusing_its_generation_catches_up_instead_of_staying_down() {
    let mut sim = Sim::with_cluster(SimConfig::jittery(23), 6, |_| {});
    sim.run_for(60_000);
    let name = Sim::name(2);
    sim.crash(2);
    sim.run_for(15_000);
    sim.restart_as(2, 1);
    sim.node_mut(2).membership.set_local_kv("k", "new").unwrap();
    let all: Vec<usize> = (0..6).collect();
    assert!(sim
        .run_until_true(20_000, 500, |s| s.all_see(&all, MemberState::Alive))
        .is_some());
    let view = sim.node(0).membership.members(sim.now_ms());
    let v = view.iter().find(|v| v.name == name).unwrap();
    assert_eq!(
        (v.generation, v.kv.get("k").map(String::as_str)),
        (1, Some("new")),
        "its new body won too"
    );
    assert!(
        v.heartbeat > 100,
        "it adopted the old incarnation's counter"
    );
}

#[test]
fn partition_halves_mark_each_other_down_and_heal() {
    let n = 10;
    let mut sim = Sim::with_cluster(SimConfig::jittery(31), n, |_| {});
    sim.run_for(30_000);
    assert!(sim.converged());
    let left: Vec<usize> = (0..n / 2).collect();
    let right: Vec<usize> = (n / 2..n).collect();
    sim.partition(&[&left, &right]);
    let split = sim.run_until_true(60_000, 500, |s| {
        left.iter().all(|&i| s.sees(i, &right, MemberState::Down))
            && right.iter().all(|&i| s.sees(i, &left, MemberState::Down))
    });
    println!("halves marked each other down after {split:?} ms");
    assert!(split.is_some(), "each half marks the other down");
    assert!(
        left.iter().all(|&i| sim.sees(i, &left, MemberState::Alive)),
        "a half keeps its own members alive"
    );
    // Down members still own partitions.
    assert_eq!(sim.node(0).membership.ring_members().len(), n);
    sim.heal();
    let healed = sim.run_until_true(60_000, 500, Sim::converged);
    println!("healed after {healed:?} ms");
    assert!(healed.is_some(), "all alive again after the heal");
}

#[test]
fn leave_and_remove_spread_and_are_forgotten_and_stale_copies_do_not_resurrect() {
    let n = 8;
    let forget = 60_000;
    let mut sim = Sim::with_cluster(SimConfig::jittery(41), n, |c| {
        c.forget_left_after_ms = forget
    });
    sim.run_for(30_000);
    assert!(sim.converged());
    let (leaver, dead) = (Sim::name(2), Sim::name(5));
    let others: Vec<usize> = (0..n).filter(|&i| i != 2 && i != 5).collect();

    sim.node_mut(2).membership.leave();
    let t = sim.run_until_true(20_000, 100, |s| {
        others.iter().all(|&i| {
            s.node(i).membership.state_of(&leaver, s.now_ms()) == Some(MemberState::Leaving)
        })
    });
    assert!(t.is_some(), "leaving spreads");
    assert!(
        !sim.node(0).membership.ring_members().contains(&leaver),
        "a leaving node owns nothing"
    );
    sim.node_mut(2).membership.left();
    let t = sim.run_until_true(20_000, 100, |s| {
        others
            .iter()
            .all(|&i| s.node(i).membership.state_of(&leaver, s.now_ms()) == Some(MemberState::Left))
    });
    assert!(t.is_some(), "left spreads");
    sim.crash(2);

    sim.crash(5);
    let m0 = &mut sim.node_mut(0).membership;
    assert!(matches!(
        m0.remove(&Sim::name(0), false),
        Err(GossipError::RemoveSelf(_))
    ));
    assert!(matches!(
        m0.remove("nobody", false),
        Err(GossipError::UnknownMember(_))
    ));
    let refused = m0.remove(&dead, false).unwrap_err();
    assert!(matches!(refused, GossipError::NotDown { .. }), "{refused}");
    assert!(refused.to_string().contains("alive"), "{refused}");
    let t = sim.run_until_true(30_000, 100, |s| {
        others
            .iter()
            .all(|&i| s.node(i).membership.state_of(&dead, s.now_ms()) == Some(MemberState::Down))
    });
    assert!(t.is_some(), "the dead node is marked down");
    let dead_stamp = {
        let v = sim.node(3).membership.members(sim.now_ms());
        let v = v.iter().find(|v| v.name == dead).unwrap();
        (v.generation, v.heartbeat)
    };
    // Declared lost (as for a machine that burned): forgotten like a member that left.
    sim.node_mut(0).membership.remove(&dead, true).unwrap();
    assert_eq!(
        sim.node_mut(0).membership.remove(&dead, true),
        Ok(()),
        "removing twice is a no-op"
    );
    let t = sim.run_until_true(20_000, 100, |s| {
        others
            .iter()
            .all(|&i| s.node(i).membership.state_of(&dead, s.now_ms()) == Some(MemberState::Left))
    });
    assert!(t.is_some(), "the removal spreads");
    for &i in &others {
        assert!(events_about(&sim, i, &leaver).iter().any(|(_, e)| *e
            == Event::Leaving {
                name: leaver.clone()
            }));
        assert!(events_about(&sim, i, &leaver).iter().any(|(_, e)| *e
            == Event::Left {
                name: leaver.clone()
            }));
        // Removed with its data declared lost, it ends as a member that left.
        let ended = [
            Event::Removed { name: dead.clone() },
            Event::Left { name: dead.clone() },
        ];
        assert!(events_about(&sim, i, &dead)
            .iter()
            .any(|(_, e)| ended.contains(e)));
        let ring = sim.node(i).membership.ring_members();
        assert!(!ring.contains(&leaver) && !ring.contains(&dead));
    }

    // A stale record of the removed node, newer heartbeat and all, before and after the
    // tombstone is forgotten.
    let stale_ack = |heartbeat: u64| {
        GossipMessage::V1(MessageV1 {
            cluster: ClusterConfig::default(),
            from: Peer {
                name: Sim::name(1),
                address: Sim::address(1),
                stamp: Stamp {
                    generation: 1,
                    tombstone: false,
                    version: 0,
                    heartbeat: 1,
                },
            },
            payload: Payload::Ack {
                updates: vec![MemberUpdate {
                    name: dead.clone(),
                    generation: dead_stamp.0,
                    heartbeat,
                    body: Some(MemberBody {
                        address: Sim::address(5),
                        version: 0,
                        status: Status::Alive,
                        kv: BTreeMap::new(),
                    }),
                }],
            },
        })
    };
    sim.inject(3, &Sim::address(1), stale_ack(dead_stamp.1 + 1000));
    sim.run_for(100);
    assert_eq!(
        sim.node(3).membership.state_of(&dead, sim.now_ms()),
        Some(MemberState::Left)
    );

    sim.run_for(forget + 10_000);
    for &i in &others {
        assert!(
            !listed(&sim, i, &dead) && !listed(&sim, i, &leaver),
            "node {i} forgot both tombstones"
        );
    }
    sim.inject(3, &Sim::address(1), stale_ack(dead_stamp.1 + 2000));
    // The dead node's own last digest, replayed: answered with the tombstone.
    let stale_syn = GossipMessage::V1(MessageV1 {
        cluster: ClusterConfig::default(),
        from: Peer {
            name: dead.clone(),
            address: Sim::address(5),
            stamp: Stamp {
                generation: dead_stamp.0,
                tombstone: false,
                version: 0,
                heartbeat: dead_stamp.1 + 3000,
            },
        },
        payload: Payload::Syn {
            digest: chorus_gossip::Digest {
                start: None,
                end: None,
                entries: vec![],
            },
        },
    });
    sim.inject(4, &Sim::address(5), stale_syn);
    sim.run_for(10_000);
    for &i in &others {
        assert!(
            !listed(&sim, i, &dead),
            "node {i} resurrected the removed node"
        );
    }

    // A new generation of a removed node is a legitimate rejoin.
    sim.restart(5);
    let all_but_leaver: Vec<usize> = (0..n).filter(|&i| i != 2).collect();
    let t = sim.run_until_true(30_000, 500, |s| {
        s.all_see(&all_but_leaver, MemberState::Alive)
    });
    assert!(
        t.is_some(),
        "the removed node rejoins with a new generation"
    );
}

#[test]
fn node_with_other_replication_factor_is_rejected_with_a_clear_reason() {
    let mut sim = Sim::with_cluster(SimConfig::default(), 5, |_| {});
    sim.run_for(10_000);
    assert!(sim.converged());
    let bad = sim.add_node(Sim::node_config(
        5,
        ClusterConfig {
            n: 2,
            ring_size: 64,
        },
        &[0],
    ));
    sim.run_for(10_000);
    let reason = sim
        .node(bad)
        .membership
        .rejected()
        .expect("the joiner was refused")
        .to_string();
    assert_eq!(
        reason,
        "cluster replication factor is 3, this node was started with --n 2"
    );
    assert!(sim.node(bad).events.iter().any(|(_, e)| *e
        == Event::Rejected {
            reason: reason.clone()
        }));
    assert!(sim.node(0).events.iter().any(
        |(_, e)| matches!(e, Event::ConfigMismatch { reason, .. } if reason.contains("--n 2"))
    ));
    for i in 0..5 {
        assert!(
            !listed(&sim, i, &Sim::name(5)),
            "node {i} lists the refused node"
        );
        assert_eq!(sim.node(i).membership.rejected(), None);
    }
    let now = sim.now_ms();
    assert!(
        sim.node_mut(bad)
            .membership
            .tick(now, &mut StdRng::seed_from_u64(0))
            .is_empty(),
        "a rejected node stays quiet"
    );
}

#[test]
fn cluster_node_seeded_with_a_misconfigured_node_is_not_the_one_rejected() {
    let mut sim = Sim::new(SimConfig::default());
    // A lone misconfigured node first, then a cluster whose seeds include it.
    sim.add_node(Sim::node_config(
        0,
        ClusterConfig {
            n: 3,
            ring_size: 128,
        },
        &[],
    ));
    for i in 1..5 {
        sim.add_node(Sim::node_config(i, ClusterConfig::default(), &[0, 1]));
    }
    sim.run_for(20_000);
    let cluster: Vec<usize> = (1..5).collect();
    assert!(sim.all_see(&cluster, MemberState::Alive));
    for &i in &cluster {
        assert_eq!(sim.node(i).membership.rejected(), None, "node {i}");
    }
    let reason = sim
        .node(0)
        .membership
        .rejected()
        .expect("the misconfigured node gave up");
    assert!(
        reason.contains("ring size is 64") && reason.contains("--ring-size 128"),
        "{reason}"
    );
}

#[test]
fn second_node_claiming_a_taken_name_is_rejected() {
    let mut sim = Sim::with_cluster(SimConfig::default(), 4, |_| {});
    sim.run_for(10_000);
    let mut impostor = Sim::node_config(2, ClusterConfig::default(), &[0]);
    impostor.address = "10.9.9.9:7000".into();
    let i = sim.add_node(impostor);
    sim.run_for(10_000);
    let reason = sim
        .node(i)
        .membership
        .rejected()
        .expect("the impostor was refused");
    assert!(
        reason.contains("name n002 is taken by the live node at 10.0.0.2:7000"),
        "{reason}"
    );
    for j in 0..4 {
        assert_eq!(
            sim.node(j).membership.address_of(&Sim::name(2)),
            Some(Sim::address(2).as_str())
        );
        assert_eq!(sim.node(j).membership.rejected(), None);
    }
}

/// Issue 15, defect 6: a second process started with a live node's name (a newer
/// generation, another address) evicted the live node, which held the data.
#[test]
fn a_newer_process_claiming_a_live_nodes_name_is_refused_and_the_live_node_stays() {
    let mut sim = Sim::with_cluster(SimConfig::default(), 4, |_| {});
    sim.run_for(10_000);
    let mut impostor = Sim::node_config(2, ClusterConfig::default(), &[0]);
    impostor.address = "10.9.9.9:7000".into();
    impostor.generation = 99;
    let i = sim.add_node(impostor);
    sim.run_for(20_000);
    let reason = sim
        .node(i)
        .membership
        .rejected()
        .expect("the newcomer was refused");
    assert!(
        reason.contains("is taken by the live node at 10.0.0.2:7000"),
        "{reason}"
    );
    for j in 0..4 {
        assert_eq!(sim.node(j).membership.rejected(), None, "node {j}");
        assert_eq!(
            sim.node(j).membership.address_of(&Sim::name(2)),
            Some(Sim::address(2).as_str()),
            "node {j}"
        );
    }
    assert!(sim.all_see(&[0, 1, 2, 3], MemberState::Alive));
}

/// A node that really moved (its old process is dead) is accepted at its new address once
/// the old incarnation is seen failing.
#[test]
fn a_node_restarted_at_a_new_address_after_its_old_process_died_is_accepted() {
    let mut sim = Sim::with_cluster(SimConfig::default(), 4, |_| {});
    sim.run_for(10_000);
    sim.crash(2);
    sim.run_for(20_000);
    let mut moved = Sim::node_config(2, ClusterConfig::default(), &[0]);
    moved.address = "10.9.9.9:7000".into();
    moved.generation = 99;
    let i = sim.add_node(moved);
    sim.run_for(20_000);
    assert_eq!(sim.node(i).membership.rejected(), None);
    for j in [0, 1, 3] {
        assert_eq!(
            sim.node(j).membership.address_of(&Sim::name(2)),
            Some("10.9.9.9:7000"),
            "node {j}"
        );
    }
}

/// Issue 15: two lone nodes with different `--n` each kept serving as a one-node cluster
/// (a tie: neither knew more live members). The one started later gives up.
#[test]
fn two_lone_nodes_with_different_settings_do_not_both_keep_serving() {
    let mut sim = Sim::new(SimConfig::default());
    let older = sim.add_node(Sim::node_config(0, ClusterConfig::default(), &[1]));
    let mut config = Sim::node_config(
        1,
        ClusterConfig {
            n: 2,
            ring_size: 64,
        },
        &[0],
    );
    config.generation = 2;
    let younger = sim.add_node(config);
    sim.run_for(30_000);
    assert_eq!(sim.node(older).membership.rejected(), None);
    let reason = sim
        .node(younger)
        .membership
        .rejected()
        .expect("the younger node gave up");
    assert!(reason.contains("--n 2"), "{reason}");
}

#[test]
fn node_removed_as_lost_while_cut_off_stops_when_it_hears_of_it() {
    let mut sim = Sim::with_cluster(SimConfig::default(), 6, |_| {});
    sim.run_for(10_000);
    let rest: Vec<usize> = (0..5).collect();
    sim.partition(&[&rest, &[5]]);
    sim.run_for(20_000);
    sim.node_mut(0)
        .membership
        .remove(&Sim::name(5), true)
        .unwrap();
    sim.run_for(5_000);
    sim.heal();
    sim.run_for(30_000);
    let reason = sim
        .node(5)
        .membership
        .rejected()
        .expect("the removed node learned it");
    assert!(reason.contains("removed from the cluster"), "{reason}");
    for i in 0..5 {
        assert_eq!(
            sim.node(i).membership.state_of(&Sim::name(5), sim.now_ms()),
            Some(MemberState::Left)
        );
    }
}

#[test]
fn messages_stay_under_a_small_bound_with_200_nodes_and_still_converge() {
    let bound = 4096;
    let cfg = SimConfig {
        seed: 51,
        check_wire: true,
        ..SimConfig::jittery(51)
    };
    let mut sim = Sim::with_cluster(cfg, 200, |c| {
        c.max_message_bytes = bound;
        c.max_kv_bytes = 1024;
    });
    for i in 0..200 {
        sim.node_mut(i)
            .membership
            .set_local_kv("load", &format!("{:.3}", i as f64 / 7.0))
            .unwrap();
    }
    let took = sim.run_until_true(60_000, 500, Sim::converged);
    println!("converged in {took:?} ms; {:?}", sim.stats);
    assert!(
        took.is_some(),
        "200 nodes converge with {bound}-byte messages"
    );
    // Churn: a restart and a crash on top of steady state.
    sim.crash(17);
    sim.restart(42);
    sim.run_for(10_000);
    assert_eq!(
        sim.stats.oversize, 0,
        "every message fits {bound} bytes: {:?}",
        sim.stats
    );
    assert!(sim.stats.max_message_bytes <= bound);
    assert!(
        sim.stats.max_message_bytes > bound / 2,
        "the bound was actually exercised"
    );
    // Key-values spread with the records.
    let v = sim.node(100).membership.members(sim.now_ms());
    assert_eq!(
        v.iter()
            .find(|v| v.name == Sim::name(7))
            .unwrap()
            .kv
            .get("load")
            .map(String::as_str),
        Some("1.000")
    );
}

/// Runs until every node in `observers` sees `name` in `state`; panics naming `what`.
fn wait_state(sim: &mut Sim, observers: &[usize], name: &str, state: MemberState, what: &str) {
    let t = sim.run_until_true(30_000, 100, |s| {
        observers
            .iter()
            .all(|&i| s.node(i).membership.state_of(name, s.now_ms()) == Some(state))
    });
    assert!(t.is_some(), "{what}");
}

#[test]
fn a_removed_member_is_kept_until_it_returns_because_its_data_may() {
    let forget = 60_000;
    let mut sim = Sim::with_cluster(SimConfig::jittery(43), 5, |c| {
        c.forget_left_after_ms = forget
    });
    sim.run_for(20_000);
    assert!(sim.converged());
    let dead = Sim::name(4);
    let others = [0, 1, 2, 3];
    sim.crash(4);
    wait_state(
        &mut sim,
        &others,
        &dead,
        MemberState::Down,
        "the dead node is marked down",
    );
    sim.node_mut(0).membership.remove(&dead, false).unwrap();
    wait_state(
        &mut sim,
        &others,
        &dead,
        MemberState::Left,
        "the removal spreads",
    );
    sim.run_for(forget + 10_000);
    for i in others {
        let m = &sim.node(i).membership;
        assert_eq!(m.removed_awaiting_return(), vec![dead.clone()], "node {i}");
        let view = m.members(sim.now_ms());
        assert!(
            view.iter().any(|v| v.name == dead && v.removed),
            "node {i} keeps the removal"
        );
        assert!(!m.ring_members().contains(&dead));
    }
    sim.restart(4);
    wait_state(
        &mut sim,
        &others,
        &dead,
        MemberState::Alive,
        "the removed node rejoins",
    );
    for i in others {
        assert!(
            sim.node(i).membership.removed_awaiting_return().is_empty(),
            "node {i}"
        );
    }
}

#[test]
fn a_removed_member_declared_lost_is_forgotten_and_its_lost_data_is_not_awaited() {
    let mut sim = Sim::with_cluster(SimConfig::jittery(44), 4, |_| {});
    sim.run_for(20_000);
    let dead = Sim::name(3);
    sim.crash(3);
    wait_state(
        &mut sim,
        &[0, 1, 2],
        &dead,
        MemberState::Down,
        "marked down",
    );
    sim.node_mut(1).membership.remove(&dead, false).unwrap();
    wait_state(
        &mut sim,
        &[0, 1, 2],
        &dead,
        MemberState::Left,
        "removal spreads",
    );
    assert_eq!(
        sim.node(2).membership.removed_awaiting_return(),
        vec![dead.clone()]
    );
    // Declaring the data lost later ends the wait everywhere.
    sim.node_mut(0).membership.remove(&dead, true).unwrap();
    let t = sim.run_until_true(20_000, 100, |s| {
        (0..3).all(|i| s.node(i).membership.removed_awaiting_return().is_empty())
    });
    assert!(t.is_some(), "data_lost spreads");
}

#[test]
fn a_node_removed_while_cut_off_hands_over_as_a_new_generation_instead_of_stopping() {
    let mut sim = Sim::with_cluster(SimConfig::jittery(45), 5, |_| {});
    sim.run_for(20_000);
    assert!(sim.converged());
    let cut = Sim::name(4);
    let generation = sim.node(4).membership.config().generation;
    sim.partition(&[&[0, 1, 2, 3], &[4]]);
    wait_state(
        &mut sim,
        &[0, 1, 2, 3],
        &cut,
        MemberState::Down,
        "the cut-off node is down",
    );
    sim.node_mut(0).membership.remove(&cut, false).unwrap();
    wait_state(
        &mut sim,
        &[0, 1, 2, 3],
        &cut,
        MemberState::Left,
        "removal spreads",
    );
    sim.heal();
    wait_state(
        &mut sim,
        &[0, 1, 2, 3],
        &cut,
        MemberState::Leaving,
        "it comes back leaving",
    );
    let me = &sim.node(4);
    assert!(
        me.membership.rejected().is_none(),
        "it must not stop before handing over"
    );
    assert!(me.events.iter().any(|(_, e)| *e
        == Event::Reincarnated {
            generation: generation + 1,
            handing_over: true
        }));
    for i in 0..4 {
        let m = &sim.node(i).membership;
        assert!(m.removed_awaiting_return().is_empty(), "node {i}");
        assert!(
            !m.ring_members().contains(&cut),
            "a node handing over owns nothing"
        );
    }
    sim.node_mut(4).membership.left();
    wait_state(
        &mut sim,
        &[0, 1, 2, 3],
        &cut,
        MemberState::Left,
        "it leaves once handed over",
    );
}

#[test]
fn a_fresh_replacement_outranks_a_dead_predecessor_whose_clock_ran_ahead() {
    let mut sim = Sim::with_cluster(SimConfig::jittery(46), 4, |_| {});
    let ahead = 9_000_000_000_000;
    sim.restart_as(3, ahead);
    sim.run_for(20_000);
    assert!(sim.converged());
    let name = Sim::name(3);
    sim.crash(3);
    wait_state(
        &mut sim,
        &[0, 1, 2],
        &name,
        MemberState::Down,
        "the predecessor is down",
    );

    // A restart with its data but a generation behind its predecessor's stops, as a
    // stale process must.
    sim.restart_as(3, 500);
    let t = sim.run_until_true(20_000, 100, |s| s.node(3).membership.rejected().is_some());
    assert!(
        t.is_some(),
        "a non-fresh process behind its own name's generation stops"
    );

    // A replacement with an empty disk takes the predecessor's generation plus one.
    sim.node_mut(3).config.fresh_identity = true;
    sim.restart_as(3, 600);
    wait_state(
        &mut sim,
        &[0, 1, 2],
        &name,
        MemberState::Alive,
        "the replacement rejoins",
    );
    assert!(sim.node(3).membership.rejected().is_none());
    for i in 0..3 {
        let view = sim.node(i).membership.members(sim.now_ms());
        let v = view.iter().find(|v| v.name == name).unwrap();
        assert_eq!(v.generation, ahead + 1, "node {i}");
    }
    assert!(sim.node(3).events.iter().any(|(_, e)| *e
        == Event::Reincarnated {
            generation: ahead + 1,
            handing_over: false
        }));
}

#[test]
fn a_removal_declared_lost_beats_a_plain_removal_made_at_the_same_time() {
    let mut sim = Sim::with_cluster(SimConfig::jittery(47), 4, |_| {});
    sim.run_for(20_000);
    let dead = Sim::name(3);
    sim.crash(3);
    wait_state(
        &mut sim,
        &[0, 1, 2],
        &dead,
        MemberState::Down,
        "marked down",
    );
    sim.node_mut(0).membership.remove(&dead, false).unwrap();
    sim.node_mut(1).membership.remove(&dead, true).unwrap();
    let t = sim.run_until_true(20_000, 100, |s| {
        (0..3).all(|i| s.node(i).membership.removed_awaiting_return().is_empty())
    });
    assert!(
        t.is_some(),
        "one of two concurrent removals must win everywhere"
    );
}

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::refusal::TIE_GRACE_MS;
use super::*;
use crate::config::{ClusterConfig, MIN_MESSAGE_BYTES};
use crate::wire::{RejectKind, Stamp};

fn config(name: &str) -> Config {
    Config::new(
        name,
        format!("{name}:7000"),
        1,
        ClusterConfig::default(),
        vec![],
    )
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(9)
}

fn record(
    name: &str,
    generation: u64,
    heartbeat: u64,
    version: u64,
    status: Status,
) -> MemberUpdate {
    MemberUpdate {
        name: name.into(),
        generation,
        heartbeat,
        body: Some(MemberBody {
            address: format!("{name}:7000"),
            version,
            status,
            kv: BTreeMap::new(),
        }),
    }
}

/// Hands `updates` to `m` as an Ack from a peer it does not know.
fn deliver(m: &mut Membership, now: u64, updates: Vec<MemberUpdate>) -> Vec<Outgoing> {
    let msg = GossipMessage::V1(MessageV1 {
        cluster: ClusterConfig::default(),
        from: Peer {
            name: "relay".into(),
            address: "relay:7000".into(),
            stamp: Stamp {
                generation: 1,
                tombstone: false,
                version: 0,
                heartbeat: 1,
            },
        },
        payload: Payload::Ack { updates },
    });
    m.handle(now, "relay:7000", msg, &mut rng())
}

fn stamp_of(m: &Membership, name: &str) -> Option<Stamp> {
    m.members.get(name).map(Member::stamp)
}

#[test]
fn states_display_and_serialize_lowercase() {
    let all = [
        MemberState::Alive,
        MemberState::Suspect,
        MemberState::Down,
        MemberState::Leaving,
        MemberState::Left,
    ];
    let shown: Vec<String> = all.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["alive", "suspect", "down", "leaving", "left"]);
    assert_eq!(
        rmp_serde::from_slice::<String>(&rmp_serde::to_vec(&MemberState::Down).unwrap()).unwrap(),
        "down"
    );
}

#[test]
fn invalid_configs_are_refused_with_a_reason() {
    let mut c = config("a");
    c.max_message_bytes = 100;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("max_message_bytes"));
    let mut c = config("a");
    c.name = "x".repeat(MAX_NAME_BYTES + 1);
    assert!(c.validate().is_err());
    let mut c = config("a");
    c.phi.threshold = f64::NAN;
    assert!(c.validate().is_err());
    assert!(std::panic::catch_unwind(|| Membership::new(
        Config {
            fanout: 0,
            ..config("a")
        },
        0
    ))
    .is_err());
}

#[test]
fn two_nodes_meet_through_a_seed_in_one_round() {
    let mut a = Membership::new(
        Config {
            seeds: vec!["b:7000".into()],
            ..config("a")
        },
        0,
    );
    let mut b = Membership::new(config("b"), 0);
    let syn = a.tick(500, &mut rng());
    assert_eq!(syn.len(), 1, "a node alone contacts its seed");
    assert_eq!(syn[0].to, "b:7000");
    let syn_ack = b.handle(510, "a:7000", syn[0].message.clone(), &mut rng());
    let ack = a.handle(520, "b:7000", syn_ack[0].message.clone(), &mut rng());
    assert!(b
        .handle(530, "a:7000", ack[0].message.clone(), &mut rng())
        .is_empty());
    assert_eq!(a.drain_events(), vec![Event::Joined { name: "b".into() }]);
    assert_eq!(b.drain_events(), vec![Event::Joined { name: "a".into() }]);
    let names: Vec<String> = a.members(600).into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(a.ring_members(), ["a", "b"]);
    assert!(a.is_reachable("b", 600) && !a.is_reachable("c", 600));
    assert_eq!(a.address_of("b"), Some("b:7000"));
}

#[test]
fn newer_generation_replaces_and_older_information_is_ignored() {
    let mut m = Membership::new(config("me"), 0);
    deliver(&mut m, 0, vec![record("x", 2, 10, 3, Status::Alive)]);
    deliver(&mut m, 1, vec![record("x", 1, 99, 9, Status::Left)]);
    assert_eq!(
        stamp_of(&m, "x").unwrap().rank(),
        (2, false, 3),
        "an older generation changes nothing"
    );
    // A heartbeat-only update of an unknown generation cannot introduce it.
    deliver(
        &mut m,
        2,
        vec![MemberUpdate {
            name: "x".into(),
            generation: 3,
            heartbeat: 1,
            body: None,
        }],
    );
    assert_eq!(stamp_of(&m, "x").unwrap().generation, 2);
    deliver(&mut m, 3, vec![record("x", 3, 1, 0, Status::Alive)]);
    assert_eq!(stamp_of(&m, "x").unwrap().rank(), (3, false, 0));
    assert_eq!(
        m.drain_events(),
        vec![
            Event::Joined { name: "x".into() },
            Event::Restarted {
                name: "x".into(),
                generation: 3
            }
        ]
    );
}

#[test]
fn a_tombstone_beats_any_version_of_its_generation_and_is_final() {
    let mut m = Membership::new(config("me"), 0);
    deliver(&mut m, 0, vec![record("x", 1, 5, 7, Status::Alive)]);
    deliver(&mut m, 1, vec![record("x", 1, 5, 0, Status::Removed)]);
    deliver(&mut m, 2, vec![record("x", 1, 50, 100, Status::Alive)]);
    assert_eq!(m.state_of("x", 3), Some(MemberState::Left));
    assert!(m.ring_members() == ["me"]);
    assert_eq!(
        m.drain_events(),
        vec![
            Event::Joined { name: "x".into() },
            Event::Removed { name: "x".into() }
        ]
    );
}

#[test]
fn same_name_and_generation_at_another_address_is_ignored() {
    let mut m = Membership::new(config("me"), 0);
    deliver(&mut m, 0, vec![record("x", 1, 5, 0, Status::Alive)]);
    let mut other = record("x", 1, 6, 1, Status::Leaving);
    other.body.as_mut().unwrap().address = "elsewhere:1".into();
    deliver(&mut m, 1, vec![other]);
    assert_eq!(m.address_of("x"), Some("x:7000"));
    assert_eq!(m.state_of("x", 1), Some(MemberState::Alive));
    assert_eq!(m.stats().ignored_records, 1);
}

#[test]
fn oversized_records_and_members_past_the_bound_are_refused() {
    let mut m = Membership::new(
        Config {
            max_members: 3,
            ..config("me")
        },
        0,
    );
    let mut fat = record("fat", 1, 1, 0, Status::Alive);
    fat.body
        .as_mut()
        .unwrap()
        .kv
        .insert("k".into(), "v".repeat(5000));
    deliver(
        &mut m,
        0,
        vec![
            fat,
            record(&"n".repeat(MAX_NAME_BYTES + 1), 1, 1, 0, Status::Alive),
        ],
    );
    assert_eq!(m.stats().ignored_records, 2);
    deliver(
        &mut m,
        0,
        vec![
            record("a", 1, 1, 0, Status::Alive),
            record("b", 1, 1, 0, Status::Alive),
            record("c", 1, 1, 0, Status::Alive),
        ],
    );
    assert_eq!(m.members(0).len(), 3);
    assert_eq!(m.stats().refused_members, 1);
}

#[test]
fn local_kv_is_versioned_and_bounded() {
    let mut m = Membership::new(config("me"), 0);
    m.set_local_kv("load", "1").unwrap();
    m.set_local_kv("load", "1").unwrap();
    assert_eq!(m.me().version, 1, "an unchanged value is not news");
    let err = m.set_local_kv("blob", &"x".repeat(5000)).unwrap_err();
    assert!(
        matches!(err, GossipError::KvTooLarge { limit: 4096, .. }),
        "{err}"
    );
    assert_eq!(
        m.members(0)[0].kv.get("load").map(String::as_str),
        Some("1")
    );
}

#[test]
fn leave_then_left_move_self_out_of_the_ring() {
    let mut m = Membership::new(config("me"), 0);
    m.leave();
    assert_eq!(
        (m.state_of("me", 0), m.ring_members().len()),
        (Some(MemberState::Leaving), 0)
    );
    m.left();
    assert_eq!(m.state_of("me", 0), Some(MemberState::Left));
    assert_eq!(m.me().stamp().rank(), (1, true, 2));
}

#[test]
fn digests_slice_large_views_and_cover_everyone_in_turn() {
    let mut m = Membership::new(
        Config {
            max_message_bytes: MIN_MESSAGE_BYTES,
            max_kv_bytes: 1024,
            ..config("me")
        },
        0,
    );
    let names: Vec<String> = (0..600)
        .map(|i| format!("member-with-a-longish-name-{i:04}"))
        .collect();
    deliver(
        &mut m,
        0,
        names
            .iter()
            .map(|n| record(n, 1, 1, 0, Status::Alive))
            .collect(),
    );
    let mut seen = Vec::new();
    let mut slices = 0;
    loop {
        let out = m.tick(500 * (slices + 1), &mut rng());
        let GossipMessage::V1(MessageV1 {
            payload: Payload::Syn { digest },
            ..
        }) = &out[0].message
        else {
            panic!()
        };
        assert!(out[0].message.encoded_len() <= MIN_MESSAGE_BYTES);
        assert_eq!(
            digest.start.as_deref(),
            seen.last().map(|_| digest.entries[0].name.as_str())
        );
        assert!(digest.entries.is_sorted_by(|a, b| a.name < b.name));
        seen.extend(digest.entries.iter().map(|e| e.name.clone()));
        slices += 1;
        if digest.end.is_none() {
            break;
        }
    }
    assert!(slices > 2, "600 entries do not fit one 4 KiB digest");
    let all: Vec<String> = m.members.keys().cloned().collect();
    assert_eq!(
        seen, all,
        "one cycle covers every member exactly once, in order"
    );
}

#[test]
fn smaller_side_of_a_refusal_gives_up_and_larger_side_answers() {
    let reject = |alive_members| {
        GossipMessage::V1(MessageV1 {
            cluster: ClusterConfig {
                n: 5,
                ring_size: 64,
            },
            from: Peer {
                name: "p".into(),
                address: "p:7000".into(),
                stamp: Stamp {
                    generation: 1,
                    tombstone: false,
                    version: 0,
                    heartbeat: 1,
                },
            },
            payload: Payload::Reject {
                kind: RejectKind::ClusterConfig,
                reason: "cluster replication factor is 5, this node was started with --n 3".into(),
                alive_members,
            },
        })
    };
    // Equal sides (issue 15: two lone nodes with different --n both kept serving): the
    // one that started later gives up, the older one answers.
    let mut younger = Membership::new(
        Config {
            generation: 2,
            ..config("a")
        },
        0,
    );
    assert!(younger
        .handle(0, "p:7000", reject(1), &mut rng())
        .is_empty());
    assert!(younger.rejected().is_none(), "a tie is not decided at once");
    younger.handle(TIE_GRACE_MS, "p:7000", reject(1), &mut rng());
    assert!(
        younger.rejected().is_some(),
        "the younger of two lone nodes gives up"
    );
    let mut lone = Membership::new(config("me"), 0);
    let answer = lone.handle(0, "p:7000", reject(1), &mut rng());
    assert_eq!(
        lone.rejected(),
        None,
        "same generation: the lower name wins"
    );
    assert_eq!(answer.len(), 1, "the winner of a tie answers");
    assert!(
        matches!(&lone.drain_events()[..], [Event::ConfigMismatch { reason, .. }] if reason.contains("peer runs with --n 5"))
    );
    deliver(&mut lone, 0, vec![record("x", 1, 1, 0, Status::Alive)]);
    let answer = lone.handle(1, "p:7000", reject(1), &mut rng());
    assert!(matches!(
        &answer[0].message,
        GossipMessage::V1(MessageV1 {
            payload: Payload::Reject {
                alive_members: 2,
                ..
            },
            ..
        })
    ));
    assert!(
        lone.drain_events()
            .iter()
            .all(|e| !matches!(e, Event::ConfigMismatch { .. })),
        "reported once a minute"
    );
    lone.handle(2, "p:7000", reject(3), &mut rng());
    assert_eq!(
        lone.rejected(),
        Some("cluster replication factor is 5, this node was started with --n 3")
    );
    assert!(lone.tick(500, &mut rng()).is_empty());
}

#[test]
fn a_full_event_queue_drops_the_oldest() {
    let mut m = Membership::new(
        Config {
            max_members: 2,
            ..config("me")
        },
        0,
    );
    let capacity = 4 * 2 + 64;
    for i in 0..capacity + 5 {
        let address = format!("p{i}:7000");
        let msg = GossipMessage::V1(MessageV1 {
            cluster: ClusterConfig {
                n: 1,
                ring_size: 64,
            },
            from: Peer {
                name: format!("p{i}"),
                address: address.clone(),
                stamp: Stamp {
                    generation: 1,
                    tombstone: false,
                    version: 0,
                    heartbeat: 1,
                },
            },
            payload: Payload::Ack { updates: vec![] },
        });
        assert_eq!(m.handle(0, &address, msg, &mut rng()).len(), 1, "refused");
    }
    let events = m.drain_events();
    assert_eq!(events.len(), capacity);
    assert!(matches!(&events[0], Event::ConfigMismatch { from, .. } if from == "p5:7000"));
    assert_eq!(m.stats().dropped_events, 5);
    assert_eq!(m.stats().refused_messages, capacity as u64 + 5);
}

#[test]
fn time_going_backwards_is_clamped() {
    let mut m = Membership::new(config("me"), 1000);
    deliver(&mut m, 1000, vec![record("x", 1, 1, 0, Status::Alive)]);
    deliver(&mut m, 10, vec![record("x", 1, 2, 0, Status::Alive)]);
    assert_eq!(m.members(0)[1].heartbeat_age_ms, Some(0));
}

proptest! {
    /// Newer information always wins whatever order records arrive in: the result is
    /// the highest generation, its highest (tombstone, version), and its highest
    /// heartbeat.
    #[test]
    fn merge_result_does_not_depend_on_arrival_order(
        records in proptest::collection::vec((1u64..4, 0u64..50, 0u64..5, 0usize..4), 1..12),
        seed: u64,
    ) {
        let statuses = [Status::Alive, Status::Leaving, Status::Left, Status::Removed];
        let updates: Vec<MemberUpdate> = records.iter().map(|&(g, h, v, s)| record("x", g, h, v, statuses[s])).collect();
        let mut shuffled = updates.clone();
        shuffled.shuffle(&mut StdRng::seed_from_u64(seed));
        let mut a = Membership::new(config("me"), 0);
        let mut b = Membership::new(config("me"), 0);
        for u in updates.clone() {
            deliver(&mut a, 0, vec![u]);
        }
        for u in shuffled {
            deliver(&mut b, 0, vec![u]);
        }
        let top = records.iter().map(|r| r.0).max().unwrap();
        let rank = records.iter().filter(|r| r.0 == top).map(|&(g, _, v, s)| (g, statuses[s].is_tombstone(), v)).max().unwrap();
        let heartbeat = records.iter().filter(|r| r.0 == top).map(|r| r.1).max().unwrap();
        for m in [&a, &b] {
            let s = stamp_of(m, "x").unwrap();
            prop_assert_eq!(s.rank(), rank);
            prop_assert_eq!(s.heartbeat, heartbeat);
        }
    }

    /// Whatever a node knows, every message it answers with fits the bound.
    #[test]
    fn answers_fit_the_message_bound(
        members in proptest::collection::vec(("[a-z]{1,40}", 0usize..1024), 1..300),
        max in MIN_MESSAGE_BYTES..12_000usize,
    ) {
        let cfg = |name: &str| Config { max_message_bytes: max, max_kv_bytes: 1024, ..config(name) };
        let mut full = Membership::new(cfg("full"), 0);
        let records = members.iter().map(|(name, kv)| {
            let mut r = record(name, 1, 1, 0, Status::Alive);
            r.body.as_mut().unwrap().kv.insert("k".into(), "v".repeat(*kv));
            r
        });
        for chunk in records.collect::<Vec<_>>().chunks(8) {
            deliver(&mut full, 0, chunk.to_vec());
        }
        let mut empty = Membership::new(Config { seeds: vec!["full:7000".into()], ..cfg("empty") }, 0);
        for round in 1..4 {
            for syn in empty.tick(round * 500, &mut rng()) {
                prop_assert!(syn.message.encoded_len() <= max);
                for syn_ack in full.handle(round * 500, "empty:7000", syn.message, &mut rng()) {
                    prop_assert!(syn_ack.message.encoded_len() <= max);
                    for ack in empty.handle(round * 500, "full:7000", syn_ack.message, &mut rng()) {
                        prop_assert!(ack.message.encoded_len() <= max);
                    }
                }
            }
        }
    }
}

#[test]
fn with_live_peers_a_seed_no_known_member_is_at_is_tried_now_and_then() {
    // a knows b (kept live) and has seeds b and c; no member it knows is at c.
    let mut a = Membership::new(
        Config {
            seeds: vec!["b:7000".into(), "c:7000".into()],
            ..config("a")
        },
        0,
    );
    let mut r = rng();
    let rounds = 200;
    let mut to_c = 0;
    for i in 1..=rounds {
        let now = i * 100;
        deliver(&mut a, now, vec![record("b", 1, i, 0, Status::Alive)]);
        let out = a.tick(now, &mut r);
        assert!(out.iter().any(|o| o.to == "b:7000"), "round {i}: {out:?}");
        to_c += usize::from(out.iter().any(|o| o.to == "c:7000"));
    }
    // Odds 1/(live+1) = 1/2 a round: far from never, and not every round.
    assert!(
        (40..=160).contains(&to_c),
        "c tried in {to_c} of {rounds} rounds"
    );
}

use super::*;
use crate::causality::ActorId;
use chorus_ring::Ring;

#[test]
fn preconditions_judge_the_state_read_first() {
    let (a, b) = (ActorId(1), ActorId(2));
    let value = |v: &[u8]| Sibling::value(v.to_vec(), None);
    let empty = Object::new();
    let v1 = empty.update(&Context::default(), a, value(b"v1"));
    let deleted = v1.update(&v1.context(), a, Sibling::tombstone());
    let seen = v1.context();
    // A write v1's reader did not see, concurrent with v1.
    let both = v1.sync(&empty.update(&Context::default(), b, value(b"v2")));
    let now = 1_000;
    let expiring = |at| empty.update(&Context::default(), a, value(b"e").expiring_at(Some(at)));
    let (expired, not_yet) = (expiring(now), expiring(now + 1));

    for state in [&empty, &deleted, &expired] {
        let context = Precondition::Absent.check(state, now).expect("absent");
        assert_eq!(context, state.context(), "it supersedes the dead versions");
    }
    for state in [&v1, &both, &not_yet] {
        assert!(matches!(
            Precondition::Absent.check(state, now),
            Err(CoordinatorError::PreconditionFailed { .. })
        ));
    }
    assert_eq!(
        Precondition::Matches(seen.clone()).check(&v1, now).unwrap(),
        seen
    );
    match Precondition::Matches(seen).check(&both, now) {
        Err(CoordinatorError::PreconditionFailed { current, .. }) => {
            assert_eq!(current, both.context())
        }
        other => panic!("a stale context passed: {other:?}"),
    }
    assert!(Precondition::Matches(Context::default())
        .check(&empty, now)
        .is_ok());
    assert!(Precondition::Matches(Context::default())
        .check(&v1, now)
        .is_err());
}

fn view(members: &[&str], down: &[&str]) -> ClusterView {
    ClusterView {
        ring: Arc::new(Ring::new(64, 3, members.iter().copied()).unwrap()),
        unreachable: Arc::new(down.iter().map(|s| s.to_string()).collect()),
    }
}

#[test]
fn targets_are_the_primaries_when_all_are_reachable() {
    let v = view(&["a", "b", "c", "d", "e"], &[]);
    for p in 0..64 {
        let t = targets(&v, p);
        let primaries: Vec<&str> = v.ring.primaries(p).iter().map(String::as_str).collect();
        assert_eq!(
            t.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            primaries
        );
        assert!(t.iter().all(|t| t.primary && t.hint_for.is_none()));
    }
}

#[test]
fn an_unreachable_primary_is_replaced_by_the_first_reachable_fallback_with_a_hint() {
    let v = view(&["a", "b", "c", "d", "e"], &["b"]);
    for p in 0..64 {
        let t = targets(&v, p);
        assert_eq!(t.len(), 3);
        assert!(t.iter().all(|t| t.name != "b"));
        let primaries = v.ring.primaries(p);
        if primaries.iter().any(|n| n == "b") {
            let fallback = t.iter().find(|t| !t.primary).unwrap();
            assert_eq!(fallback.hint_for.as_deref(), Some("b"));
            let first_reachable_fallback = v.ring.preference_list(p)[3..]
                .iter()
                .find(|n| **n != "b")
                .unwrap()
                .to_string();
            assert_eq!(fallback.name, first_reachable_fallback);
        }
    }
}

/// The checks of `targets` run in builds with debug assertions (dev and the `ci`
/// profile): a fallback that stands in for a primary the view calls reachable fires.
#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "a fallback must name the unreachable primary")]
fn a_fallback_for_a_reachable_primary_fires_the_target_checks() {
    let v = view(&["a", "b", "c", "d", "e"], &[]);
    let primaries = v.ring.primaries(0);
    let outsider = v.ring.preference_list(0)[3].to_string();
    let mut bad: Vec<Target> = primaries[..2]
        .iter()
        .map(|p| Target {
            name: p.clone(),
            primary: true,
            hint_for: None,
        })
        .collect();
    bad.push(Target {
        name: outsider,
        primary: false,
        hint_for: Some(primaries[2].clone()),
    });
    check_targets(&v, 0, &bad);
}

struct DeadPeers;
impl Peers for DeadPeers {
    async fn call(
        &self,
        to: &str,
        _request: Request,
        _timeout: Duration,
    ) -> Result<Response, PeerError> {
        Err(PeerError::not_sent(to, "down"))
    }
}

#[tokio::test]
async fn a_write_that_cannot_reach_w_replicas_writes_nothing() {
    let storage = Arc::new(crate::storage::MemoryStorage::new());
    let config = crate::replica::ReplicaConfig::for_tests(1, 10);
    let metrics = Arc::new(Metrics::default());
    let replica = Arc::new(Replica::new(storage, config, metrics.clone()).unwrap());
    // A node that just restarted and knows only itself; and one that sees both peers down.
    for (members, down) in [
        (&["a"][..], &[][..]),
        (&["a", "b", "c"][..], &["b", "c"][..]),
    ] {
        let v = Arc::new(RwLock::new(view(members, down)));
        let c = Coordinator::new(
            "a".into(),
            replica.clone(),
            Arc::new(DeadPeers),
            v,
            metrics.clone(),
        );
        let value = Sibling::value(b"v".to_vec(), None);
        let e = c
            .put(
                b"b",
                b"k",
                Context::default(),
                value.clone(),
                2,
                0,
                Duration::from_secs(1),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(e, CoordinatorError::Unreachable { needed: 2, .. }),
            "{e}"
        );
        assert!(
            replica.get(b"b", b"k").unwrap().is_none(),
            "nothing may be minted for a hopeless write"
        );
        // w=1 is reachable: it is written.
        c.put(
            b"b",
            b"k1",
            Context::default(),
            value,
            1,
            0,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert!(replica.get(b"b", b"k1").unwrap().is_some());
    }
}

/// Peers for coordinator tests: each named node answers from its own replica (as the
/// server's QUIC handler does, through `handle_async`), hangs until the call's timeout,
/// or is refused at once (not sent). Remembers whom it asked to mint.
#[derive(Default)]
struct FakePeers {
    replicas: std::collections::HashMap<String, Arc<Replica<crate::storage::MemoryStorage>>>,
    hang: HashSet<String>,
    coordinated: std::sync::Mutex<Vec<String>>,
}

impl FakePeers {
    /// The nodes sent a `Coordinate` so far, in order.
    fn coordinated(&self) -> Vec<String> {
        self.coordinated.lock().unwrap().clone()
    }
}

impl Peers for FakePeers {
    fn call(
        &self,
        to: &str,
        request: Request,
        timeout: Duration,
    ) -> impl Future<Output = Result<Response, PeerError>> + Send {
        let replica = self.replicas.get(to).cloned();
        let hang = self.hang.contains(to);
        let to = to.to_string();
        if replica.is_some() && matches!(request, Request::Coordinate { .. }) {
            self.coordinated.lock().unwrap().push(to.clone());
        }
        async move {
            if hang {
                // As the transport does: the request went out, no answer came in time.
                tokio::time::sleep(timeout).await;
                return Err(PeerError::no_answer(&to, "timed out"));
            }
            match replica {
                Some(r) => Ok(r.handle_async(request).await),
                None => Err(PeerError::not_sent(&to, "connection refused")),
            }
        }
    }
}

fn replica(actor: u64) -> Arc<Replica<crate::storage::MemoryStorage>> {
    let config = crate::replica::ReplicaConfig::for_tests(actor, 100);
    Arc::new(
        Replica::new(
            Arc::new(crate::storage::MemoryStorage::new()),
            config,
            Arc::new(Metrics::default()),
        )
        .unwrap(),
    )
}

/// A coordinator "a" with peers "b" (hanging or refused) and "c" (answering).
fn cluster(b_hangs: bool) -> Coordinator<crate::storage::MemoryStorage, FakePeers> {
    let mut replicas = std::collections::HashMap::new();
    replicas.insert("c".to_string(), replica(3));
    let hang = if b_hangs {
        ["b".to_string()].into_iter().collect()
    } else {
        HashSet::new()
    };
    let peers = Arc::new(FakePeers {
        replicas,
        hang,
        ..FakePeers::default()
    });
    Coordinator::new(
        "a".into(),
        replica(1),
        peers,
        Arc::new(RwLock::new(view(&["a", "b", "c"], &[]))),
        Arc::new(Metrics::default()),
    )
}

#[tokio::test]
async fn reads_at_r_below_n_get_past_a_hanging_or_refusing_replica() {
    for b_hangs in [true, false] {
        let c = cluster(b_hangs);
        let timeout = Duration::from_secs(5);
        for i in 0..30 {
            let key = format!("k{i}");
            let value = Sibling {
                value: key.clone().into_bytes(),
                content_type: None,
                deleted: false,
                expires_at_ms: None,
            };
            c.put(
                b"b",
                key.as_bytes(),
                Context::default(),
                value,
                2,
                0,
                timeout,
            )
            .await
            .unwrap();
            let started = tokio::time::Instant::now();
            let read = c.get(b"b", key.as_bytes(), 2, 0, timeout).await.unwrap();
            assert_eq!(
                read.values()
                    .iter()
                    .map(|s| s.value.clone())
                    .collect::<Vec<_>>(),
                vec![key.into_bytes()]
            );
            // The hedge (100 ms), not the 5 s timeout, bounds a read that first asked "b".
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "read took {:?}",
                started.elapsed()
            );
            assert!(c
                .get(b"b", b"absent", 1, 0, timeout)
                .await
                .unwrap()
                .is_empty());
        }
        let err = c
            .get(b"b", b"k1", 3, 0, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                CoordinatorError::Unavailable {
                    needed: 3,
                    replied: 2,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

/// Issue 14's four steps through real coordinators: v1 written everywhere through
/// a; v2 written blind through b; v3 through b with v2's answer. v3's writer never saw
/// v1, so both must survive. With the first build's answer (the switch) v1 is lost.
#[tokio::test]
async fn a_write_with_its_answer_context_keeps_a_sibling_its_client_never_saw() {
    for old in [false, true] {
        let replicas: std::collections::HashMap<_, _> = ["a", "b", "c"]
            .iter()
            .zip(1..)
            .map(|(name, actor)| (name.to_string(), replica(actor)))
            .collect();
        let peers = Arc::new(FakePeers {
            replicas: replicas.clone(),
            ..FakePeers::default()
        });
        let view = Arc::new(RwLock::new(view(&["a", "b", "c"], &[])));
        let coordinator = |name: &str| {
            Coordinator::new(
                name.into(),
                replicas[name].clone(),
                peers.clone(),
                view.clone(),
                Arc::new(Metrics::default()),
            )
            .with_old_answer_context(old)
        };
        let (a, b) = (coordinator("a"), coordinator("b"));
        let t = Duration::from_secs(5);
        let put = |c: &Coordinator<_, _>, ctx: Context, v: &str, w| {
            let c = c.clone();
            let v = Sibling::value(v.as_bytes().to_vec(), None);
            async move { c.put(b"b", b"k", ctx, v, w, 0, t).await.unwrap() }
        };
        put(&a, Context::default(), "v1", 3).await;
        let v2 = put(&b, Context::default(), "v2", 2).await;
        let v3 = put(&b, v2.context.clone(), "v3", 2).await;
        assert!(v3.context.covers(v3.dot) && v3.context.covers(v2.dot));
        let read = a.get(b"b", b"k", 3, 0, t).await.unwrap();
        let mut values: Vec<&[u8]> = read.values().iter().map(|s| &s.value[..]).collect();
        values.sort();
        let expected: Vec<&[u8]> = if old { vec![b"v3"] } else { vec![b"v1", b"v3"] };
        assert_eq!(values, expected, "old answer context: {old}");
    }
}

/// Issue 15, defect 2: after a storage error a node kept acknowledging w=one writes it
/// did not store, and its replica kept failing silently.
#[tokio::test]
async fn a_node_whose_storage_failed_acknowledges_no_write_until_it_recovers() {
    let disk = Arc::new(crate::storage::MemoryStorage::new());
    let config = crate::replica::ReplicaConfig::for_tests(1, 100);
    let metrics = Arc::new(Metrics::default());
    let local = Arc::new(Replica::new(disk.clone(), config, metrics.clone()).unwrap());
    let mut replicas = std::collections::HashMap::new();
    replicas.insert("b".to_string(), replica(2));
    replicas.insert("c".to_string(), replica(3));
    let peers = Arc::new(FakePeers {
        replicas,
        ..FakePeers::default()
    });
    let view = Arc::new(RwLock::new(view(&["a", "b", "c"], &[])));
    let c = Coordinator::new("a".into(), local.clone(), peers, view, metrics.clone());
    let timeout = Duration::from_secs(5);
    let value = || Sibling::value(b"v".to_vec(), None);
    c.put(b"b", b"before", Context::default(), value(), 1, 0, timeout)
        .await
        .unwrap();

    disk.set_write_failure(Some("No space left on device (os error 28)"));
    // The first write meets the failing disk: the local replica refuses it cleanly
    // (another replica mints), and from then on the node is failed.
    let _ = c
        .put(b"b", b"during", Context::default(), value(), 1, 0, timeout)
        .await;
    assert!(local.health().is_failed());
    assert_eq!(metrics.storage_failed.get(), 1);
    let e = c
        .put(b"b", b"k", Context::default(), value(), 1, 0, timeout)
        .await
        .unwrap_err();
    assert!(matches!(e, CoordinatorError::StorageFailed(_)), "{e}");
    // Its replica answers nothing, reads included; reads coordinated here go elsewhere.
    let answer = local.handle(Request::Get {
        bucket: b"b".to_vec(),
        key: b"before".to_vec(),
    });
    assert!(matches!(answer, Response::Failed(_)), "{answer:?}");
    let read = c.get(b"b", b"before", 1, 0, timeout).await.unwrap();
    assert_eq!(read.sibling_count(), 1);

    disk.set_write_failure(None);
    assert!(local.probe_storage());
    c.put(b"b", b"k", Context::default(), value(), 3, 0, timeout)
        .await
        .unwrap();
    assert!(local.get(b"b", b"k").unwrap().is_some());
}

/// A coordinator that is not itself a replica of any key, in front of "a", "b", "c":
/// its first target for every key is whichever primary comes first.
fn gateway(a_hangs: bool) -> Coordinator<crate::storage::MemoryStorage, FakePeers> {
    let mut replicas = std::collections::HashMap::new();
    replicas.insert("b".to_string(), replica(2));
    replicas.insert("c".to_string(), replica(3));
    if a_hangs {
        replicas.insert("a".to_string(), replica(1));
    }
    let hang = a_hangs.then(|| "a".to_string()).into_iter().collect();
    let peers = Arc::new(FakePeers {
        replicas,
        hang,
        ..FakePeers::default()
    });
    Coordinator::new(
        "gateway".into(),
        replica(9),
        peers,
        Arc::new(RwLock::new(view(&["a", "b", "c"], &[]))),
        Arc::new(Metrics::default()),
    )
}

#[tokio::test(start_paused = true)]
async fn a_write_not_sent_to_its_first_primary_is_minted_by_the_next() {
    let timeout = Duration::from_secs(8);
    let c = gateway(false);
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| targets(&c.view(), c.view().ring.partition_of(b"b", k.as_bytes()))[0].name == "a")
        .unwrap();
    let started = tokio::time::Instant::now();
    let value = Sibling::value(b"v".to_vec(), None);
    c.put(
        b"b",
        key.as_bytes(),
        Context::default(),
        value.clone(),
        2,
        0,
        timeout,
    )
    .await
    .expect("a dead, undetected first primary that refused the connection is skipped");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // A first primary that may have received the write (no answer) is not skipped: a
    // second replica minting it would make one client write two siblings.
    let c = gateway(true);
    let err = c
        .put(
            b"b",
            key.as_bytes(),
            Context::default(),
            value,
            2,
            0,
            timeout,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, CoordinatorError::Unavailable { .. }),
        "{err:?}"
    );
}

/// A replica on a disk whose fsync fails (`MemoryStorage::set_sync_failure`), as "a", and
/// "b", "c" healthy: the coordinator is "a" itself, or a gateway that reaches "a" as a
/// peer. Returns the coordinator, the peers, "a"'s replica and its disk.
#[allow(clippy::type_complexity)]
fn failing_fsync(
    a_local: bool,
) -> (
    Coordinator<crate::storage::MemoryStorage, FakePeers>,
    Arc<FakePeers>,
    Arc<Replica<crate::storage::MemoryStorage>>,
    Arc<crate::storage::MemoryStorage>,
) {
    let disk = Arc::new(crate::storage::MemoryStorage::new());
    let config = crate::replica::ReplicaConfig::for_tests(1, 100);
    let a = Arc::new(Replica::new(disk.clone(), config, Arc::new(Metrics::default())).unwrap());
    let mut replicas = std::collections::HashMap::new();
    replicas.insert("b".to_string(), replica(2));
    replicas.insert("c".to_string(), replica(3));
    if !a_local {
        replicas.insert("a".to_string(), a.clone());
    }
    let peers = Arc::new(FakePeers {
        replicas,
        ..FakePeers::default()
    });
    let (name, local) = match a_local {
        true => ("a", a.clone()),
        false => ("gateway", replica(9)),
    };
    let c = Coordinator::new(
        name.into(),
        local,
        peers.clone(),
        Arc::new(RwLock::new(view(&["a", "b", "c"], &[]))),
        Arc::new(Metrics::default()),
    );
    (c, peers, a, disk)
}

/// Keys whose first target, from coordinator `c`, is "a" (so "a" mints their writes).
fn keys_minted_by_a(
    c: &Coordinator<crate::storage::MemoryStorage, FakePeers>,
) -> impl Iterator<Item = String> + '_ {
    (0..)
        .map(|i| format!("k{i}"))
        .filter(|k| c.local_first_targets(b"b", k.as_bytes())[0].name == "a")
}

/// Issue 25, item 3: the minting replica stored its version and then its group commit's
/// fsync failed. It answers "outcome unknown", and the coordinator treats that as no
/// answer: no other replica is asked to mint (that would make the one client write two
/// siblings, since a restart replays the journal), and the client gets the 503 of a write
/// that timed out.
#[tokio::test]
async fn a_write_whose_minting_replica_failed_its_fsync_is_not_minted_again() {
    for a_local in [true, false] {
        let (c, peers, a, disk) = failing_fsync(a_local);
        let key = keys_minted_by_a(&c).next().unwrap();
        disk.set_sync_failure(Some("Input/output error (os error 5)"));
        let value = Sibling::value(b"v".to_vec(), None);
        let err = c
            .put(
                b"b",
                key.as_bytes(),
                Context::default(),
                value,
                2,
                0,
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        let timed_out = Needed {
            replies: 2,
            primaries: 0,
        }
        .unavailable(0, 0);
        assert_eq!(err.to_string(), timed_out.to_string(), "local: {a_local}");
        assert!(matches!(
            err,
            CoordinatorError::Unavailable { replied: 0, .. }
        ));
        let asked: Vec<String> = match a_local {
            true => vec![],
            false => vec!["a".into()],
        };
        assert_eq!(
            peers.coordinated(),
            asked,
            "no other replica may mint the write"
        );
        for other in ["b", "c"] {
            assert!(peers.replicas[other]
                .get(b"b", key.as_bytes())
                .unwrap()
                .is_none());
        }
        // The version "a" minted stays (its journal would replay it), and "a" is failed.
        assert_eq!(
            a.get(b"b", key.as_bytes())
                .unwrap()
                .unwrap()
                .sibling_count(),
            1
        );
        assert!(a.health().is_failed());
    }
}

/// One client write is one dot when fsyncs fail: each key gets a write that all three
/// replicas store, then one (over its context) while "a"'s fsync fails; "a" recovers. A
/// read of every replica then finds one sibling under one dot per key, the second
/// write's, not that write minted twice (once by "a", once by the replica the
/// coordinator would have asked next).
#[tokio::test]
async fn one_client_write_is_one_dot_when_the_minting_replicas_fsync_fails() {
    for a_local in [true, false] {
        let (c, _peers, a, disk) = failing_fsync(a_local);
        let t = Duration::from_secs(5);
        let keys: Vec<String> = keys_minted_by_a(&c).take(8).collect();
        for key in &keys {
            let value = |v: &str| Sibling::value(format!("{key}-{v}").into_bytes(), None);
            let first = c
                .put(
                    b"b",
                    key.as_bytes(),
                    Context::default(),
                    value("1"),
                    3,
                    0,
                    t,
                )
                .await
                .unwrap();
            disk.set_sync_failure(Some("Input/output error (os error 5)"));
            // Its outcome is unknown to the client; whatever it is, it is one write.
            let _ = c
                .put(b"b", key.as_bytes(), first.context, value("2"), 2, 0, t)
                .await;
            disk.set_sync_failure(None);
            assert!(a.probe_storage(), "the disk works again");
        }
        for key in &keys {
            let read = c.get(b"b", key.as_bytes(), 3, 0, t).await.unwrap();
            let dots = read.dotted_values();
            assert_eq!(
                dots.len(),
                1,
                "{key} (local: {a_local}): one client write became {dots:?}"
            );
            assert_eq!(dots[0].2.value, format!("{key}-2").into_bytes());
        }
    }
}

#[test]
fn quorum_values_parse_and_resolve() {
    assert_eq!(Quorum::parse("quorum").unwrap().resolve(3, false), Ok(2));
    assert_eq!(Quorum::parse("one").unwrap().resolve(3, false), Ok(1));
    assert_eq!(Quorum::parse("all").unwrap().resolve(5, false), Ok(5));
    assert_eq!(Quorum::parse("2").unwrap().resolve(3, false), Ok(2));
    assert!(Quorum::parse("4").unwrap().resolve(3, false).is_err());
    assert!(Quorum::parse("0").unwrap().resolve(3, false).is_err());
    assert_eq!(Quorum::parse("0").unwrap().resolve(3, true), Ok(0));
    assert!(Quorum::parse("most").is_err());
    assert!(Quorum::parse("-1").is_err());
}

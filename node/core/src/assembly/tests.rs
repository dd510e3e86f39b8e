use super::*;
use crate::peers::PeerError;
use crate::rpc::{Request, Response};
use crate::storage::MemoryStorage;
use chorus_gossip::ClusterConfig;

/// Peers that reach nobody: these tests look at one node alone.
struct Nobody;

impl Peers for Nobody {
    async fn call(&self, to: &str, _: Request, _: Duration) -> Result<Response, PeerError> {
        Err(PeerError::not_sent(to, "no network in this test"))
    }
}

fn settings() -> NodeSettings {
    NodeSettings {
        gossip: GossipConfig::new(
            "a",
            "a",
            1,
            ClusterConfig {
                n: 3,
                ring_size: 16,
            },
            vec!["b".into()],
        ),
        max_siblings: 100,
        warn_siblings: 25,
        max_hints_per_owner: 50,
        healing: HealingConfig::default(),
        props_timeout: Duration::from_secs(2),
        storage_exit_after: Duration::from_secs(30),
        old_answer_context: false,
    }
}

fn node(storage: Arc<MemoryStorage>, sent: Arc<Mutex<usize>>) -> NodeParts<MemoryStorage, Nobody> {
    let inputs = NodeInputs {
        storage,
        peers: Box::new(|_| Arc::new(Nobody)),
        send_gossip: Arc::new(move |out| *sent.lock().unwrap() += out.len()),
        clock: crate::clock::SystemClock::shared(),
        identity_actor: ActorId(7),
        seed: 1,
    };
    assemble(&settings(), inputs).expect("memory storage")
}

fn local_kv(parts: &NodeParts<MemoryStorage, Nobody>, key: &str) -> Option<String> {
    let me = parts.gossip.members().into_iter().find(|m| m.is_self)?;
    me.kv.get(key).cloned()
}

#[test]
fn the_duty_list_is_pinned() {
    let parts = node(Arc::default(), Arc::default());
    let names: Vec<_> = parts.duties().iter().map(|d| d.name).collect();
    assert_eq!(names, DUTIES);
}

#[tokio::test(start_paused = true)]
async fn the_gossip_duty_hands_the_tick_to_the_sink() {
    let sent = Arc::new(Mutex::new(0));
    let parts = node(Arc::default(), sent.clone());
    let duties = parts.duties();
    duties[0].step().await;
    assert!(*sent.lock().unwrap() > 0, "a tick with a seed sends to it");
}

#[test]
fn a_retired_actor_on_disk_wins_over_the_identity() {
    let disk = Arc::new(MemoryStorage::new());
    disk.meta_put(ACTOR_META_KEY, &99u64.to_be_bytes()).unwrap();
    assert_eq!(node(disk, Arc::default()).replica.actor(), ActorId(99));
    assert_eq!(
        node(Arc::default(), Arc::default()).replica.actor(),
        ActorId(7)
    );
}

#[test]
fn a_corrupt_stored_actor_is_an_error_not_a_guess() {
    let disk = Arc::new(MemoryStorage::new());
    disk.meta_put(ACTOR_META_KEY, b"abc").unwrap();
    let inputs = NodeInputs {
        storage: disk,
        peers: Box::new(|_| Arc::new(Nobody)),
        send_gossip: Arc::new(|_| {}),
        clock: crate::clock::SystemClock::shared(),
        identity_actor: ActorId(7),
        seed: 1,
    };
    assert!(assemble(&settings(), inputs).is_err());
}

#[tokio::test(start_paused = true)]
async fn a_failed_disk_is_gossiped_and_the_node_gives_up_after_the_deadline() {
    let disk = Arc::new(MemoryStorage::new());
    let parts = node(disk.clone(), Arc::default());
    let watch = &parts.duties()[4];
    assert_eq!(watch.name, "storage_watch");
    watch.step().await;
    assert_eq!(local_kv(&parts, STORAGE_KV).as_deref(), Some("ok"));

    disk.set_write_failure(Some("simulated"));
    assert!(!parts.replica.probe_storage());
    watch.step().await;
    assert_eq!(local_kv(&parts, STORAGE_KV).as_deref(), Some("failed"));
    let gave_up = parts.storage_gave_up();
    assert!(gave_up.borrow().is_none());

    tokio::time::advance(Duration::from_secs(31)).await;
    watch.step().await;
    assert!(gave_up
        .borrow()
        .as_deref()
        .is_some_and(|r| r.contains("simulated")));
}

#[tokio::test(start_paused = true)]
async fn a_disk_that_recovers_is_gossiped_ok_again_and_the_node_stays() {
    let disk = Arc::new(MemoryStorage::new());
    let parts = node(disk.clone(), Arc::default());
    let watch = &parts.duties()[4];
    disk.set_write_failure(Some("simulated"));
    assert!(!parts.replica.probe_storage());
    watch.step().await;
    assert_eq!(local_kv(&parts, STORAGE_KV).as_deref(), Some("failed"));

    disk.set_write_failure(None);
    assert!(parts.replica.probe_storage());
    watch.step().await;
    assert_eq!(local_kv(&parts, STORAGE_KV).as_deref(), Some("ok"));
    tokio::time::advance(Duration::from_secs(60)).await;
    watch.step().await;
    assert!(parts.storage_gave_up().borrow().is_none());
}

/// Five assembled nodes on an in-test network that delivers gossip at once and replica
/// requests to the replicas, except over cut links, where a request gets no answer until
/// its timeout (as on QUIC when packets are dropped).
mod direct_reach {
    use super::*;
    use crate::causality::Context;
    use crate::object::Sibling;
    use crate::view::ClusterView;
    use std::collections::{HashMap, HashSet};

    const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

    #[derive(Default)]
    struct Net {
        replicas: Mutex<HashMap<String, Arc<Replica<MemoryStorage>>>>,
        gossip: Mutex<HashMap<String, Arc<Gossip>>>,
        cut: Mutex<HashSet<(String, String)>>,
    }

    impl Net {
        fn is_cut(&self, from: &str, to: &str) -> bool {
            self.cut
                .lock()
                .unwrap()
                .contains(&(from.to_string(), to.to_string()))
        }

        fn cut_both(&self, x: &str, y: &str, cut: bool) {
            let mut links = self.cut.lock().unwrap();
            for pair in [(x, y), (y, x)] {
                let pair = (pair.0.to_string(), pair.1.to_string());
                match cut {
                    true => links.insert(pair),
                    false => links.remove(&pair),
                };
            }
        }

        /// Delivers gossip from `from`, and every answer it causes, over uncut links.
        fn deliver(&self, from: &str, out: Vec<Outgoing>) {
            let mut queue: Vec<(String, Outgoing)> =
                out.into_iter().map(|o| (from.to_string(), o)).collect();
            while let Some((from, Outgoing { to, message })) = queue.pop() {
                if self.is_cut(&from, &to) {
                    continue;
                }
                let node = self.gossip.lock().unwrap().get(&to).cloned();
                if let Some(node) = node {
                    let answers = node.handle(&from, message);
                    queue.extend(answers.into_iter().map(|o| (to.clone(), o)));
                }
            }
        }
    }

    struct NetPeers {
        net: Arc<Net>,
        from: String,
    }

    impl Peers for NetPeers {
        async fn call(
            &self,
            to: &str,
            request: Request,
            timeout: Duration,
        ) -> Result<Response, PeerError> {
            let replica = self.net.replicas.lock().unwrap().get(to).cloned();
            match replica {
                Some(replica) if !self.net.is_cut(&self.from, to) => {
                    Ok(replica.handle_async(request).await)
                }
                _ => {
                    tokio::time::sleep(timeout).await;
                    Err(PeerError::no_answer(to, "cut in this test"))
                }
            }
        }
    }

    fn node_settings(name: &str) -> NodeSettings {
        let mut s = settings();
        s.gossip = GossipConfig::new(
            name,
            name,
            1,
            ClusterConfig {
                n: 3,
                ring_size: 16,
            },
            NAMES
                .iter()
                .filter(|n| **n != name)
                .map(|n| n.to_string())
                .collect(),
        );
        s
    }

    fn cluster(net: &Arc<Net>) -> Vec<NodeParts<MemoryStorage, NetPeers>> {
        let mut nodes = Vec::new();
        for (i, name) in NAMES.iter().enumerate() {
            let (peers_net, sink_net) = (net.clone(), net.clone());
            let from = name.to_string();
            let inputs = NodeInputs {
                storage: Arc::new(MemoryStorage::new()),
                peers: Box::new(move |_| {
                    Arc::new(NetPeers {
                        net: peers_net,
                        from,
                    })
                }),
                send_gossip: Arc::new(move |out| sink_net.deliver(name, out)),
                clock: crate::clock::SystemClock::shared(),
                identity_actor: ActorId(i as u64 + 1),
                seed: i as u64,
            };
            let parts = assemble(&node_settings(name), inputs).expect("memory storage");
            net.replicas
                .lock()
                .unwrap()
                .insert(name.to_string(), parts.replica.clone());
            net.gossip
                .lock()
                .unwrap()
                .insert(name.to_string(), parts.gossip.clone());
            nodes.push(parts);
        }
        nodes
    }

    async fn gossip_rounds(nodes: &[NodeParts<MemoryStorage, NetPeers>], rounds: usize) {
        for _ in 0..rounds {
            tokio::time::advance(Duration::from_millis(500)).await;
            for node in nodes {
                node.duties()[0].step().await;
            }
        }
    }

    /// A key of which `c` is a primary and `a` is not.
    fn key_owned_by_c_not_a(view: &ClusterView) -> Vec<u8> {
        (0..1000)
            .map(|i| format!("k{i}").into_bytes())
            .find(|k| {
                let primaries = view.ring.primaries(view.ring.partition_of(b"b", k));
                primaries.iter().any(|p| p == "c") && primaries.iter().all(|p| p != "a")
            })
            .expect("some key")
    }

    /// Issue 25: a and c cannot reach each other, everyone else reaches everyone, so a's
    /// gossip keeps hearing of c (second-hand) and calls it alive. a's own failed calls
    /// mark c directly unreachable: a's writes on c's keys go to a fallback holding a hint
    /// for c, at w = 3; once the link is back, the probe duty clears the mark.
    #[tokio::test(start_paused = true)]
    async fn a_peer_this_node_cannot_reach_gets_a_fallback_and_a_hint_until_a_probe_answers() {
        let net = Arc::new(Net::default());
        let nodes = cluster(&net);
        gossip_rounds(&nodes, 20).await;
        let a = &nodes[0];
        assert_eq!(a.coordinator.view().ring.members(), NAMES);
        assert!(a.coordinator.view().unreachable.is_empty());

        net.cut_both("a", "c", true);
        let key = key_owned_by_c_not_a(&a.coordinator.view());
        let timeout = Duration::from_secs(2);
        let put = |n: usize| {
            a.coordinator.put(
                b"b",
                &key,
                Context::default(),
                Sibling::value(format!("v{n}").into_bytes(), None),
                3,
                0,
                timeout,
            )
        };
        // While c is unmarked, writes at w = 3 wait for c and fail.
        let mut failed = 0;
        for n in 0..10 {
            gossip_rounds(&nodes, 1).await;
            let alive = a
                .gossip
                .members()
                .iter()
                .all(|m| m.state == chorus_gossip::MemberState::Alive);
            assert!(alive, "gossip still calls every member alive");
            match put(n).await {
                Ok(_) => break,
                Err(_) => failed += 1,
            }
        }
        assert!(
            (1..=4).contains(&failed),
            "{failed} writes failed before c was routed around"
        );
        let view = a.coordinator.view();
        assert!(view.unreachable.contains("c"), "c not marked: {view:?}");
        assert_eq!(view.unreachable.len(), 1);
        assert!(a.gossip.reach().is_marked("c"));
        assert_eq!(a.metrics.peers_unreachable_direct.get(), 1);

        // Marked: a write at w = 3 succeeds at once, a fallback holding a hint for c.
        put(100).await.expect("a write with c routed around");
        let partition = view.ring.partition_of(b"b", &key);
        let fallback = crate::coordinator::targets(&view, partition)
            .into_iter()
            .find(|t| !t.primary)
            .expect("a fallback");
        assert_eq!(fallback.hint_for.as_deref(), Some("c"));
        let holder = nodes.iter().find(|n| n.name == fallback.name).unwrap();
        let owners = holder.replica.storage().hint_owners().unwrap();
        assert!(
            owners.iter().any(|(o, count)| o == "c" && *count > 0),
            "no hint for c at {}: {owners:?}",
            fallback.name
        );
        // Other nodes still reach c and do not route around it.
        assert!(nodes[1].coordinator.view().unreachable.is_empty());

        // The link heals: the next probe round answers, and the mark is gone.
        net.cut_both("a", "c", false);
        let probe = a
            .duties()
            .into_iter()
            .find(|d| d.name == "reach_probe")
            .unwrap();
        probe.step().await;
        assert!(!a.gossip.reach().is_marked("c"));
        assert!(a.coordinator.view().unreachable.is_empty());
        assert_eq!(a.metrics.peers_unreachable_direct.get(), 0);
    }

    /// The probe keeps failing while the link is cut: the mark stays.
    #[tokio::test(start_paused = true)]
    async fn a_probe_without_an_answer_keeps_the_mark() {
        let net = Arc::new(Net::default());
        let nodes = cluster(&net);
        gossip_rounds(&nodes, 20).await;
        let a = &nodes[0];
        net.cut_both("a", "c", true);
        let probe = a
            .duties()
            .into_iter()
            .find(|d| d.name == "reach_probe")
            .unwrap();
        // Nothing marked: the probe round sends nothing.
        probe.step().await;
        for ms in [0, 600, 1200] {
            tokio::time::advance(Duration::from_millis(ms)).await;
            a.gossip.record_call("c", false);
        }
        assert!(a.gossip.reach().is_marked("c"));
        for _ in 0..3 {
            probe.step().await;
            assert!(a.gossip.reach().is_marked("c"));
            assert!(a.coordinator.view().unreachable.contains("c"));
        }
    }
}

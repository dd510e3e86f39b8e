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

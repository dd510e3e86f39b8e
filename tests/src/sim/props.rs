//! Bucket-property changes in a scenario (`Options::props`): an operator changes the
//! simulated bucket's `max_siblings` through random nodes while clients run, with the
//! production `write_bucket_props`, and every node reloads with the production
//! `PropsSync`. Judged at the end, from what the operator sent and was answered: every
//! stored version is a change the operator made, an acknowledged change is gone only if a
//! later one (a higher stamp) won, and every node's cache converges on the winner of the
//! versions on the disks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use chorus_core::bucket_props::{versions, BucketProps, StampedProps, PROPS_BUCKET};
use chorus_core::object::{decode_object, storage_key, Object};
use chorus_core::storage::{MemoryStorage, Storage};

use super::net::SimNet;
use super::workload::BUCKET;

/// One change the operator asked for, and its stamp once acknowledged.
#[derive(Clone, Debug)]
pub struct PropsChange {
    pub props: BucketProps,
    pub node: String,
    pub acked_stamp: Option<u64>,
}

pub type Changes = Arc<Mutex<Vec<PropsChange>>>;

/// Changes the bucket's properties every 1-5 s of virtual time until `until`.
pub async fn operate(
    net: Arc<SimNet>,
    nodes: Vec<String>,
    seed: u64,
    until: Instant,
    changes: Changes,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..5_000))).await;
        let node = nodes[rng.random_range(0..nodes.len())].clone();
        let max_siblings = [None, Some(2), Some(4), Some(8)][rng.random_range(0..4)];
        let props = BucketProps {
            max_siblings,
            ..Default::default()
        };
        let Some(incarnation) = net.wait_running(&node, None).await else {
            continue;
        };
        let index = {
            let mut changes = changes.lock().expect("changes");
            changes.push(PropsChange {
                props: props.clone(),
                node: node.clone(),
                acked_stamp: None,
            });
            changes.len() - 1
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let coordinator = incarnation.coordinator.clone();
        let task = tokio::spawn(async move {
            let written = coordinator
                .write_bucket_props(BUCKET, props, Duration::from_secs(2))
                .await;
            let _ = tx.send(written);
        });
        incarnation.own(task.abort_handle());
        let outcome = match rx.await {
            Ok(Ok(StampedProps { stamp, .. })) => {
                changes.lock().expect("changes")[index].acked_stamp = Some(stamp);
                format!("ok, stamp {stamp}")
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "coordinator crashed".to_string(),
        };
        net.trace.log(format!(
            "operator sets {max_siblings:?} max siblings at {node}: {outcome}"
        ));
    }
}

/// The bucket's properties object merged from every disk.
pub fn stored(disks: &[Arc<MemoryStorage>], ring_size: u32) -> Object {
    let partition = chorus_ring::partition_of(ring_size, PROPS_BUCKET, BUCKET);
    disks
        .iter()
        .filter_map(|disk| {
            disk.get(partition, &storage_key(PROPS_BUCKET, BUCKET))
                .expect("memory storage")
        })
        .map(|bytes| decode_object(&bytes).expect("stored objects decode"))
        .fold(Object::new(), |merged, state| merged.sync(&state))
}

/// Judges the stored versions against the operator's changes; returns the problems and
/// the properties every node must end up with (`None`: the defaults).
pub fn check(stored: &Object, changes: &[PropsChange]) -> (Vec<String>, Option<BucketProps>) {
    let held = versions(stored);
    let mut problems = Vec::new();
    let made = |v: &StampedProps, c: &PropsChange| {
        c.props == v.props && c.node == v.set_by && c.acked_stamp.is_none_or(|s| s == v.stamp)
    };
    for v in &held {
        if !changes.iter().any(|c| made(v, c)) {
            problems.push(format!(
                "the bucket's properties hold {v:?}, which the operator never set"
            ));
        }
    }
    // The rule, restated here rather than taken from `versions`' order: the highest
    // `(stamp, set_by)` wins, and between equals the highest encoding.
    let winner = held
        .iter()
        .max_by_key(|v| (v.stamp, v.set_by.clone(), v.encode()));
    for c in changes {
        let Some(stamp) = c.acked_stamp else { continue };
        let kept = held.iter().any(|v| made(v, c));
        if !kept && winner.is_none_or(|w| w.stamp <= stamp) {
            problems.push(format!(
                "the acknowledged properties change {c:?} is gone, and no later change won (winner {winner:?})"
            ));
        }
    }
    let expected = winner
        .map(|w| w.props.clone())
        .filter(|p| *p != BucketProps::default());
    (problems, expected)
}

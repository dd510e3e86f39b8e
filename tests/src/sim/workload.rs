//! Simulated clients: puts, gets and deletes on a few keys, through any node's coordinator
//! (the code `http.rs` calls), with random r/w and contexts carried from reads (or from a
//! previous write's answer) into later writes. Every value written is unique (`w<id>`, also
//! for tombstones), so the checker can follow each write through every replica state.
//! The history records every invocation and its outcome.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use tokio::time::Instant;

use chorus_core::causality::{ActorId, Context};
use chorus_core::coordinator::CoordinatorError;
use chorus_core::object::{Object, Sibling};

use super::net::SimNet;

pub const BUCKET: &[u8] = b"sim";

/// A dot: the (actor, counter) a replica minted for one write.
pub type Dot = (ActorId, u64);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not answered yet (or the client gave up with its coordinator's crash).
    Pending,
    /// Acknowledged by `w` replicas, minted with this dot.
    Acked(Dot),
    /// 503 or a crash mid-request: may or may not have been stored.
    Indeterminate(String),
    /// Definitely not stored: refused before anything was written (too many siblings,
    /// coordinator down).
    Refused(String),
}

#[derive(Clone, Debug)]
pub struct Write {
    pub id: u64,
    pub key: String,
    pub deleted: bool,
    pub context: Context,
    pub w: usize,
    pub node: String,
    pub invoked_ms: u64,
    pub outcome: Outcome,
}

#[derive(Default)]
pub struct History {
    pub writes: BTreeMap<u64, Write>,
    pub reads: u64,
    pub reads_ok: u64,
    pub violations: Vec<String>,
    /// The dot each write was first seen with in any replica state or read.
    pub seen_dots: BTreeMap<u64, Dot>,
    pub max_siblings: usize,
    pub tombstones_reaped: usize,
}

pub fn value_of(id: u64) -> Vec<u8> {
    format!("w{id}").into_bytes()
}

pub fn id_of(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value)
        .ok()?
        .strip_prefix('w')?
        .parse()
        .ok()
}

/// The dot the state gives the value of write `id`.
pub fn dot_of(object: &Object, id: u64) -> Option<Dot> {
    let value = value_of(id);
    object
        .dotted_values()
        .into_iter()
        .find(|(_, _, s)| s.value == value)
        .map(|(a, c, _)| (a, c))
}

pub struct Client {
    pub index: usize,
    pub rng: StdRng,
    pub keys: usize,
    pub nodes: Vec<String>,
    pub n: usize,
    /// Last context this client saw per key.
    pub contexts: BTreeMap<String, Context>,
    pub strict_quorums: bool,
}

pub struct Shared {
    pub net: Arc<SimNet>,
    pub history: Mutex<History>,
    pub next_id: Mutex<u64>,
    /// Called on every acknowledged write, before anything else runs: the durability check.
    pub on_ack: Box<dyn Fn(&Write, &Object, &mut Vec<String>) + Send + Sync>,
    pub on_read: Box<dyn Fn(&str, &Object, &mut History) + Send + Sync>,
}

fn quorum(rng: &mut StdRng, n: usize) -> usize {
    match rng.random_range(0..10) {
        0..=1 => 1,
        2..=7 => n / 2 + 1,
        _ => n,
    }
}

impl Client {
    /// Issues operations until `until`.
    pub async fn run(mut self, shared: Arc<Shared>, until: Instant) {
        while Instant::now() < until {
            let think = self.rng.random_range(0..200);
            tokio::time::sleep(Duration::from_millis(think)).await;
            let key = format!("k{}", self.rng.random_range(0..self.keys));
            let node = self.nodes[self.rng.random_range(0..self.nodes.len())].clone();
            let op = self.rng.random_range(0..100);
            if op < 45 {
                self.read(&shared, &key, &node).await;
            } else {
                self.write(&shared, &key, &node, op >= 88).await;
            }
        }
    }

    async fn read(&mut self, shared: &Arc<Shared>, key: &str, node: &str) {
        let r = quorum(&mut self.rng, self.n);
        // Now and then a strict quorum: every replica counted must be a primary owner.
        let pr = if self.strict_quorums && self.rng.random_bool(0.1) {
            r
        } else {
            0
        };
        let trace = shared.net.trace.clone();
        shared.history.lock().expect("history").reads += 1;
        let Some(coordinator) = shared.net.wait_running(node, None).await else {
            trace.log(format!("client{} get {key} at {node}: down", self.index));
            return;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let c = coordinator.coordinator.clone();
        let k = key.as_bytes().to_vec();
        let task = tokio::spawn(async move {
            let _ = tx.send(c.get(BUCKET, &k, r, pr, Duration::from_millis(2000)).await);
        });
        coordinator.own(task.abort_handle());
        match rx.await {
            Ok(Ok(object)) => {
                let ids: Vec<String> = object
                    .values()
                    .iter()
                    .map(|s| String::from_utf8_lossy(&s.value).into_owned())
                    .collect();
                trace.log(format!(
                    "client{} get {key} r={r} at {node}: {ids:?}",
                    self.index
                ));
                let mut history = shared.history.lock().expect("history");
                history.reads_ok += 1;
                (shared.on_read)(key, &object, &mut history);
                self.contexts.insert(key.to_string(), object.context());
            }
            Ok(Err(e)) => trace.log(format!(
                "client{} get {key} r={r} at {node}: {e}",
                self.index
            )),
            Err(_) => trace.log(format!(
                "client{} get {key} at {node}: coordinator crashed",
                self.index
            )),
        }
    }

    async fn write(&mut self, shared: &Arc<Shared>, key: &str, node: &str, delete: bool) {
        let w = quorum(&mut self.rng, self.n);
        let pw = if self.strict_quorums && self.rng.random_bool(0.1) {
            w
        } else {
            0
        };
        let context = if self.rng.random_bool(0.8) {
            self.contexts.get(key).cloned().unwrap_or_default()
        } else {
            Context::default()
        };
        let id = {
            let mut next = shared.next_id.lock().expect("ids");
            *next += 1;
            *next
        };
        let trace = shared.net.trace.clone();
        let write = Write {
            id,
            key: key.to_string(),
            deleted: delete,
            context: context.clone(),
            w,
            node: node.to_string(),
            invoked_ms: trace.now_ms(),
            outcome: Outcome::Pending,
        };
        shared
            .history
            .lock()
            .expect("history")
            .writes
            .insert(id, write.clone());
        let what = if delete { "delete" } else { "put" };
        let set = |outcome: Outcome| {
            if let Some(w) = shared.history.lock().expect("history").writes.get_mut(&id) {
                w.outcome = outcome;
            }
        };
        let Some(coordinator) = shared.net.wait_running(node, None).await else {
            trace.log(format!(
                "client{} {what} {key} w{id} at {node}: down",
                self.index
            ));
            set(Outcome::Refused("coordinator down".into()));
            return;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let c = coordinator.coordinator.clone();
        let k = key.as_bytes().to_vec();
        let sibling = Sibling {
            value: value_of(id),
            content_type: None,
            deleted: delete,
        };
        let shared2 = shared.clone();
        let write2 = write.clone();
        let task = tokio::spawn(async move {
            let result = c
                .put(
                    BUCKET,
                    &k,
                    context,
                    sibling,
                    w,
                    pw,
                    Duration::from_millis(2000),
                )
                .await;
            // Checked in the same poll as the acknowledgement: nothing else ran since.
            if let Ok(object) = &result {
                let mut violations = Vec::new();
                (shared2.on_ack)(&write2, object, &mut violations);
                shared2
                    .history
                    .lock()
                    .expect("history")
                    .violations
                    .extend(violations);
            }
            let _ = tx.send(result);
        });
        coordinator.own(task.abort_handle());
        match rx.await {
            Ok(Ok(object)) => {
                let Some(dot) = dot_of(&object, id) else {
                    shared.history.lock().expect("history").violations.push(format!("write w{id} on {key} was acknowledged with a state that lacks it: {object:?}"));
                    set(Outcome::Indeterminate("acked without its value".into()));
                    return;
                };
                trace.log(format!(
                    "client{} {what} {key} w{id} w={w} at {node}: ok {dot:?}",
                    self.index
                ));
                set(Outcome::Acked(dot));
                self.contexts.insert(key.to_string(), object.context());
            }
            Ok(Err(CoordinatorError::TooManySiblings(m))) => {
                trace.log(format!(
                    "client{} {what} {key} w{id} at {node}: refused {m}",
                    self.index
                ));
                set(Outcome::Refused(m));
            }
            Ok(Err(e)) => {
                trace.log(format!(
                    "client{} {what} {key} w{id} w={w} at {node}: {e}",
                    self.index
                ));
                set(Outcome::Indeterminate(e.to_string()));
            }
            Err(_) => {
                trace.log(format!(
                    "client{} {what} {key} w{id} at {node}: coordinator crashed",
                    self.index
                ));
                set(Outcome::Indeterminate("coordinator crashed".into()));
            }
        }
    }
}

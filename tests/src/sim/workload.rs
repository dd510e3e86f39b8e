//! Simulated clients: puts, gets and deletes on a few keys, through any node's coordinator
//! (the code `http.rs` calls), with random r/w and contexts carried from reads (or from a
//! previous write's answer) into later writes. Every value written is unique (`w<id>`, also
//! for tombstones), so the checker can follow each write through every replica state.
//! The history records every invocation and its outcome, and what each write's client
//! had been shown (the observation the checker judges lost writes by, not the contexts).
//! A client can also follow a fixed script instead of random operations ([`Step`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use tokio::time::Instant;

use chorus_core::causality::Context;
pub use chorus_core::causality::Dot;
use chorus_core::coordinator::{CoordinatorError, Written};
use chorus_core::object::{live_siblings, Object, Sibling};

use super::net::SimNet;

pub const BUCKET: &[u8] = b"sim";

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
    /// The writes its client had been shown, as far as the context it sent stood for:
    /// the values a read returned and what their writers knew, or its own earlier write
    /// and what that knew. Only these may it supersede.
    pub knew: BTreeSet<u64>,
    pub w: usize,
    pub node: String,
    pub invoked_ms: u64,
    /// The TTL's expiry (Unix ms by the coordinating node's clock), for a value with one.
    pub expires_at_ms: Option<u64>,
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
    /// Acknowledged values with a TTL gone at the end, their expiry past.
    pub expired: usize,
    /// Acknowledged writes the final check found lost.
    pub lost: usize,
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

/// A context a client holds for a key, and the writes it stands for.
#[derive(Clone, Debug, Default)]
pub struct Held {
    pub context: Context,
    pub shown: BTreeSet<u64>,
}

/// One operation of a scripted client: through node `node` (an index), on `key`.
#[derive(Clone, Debug)]
pub enum Step {
    Get {
        node: usize,
        key: &'static str,
        r: usize,
    },
    /// A put, with the context the client holds for the key (its last read's or write
    /// answer's) or blind.
    Put {
        node: usize,
        key: &'static str,
        w: usize,
        with_context: bool,
    },
}

/// Issue 14's four steps: v1 through n1 to every replica, blind; v2 through n2, blind;
/// v3 through n2 with v2's answer; a read of every replica. v3's client never saw v1.
pub fn four_steps() -> Vec<Step> {
    vec![
        Step::Put {
            node: 0,
            key: "k0",
            w: 3,
            with_context: false,
        },
        Step::Put {
            node: 1,
            key: "k0",
            w: 2,
            with_context: false,
        },
        Step::Put {
            node: 1,
            key: "k0",
            w: 2,
            with_context: true,
        },
        Step::Get {
            node: 0,
            key: "k0",
            r: 3,
        },
    ]
}

pub struct Client {
    pub index: usize,
    pub rng: StdRng,
    pub keys: usize,
    pub nodes: Vec<String>,
    pub n: usize,
    /// Last context this client saw per key.
    pub contexts: BTreeMap<String, Held>,
    pub strict_quorums: bool,
    /// Some puts carry a TTL (`Options::ttl`).
    pub ttl: bool,
    /// A script to follow instead of random operations.
    pub script: Option<Vec<Step>>,
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
    /// Issues operations until `until` (a scripted client: its script, then stops).
    pub async fn run(mut self, shared: Arc<Shared>, until: Instant) {
        if let Some(script) = self.script.take() {
            for step in script {
                match step {
                    Step::Get { node, key, r } => {
                        let node = self.nodes[node].clone();
                        self.read_with(&shared, key, &node, r, 0).await
                    }
                    Step::Put {
                        node,
                        key,
                        w,
                        with_context,
                    } => {
                        let node = self.nodes[node].clone();
                        self.write_with(&shared, key, &node, false, (w, 0), with_context, None)
                            .await
                    }
                }
            }
            return;
        }
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
        self.read_with(shared, key, node, r, pr).await
    }

    async fn read_with(
        &mut self,
        shared: &Arc<Shared>,
        key: &str,
        node: &str,
        r: usize,
        pr: usize,
    ) {
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
                let now = coordinator.replica.now_ms();
                check_expired_hidden(&mut history, key, node, &object, now, trace.now_ms());
                // Shown: every version the read returned (the HTTP API shows a state of
                // tombstones as a 404), expired ones hidden, and what their writers knew.
                let mut shown = BTreeSet::new();
                for sibling in object.values().into_iter().filter(|s| !s.is_expired(now)) {
                    if let Some(w) = id_of(&sibling.value).and_then(|id| history.writes.get(&id)) {
                        shown.insert(w.id);
                        shown.extend(&w.knew);
                    }
                }
                let context = object.context();
                self.contexts
                    .insert(key.to_string(), Held { context, shown });
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
        let with_context = self.rng.random_bool(0.8);
        // Drawn only with `ttl`, so runs without it replay their seeds unchanged.
        // Most expire during the run; one in four outlives it (a reap before its expiry
        // would lose an acknowledged value, which the final check then reports).
        let ttl = (self.ttl && !delete && self.rng.random_bool(0.3)).then(|| {
            match self.rng.random_bool(0.75) {
                true => Duration::from_millis(self.rng.random_range(300..6_000)),
                false => Duration::from_secs(3_600),
            }
        });
        self.write_with(shared, key, node, delete, (w, pw), with_context, ttl)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_with(
        &mut self,
        shared: &Arc<Shared>,
        key: &str,
        node: &str,
        delete: bool,
        (w, pw): (usize, usize),
        with_context: bool,
        ttl: Option<Duration>,
    ) {
        let held = match with_context {
            true => self.contexts.get(key).cloned().unwrap_or_default(),
            false => Held::default(),
        };
        let context = held.context;
        let id = {
            let mut next = shared.next_id.lock().expect("ids");
            *next += 1;
            *next
        };
        let trace = shared.net.trace.clone();
        let mut write = Write {
            id,
            key: key.to_string(),
            deleted: delete,
            context: context.clone(),
            knew: held.shown.clone(),
            w,
            node: node.to_string(),
            invoked_ms: trace.now_ms(),
            expires_at_ms: None,
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
        // As the HTTP API does: the expiry is fixed by the coordinating node's clock.
        let expires_at_ms = ttl.map(|t| coordinator.replica.now_ms() + t.as_millis() as u64);
        write.expires_at_ms = expires_at_ms;
        if let Some(w) = shared.history.lock().expect("history").writes.get_mut(&id) {
            w.expires_at_ms = expires_at_ms;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let c = coordinator.coordinator.clone();
        let k = key.as_bytes().to_vec();
        let sibling = Sibling {
            value: value_of(id),
            content_type: None,
            deleted: delete,
            expires_at_ms,
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
            if let Ok(written) = &result {
                let mut violations = Vec::new();
                (shared2.on_ack)(&write2, &written.object, &mut violations);
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
            Ok(Ok(Written {
                object,
                dot,
                context,
            })) => {
                let holds = object
                    .dotted_values()
                    .iter()
                    .any(|&(a, c, v)| (a, c) == dot && v.value == value_of(id));
                if !holds {
                    shared.history.lock().expect("history").violations.push(format!("write w{id} on {key} was acknowledged with dot {dot:?} and a state that lacks it: {object:?}"));
                    set(Outcome::Indeterminate("acked without its value".into()));
                    return;
                }
                trace.log(format!(
                    "client{} {what} {key} w{id} w={w} at {node}: ok {dot:?}",
                    self.index
                ));
                set(Outcome::Acked(dot));
                let mut shown = held.shown;
                shown.insert(id);
                self.contexts
                    .insert(key.to_string(), Held { context, shown });
            }
            Ok(Err(CoordinatorError::Refused { message: m, .. })) => {
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

/// A read at `now` (the coordinating node's clock) whose state holds a value expired by
/// the true time (`true_ms` since the run began), even allowing for the largest skew, must
/// not show it: the HTTP API hides what [`live_siblings`] hides.
fn check_expired_hidden(
    history: &mut History,
    key: &str,
    node: &str,
    object: &Object,
    now: u64,
    true_ms: u64,
) {
    let true_now = super::node::SIM_EPOCH_MS + true_ms;
    let skew = super::MAX_CLOCK_SKEW_MS as u64;
    for sibling in live_siblings(object, now) {
        if sibling
            .expires_at_ms
            .is_some_and(|at| at + skew <= true_now)
        {
            history.violations.push(format!(
                "a read of {key} at {node} at {true_ms} ms shows {} as live, expired at {:?} (node clock {now})",
                String::from_utf8_lossy(&sibling.value),
                sibling.expires_at_ms
            ));
        }
    }
}

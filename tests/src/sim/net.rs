//! The simulated network: message-level delivery of replica requests (the coordinator's and
//! healer's `Peers` seam) and gossip messages between simulated nodes, with seeded drop,
//! delay (hence reordering), duplication, one-way and symmetric partitions, crashed nodes
//! (messages to them are lost) and paused nodes (messages wait until the pause ends).
//!
//! Every message goes through the production wire encoding (`rpc::encode` / `decode`), so
//! what a node receives is exactly what QUIC would have carried. A lost request or answer
//! shows up to the caller as a timeout, as on QUIC. `Coordinate` is never duplicated: a QUIC
//! stream delivers a request at most once; idempotent requests and gossip may be.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use tokio::time::Instant;

use chorus_core::peers::{PeerError, Peers};
use chorus_core::rpc::{self, Message, Request, Response};
use chorus_gossip::Outgoing;

use super::node::Incarnation;
use super::trace::Trace;

/// Concurrent requests one node may have open to another: quinn's stream limit per
/// connection in production (`transport.rs`). The simulation asserts it is never exceeded.
pub const MAX_INFLIGHT_PER_PEER: usize = 1024;

/// Message-level fault knobs; the nemesis changes them during a scenario.
#[derive(Clone, Debug)]
pub struct NetFaults {
    /// Probability each message (request, answer or gossip) is lost.
    pub drop: f64,
    /// Probability an idempotent message is delivered twice.
    pub duplicate: f64,
    /// One-way latency, uniform in this range (ms).
    pub delay_ms: (u64, u64),
    /// Probability a message takes a slow path (`slow_ms` extra): reorders and times out.
    pub slow: f64,
    pub slow_ms: u64,
}

impl NetFaults {
    pub fn calm() -> NetFaults {
        NetFaults {
            drop: 0.0,
            duplicate: 0.0,
            delay_ms: (1, 5),
            slow: 0.0,
            slow_ms: 0,
        }
    }
}

enum Slot {
    Up {
        node: Arc<Incarnation>,
        paused_until: Option<Instant>,
    },
    Down,
}

struct NetState {
    rng: StdRng,
    faults: NetFaults,
    slots: BTreeMap<String, Slot>,
    /// (from, to): messages from `from` to `to` are lost.
    blocked: BTreeSet<(String, String)>,
    inflight: BTreeMap<(String, String), usize>,
    max_inflight: usize,
    messages: u64,
}

pub struct SimNet {
    state: Mutex<NetState>,
    pub trace: Arc<Trace>,
}

fn ms(d: u64) -> Duration {
    Duration::from_millis(d)
}

impl SimNet {
    pub fn new(rng: StdRng, trace: Arc<Trace>) -> Arc<SimNet> {
        Arc::new(SimNet {
            state: Mutex::new(NetState {
                rng,
                faults: NetFaults::calm(),
                slots: BTreeMap::new(),
                blocked: BTreeSet::new(),
                inflight: BTreeMap::new(),
                max_inflight: 0,
                messages: 0,
            }),
            trace,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_faults(&self, faults: NetFaults) {
        self.trace.log(format!("net faults {faults:?}"));
        self.lock().faults = faults;
    }

    pub fn faults(&self) -> NetFaults {
        self.lock().faults.clone()
    }

    pub fn block(&self, from: &str, to: &str) {
        self.lock()
            .blocked
            .insert((from.to_string(), to.to_string()));
    }

    pub fn unblock(&self, from: &str, to: &str) {
        self.lock()
            .blocked
            .remove(&(from.to_string(), to.to_string()));
    }

    pub fn heal_all(&self) {
        self.trace
            .log("net heal: every partition removed".to_string());
        self.lock().blocked.clear();
    }

    pub fn blocked_pairs(&self) -> usize {
        self.lock().blocked.len()
    }

    pub fn max_inflight(&self) -> usize {
        self.lock().max_inflight
    }

    pub fn messages(&self) -> u64 {
        self.lock().messages
    }

    pub fn set_up(&self, node: Arc<Incarnation>) {
        self.lock().slots.insert(
            node.name.clone(),
            Slot::Up {
                node,
                paused_until: None,
            },
        );
    }

    pub fn set_down(&self, name: &str) {
        self.lock().slots.insert(name.to_string(), Slot::Down);
    }

    /// Drops every node (breaks the reference cycles node -> peers -> net -> node).
    pub fn clear(&self) {
        self.lock().slots.clear();
    }

    pub fn pause(&self, name: &str, until: Instant) {
        if let Some(Slot::Up { paused_until, .. }) = self.lock().slots.get_mut(name) {
            *paused_until = Some(until);
        }
    }

    pub fn unpause_all(&self) {
        for slot in self.lock().slots.values_mut() {
            if let Slot::Up { paused_until, .. } = slot {
                *paused_until = None;
            }
        }
    }

    /// The running incarnation of `name`, if it is up.
    pub fn current(&self, name: &str) -> Option<Arc<Incarnation>> {
        match self.lock().slots.get(name) {
            Some(Slot::Up { node, .. }) => Some(node.clone()),
            _ => None,
        }
    }

    pub fn is_current(&self, name: &str, incarnation: u64) -> bool {
        self.current(name).is_some_and(|n| n.id == incarnation)
    }

    /// Waits while `name` is paused; returns its incarnation if it is (still) `incarnation`
    /// (any incarnation when None) once it runs.
    pub async fn wait_running(
        &self,
        name: &str,
        incarnation: Option<u64>,
    ) -> Option<Arc<Incarnation>> {
        loop {
            let until = {
                let state = self.lock();
                match state.slots.get(name) {
                    Some(Slot::Up { node, paused_until }) => {
                        if incarnation.is_some_and(|i| i != node.id) {
                            return None;
                        }
                        match paused_until {
                            Some(until) if *until > Instant::now() => *until,
                            _ => return Some(node.clone()),
                        }
                    }
                    _ => return None,
                }
            };
            tokio::time::sleep_until(until).await;
        }
    }

    /// One leg's fate: None when lost, else its latency.
    fn leg(state: &mut NetState, from: &str, to: &str) -> Option<Duration> {
        state.messages += 1;
        let f = state.faults.clone();
        let lost = state.rng.random_bool(f.drop.clamp(0.0, 1.0));
        let mut delay = state
            .rng
            .random_range(f.delay_ms.0..=f.delay_ms.1.max(f.delay_ms.0));
        if state.rng.random_bool(f.slow.clamp(0.0, 1.0)) {
            delay += f.slow_ms;
        }
        if lost || state.blocked.contains(&(from.to_string(), to.to_string())) {
            return None;
        }
        Some(ms(delay))
    }

    fn duplicate(state: &mut NetState) -> bool {
        let p = state.faults.duplicate.clamp(0.0, 1.0);
        state.rng.random_bool(p)
    }

    /// Sends a request from `from` (incarnation `incarnation`) to `to`; the answer, if any,
    /// arrives on the returned channel.
    fn request(
        self: &Arc<Self>,
        from: &str,
        incarnation: u64,
        to: &str,
        request: Request,
    ) -> tokio::sync::oneshot::Receiver<Response> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let bytes = rpc::encode(Message::Request(request));
        let duplicable = !matches!(
            rpc::decode(&bytes),
            Ok(Message::Request(Request::Coordinate { .. }))
        );
        let copies = {
            let mut state = self.lock();
            let extra = duplicable && Self::duplicate(&mut state);
            let count = state
                .inflight
                .entry((from.to_string(), to.to_string()))
                .or_insert(0);
            *count += 1;
            let now = *count;
            state.max_inflight = state.max_inflight.max(now);
            if extra {
                2
            } else {
                1
            }
        };
        let mut tx = Some(tx);
        for copy in 0..copies {
            let net = self.clone();
            let (from, to, bytes) = (from.to_string(), to.to_string(), bytes.clone());
            let reply = if copy == 0 { tx.take() } else { None };
            tokio::spawn(async move {
                net.deliver_request(&from, incarnation, &to, bytes, reply)
                    .await;
                if copy == 0 {
                    let mut state = net.lock();
                    if let Some(count) = state.inflight.get_mut(&(from.clone(), to.clone())) {
                        *count -= 1;
                    }
                }
            });
        }
        rx
    }

    async fn deliver_request(
        &self,
        from: &str,
        incarnation: u64,
        to: &str,
        bytes: Vec<u8>,
        reply: Option<tokio::sync::oneshot::Sender<Response>>,
    ) {
        // A paused sender sends nothing until it runs again; a dead one sends nothing.
        if self.wait_running(from, Some(incarnation)).await.is_none() {
            return;
        }
        let leg = Self::leg(&mut self.lock(), from, to);
        let Some(delay) = leg else {
            self.trace.log(format!("req {from}->{to} lost"));
            return;
        };
        tokio::time::sleep(delay).await;
        let Some(target) = self.wait_running(to, None).await else {
            self.trace
                .log(format!("req {from}->{to} lost: {to} is down"));
            return;
        };
        let request = match rpc::decode(&bytes) {
            Ok(Message::Request(request)) => request,
            other => panic!("the simulated wire carried a non-request: {other:?}"),
        };
        let summary = summarize(&request);
        let response = target.replica.handle(request);
        let bytes = rpc::encode(Message::Response(response));
        let leg = Self::leg(&mut self.lock(), to, from);
        self.trace.log(format!(
            "req {from}->{to} {summary} handled, answer {}",
            if leg.is_some() { "sent" } else { "lost" }
        ));
        let (Some(delay), Some(reply)) = (leg, reply) else {
            return;
        };
        tokio::time::sleep(delay).await;
        if !self.is_current(from, incarnation) {
            return;
        }
        match rpc::decode(&bytes) {
            Ok(Message::Response(response)) => {
                let _ = reply.send(response);
            }
            other => panic!("the simulated wire carried a non-response: {other:?}"),
        }
    }

    /// Sends gossip messages from `from` (to addresses, which are node names here).
    pub fn send_gossip(self: &Arc<Self>, from: &str, out: Vec<Outgoing>) {
        for Outgoing { to, message } in out {
            let bytes = rpc::encode(Message::Gossip(message));
            let copies = if Self::duplicate(&mut self.lock()) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let leg = Self::leg(&mut self.lock(), from, &to);
                let Some(delay) = leg else {
                    self.trace.log(format!("gossip {from}->{to} lost"));
                    continue;
                };
                let net = self.clone();
                let (from, to, bytes) = (from.to_string(), to.clone(), bytes.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let Some(target) = net.wait_running(&to, None).await else {
                        return;
                    };
                    let message = match rpc::decode(&bytes) {
                        Ok(Message::Gossip(message)) => message,
                        other => {
                            panic!("the simulated wire carried a non-gossip message: {other:?}")
                        }
                    };
                    let out = target.gossip.handle(&from, message);
                    net.send_gossip(&to, out);
                });
            }
        }
    }
}

fn summarize(request: &Request) -> String {
    match request {
        Request::Get { key, .. } => format!("get {}", String::from_utf8_lossy(key)),
        Request::Coordinate { key, value, .. } => format!(
            "coordinate {} {}",
            String::from_utf8_lossy(key),
            String::from_utf8_lossy(&value.value)
        ),
        Request::Merge {
            key,
            object,
            hint_for,
            ..
        } => format!(
            "merge {} {:?} hint {:?}",
            String::from_utf8_lossy(key),
            object.context(),
            hint_for
        ),
        Request::TreeBranches { partition } => format!("branches {partition}"),
        Request::TreeLeaves {
            partition,
            branches,
        } => format!("leaves {partition} {}", branches.len()),
        Request::SegmentObjects {
            partition,
            segments,
        } => format!("segments {partition} {}", segments.len()),
        Request::PartitionPage {
            partition, after, ..
        } => format!(
            "page {partition} after {:?}",
            after.as_deref().map(|a| String::from_utf8_lossy(a))
        ),
        Request::KeyCounts { partitions } => format!("key counts {}", partitions.len()),
        Request::Batch { requests } => format!("batch of {}", requests.len()),
        Request::MergeBatch { objects } => format!("merge-batch {}", objects.len()),
        Request::ReapBatch { objects } => format!("reap-batch {}", objects.len()),
        Request::ListKeys {
            partition, limit, ..
        } => format!("list-keys {partition} {limit}"),
    }
}

/// One node incarnation's view of the network: what its coordinator and healer call.
pub struct SimPeers {
    pub net: Arc<SimNet>,
    pub from: String,
    pub incarnation: u64,
}

impl Peers for SimPeers {
    async fn call(
        &self,
        to: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, PeerError> {
        let deadline = Instant::now() + timeout;
        let rx = self.net.request(&self.from, self.incarnation, to, request);
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(response)) => Ok(response),
            // Lost on the way: the caller learns only from its timeout, as with QUIC.
            Ok(Err(_)) => {
                tokio::time::sleep_until(deadline).await;
                Err(PeerError::no_answer(
                    to,
                    format!("no answer in {timeout:?}"),
                ))
            }
            Err(_) => Err(PeerError::no_answer(
                to,
                format!("no answer in {timeout:?}"),
            )),
        }
    }
}

//! The coordinator: turns one client request into replica requests and a quorum decision.
//!
//! For a key it takes the preference list from the ring, replaces primaries the failure
//! detector calls unreachable by the next reachable fallbacks (sloppy quorum, with a hint
//! naming the owner), sends to all targets in parallel and answers after R (or W) replies,
//! of which PR (PW) from primaries. Reads merge every reply and repair stale replicas in the
//! background. It reaches replicas only through the `Peers` seam and reads time only through
//! tokio's clock, so the simulation drives this very code with a virtual network and clock.

use std::collections::HashSet;
use std::future::Future;
use std::sync::PoisonError;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::bucket_props::PropsCache;
use crate::causality::{Context, Dot};
use crate::metrics::Metrics;
use crate::object::{Object, Sibling};
use crate::peers::{PeerError, Peers};
pub use crate::quorum::Quorum;
use crate::replica::Replica;
use crate::rpc::{Request, Response};
use crate::storage::Storage;
pub use crate::view::ClusterView;

/// A replica a request goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub primary: bool,
    /// For a fallback: the unreachable primary it stands in for.
    pub hint_for: Option<String>,
}

/// The replicas of a partition for one request: every reachable primary, and for each
/// unreachable primary the next reachable fallback in preference-list order.
pub fn targets(view: &ClusterView, partition: u32) -> Vec<Target> {
    let ring = &view.ring;
    // The common case, every primary reachable: no fallback order to compute (that costs a
    // hash per member and an allocation, on every request).
    let primaries = ring.primaries(partition);
    if primaries.iter().all(|p| !view.unreachable.contains(p)) {
        let out: Vec<Target> = primaries
            .iter()
            .map(|p| Target {
                name: p.clone(),
                primary: true,
                hint_for: None,
            })
            .collect();
        check_targets(view, partition, &out);
        return out;
    }
    let preference = ring.preference_list(partition);
    let n = ring.n().min(preference.len());
    let mut fallbacks = preference[n..]
        .iter()
        .filter(|name| !view.unreachable.contains(**name));
    let mut out = Vec::with_capacity(n);
    for primary in &preference[..n] {
        if !view.unreachable.contains(*primary) {
            out.push(Target {
                name: primary.to_string(),
                primary: true,
                hint_for: None,
            });
        } else if let Some(fallback) = fallbacks.next() {
            out.push(Target {
                name: fallback.to_string(),
                primary: false,
                hint_for: Some(primary.to_string()),
            });
        }
    }
    check_targets(view, partition, &out);
    out
}

/// What [`targets`] promises (debug builds check it): at most N distinct reachable nodes,
/// each a primary of the partition or a fallback naming the unreachable primary it stands
/// in for, each primary covered at most once.
fn check_targets(view: &ClusterView, partition: u32, out: &[Target]) {
    let primaries = view.ring.primaries(partition);
    debug_assert!(out.len() <= view.ring.n(), "more targets than replicas");
    debug_assert!(
        out.iter().map(|t| &t.name).collect::<HashSet<_>>().len() == out.len(),
        "targets are distinct nodes"
    );
    debug_assert!(
        out.iter().all(|t| !view.unreachable.contains(&t.name)),
        "an unreachable node is a target"
    );
    debug_assert!(
        out.iter().all(|t| t.primary == primaries.contains(&t.name)),
        "a target's primary flag disagrees with the ring"
    );
    debug_assert!(
        out.iter().all(|t| match &t.hint_for {
            None => t.primary,
            Some(owner) =>
                !t.primary && primaries.contains(owner) && view.unreachable.contains(owner),
        }),
        "a fallback must name the unreachable primary it stands in for, a primary none"
    );
    debug_assert!(
        out.iter()
            .filter_map(|t| t.hint_for.as_ref())
            .collect::<HashSet<_>>()
            .len()
            == out.iter().filter(|t| !t.primary).count(),
        "two fallbacks stand in for the same primary"
    );
}

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("{replied} of the {needed} replicas needed answered in time{}", primaries_note(*.primaries_needed, *.primaries_replied))]
    Unavailable {
        needed: usize,
        replied: usize,
        primaries_needed: usize,
        primaries_replied: usize,
    },
    /// Fewer than W (or PW) replicas are reachable from this node, so the write was not
    /// tried: nothing was stored anywhere.
    #[error("only {reachable} of the {needed} replicas needed are reachable from this node (the others are down, partitioned away or not yet heard from since it started); nothing was written{}", primaries_note(*.primaries_needed, *.primaries_reachable))]
    Unreachable {
        needed: usize,
        reachable: usize,
        primaries_needed: usize,
        primaries_reachable: usize,
    },
    /// The minting replica refused the write cleanly (a limit: `code` is the HTTP error
    /// code, e.g. `too_many_siblings`); nothing was stored.
    #[error("{message}")]
    Refused { code: String, message: String },
    /// A conditional write's precondition did not hold on the state read first; nothing
    /// was written. `current` is that state's context, to read and retry with.
    #[error("the precondition does not hold: {reason}")]
    PreconditionFailed {
        reason: &'static str,
        current: Context,
    },
    /// This node's own storage failed: it coordinates no write, since it could not tell
    /// the client the truth about its own replica.
    #[error("this node's storage failed ({0}); send the request to another node")]
    StorageFailed(String),
}

fn primaries_note(needed: usize, replied: usize) -> String {
    if needed == 0 {
        String::new()
    } else {
        format!(" ({replied} of the {needed} primary owners needed)")
    }
}

/// What a conditional write requires of the key's state as its first read merged it.
#[derive(Clone, Debug)]
pub enum Precondition {
    /// `If-None-Match: *`: no live value (absent, or only tombstones and expired values).
    Absent,
    /// `If-Match`: every version stored now (live or tombstone) is one this context
    /// covers, so the write replaces all of them and leaves no sibling.
    Matches(Context),
}

impl Precondition {
    /// The context to write with when the precondition holds on `current` at `now_ms`.
    fn check(self, current: &Object, now_ms: u64) -> Result<Context, CoordinatorError> {
        let failed = |reason| CoordinatorError::PreconditionFailed {
            reason,
            current: current.context(),
        };
        let context = self.check_on(current, now_ms, failed)?;
        // A write that passed replaces every version the read merged: it leaves no sibling
        // of that state behind.
        debug_assert!(
            current
                .dotted_values()
                .iter()
                .all(|&(actor, counter, _)| context.covers((actor, counter))),
            "a precondition passed with a context that leaves a version of the state read"
        );
        Ok(context)
    }

    fn check_on(
        self,
        current: &Object,
        now_ms: u64,
        failed: impl Fn(&'static str) -> CoordinatorError,
    ) -> Result<Context, CoordinatorError> {
        match self {
            Precondition::Absent if crate::object::live_siblings(current, now_ms).is_empty() => {
                Ok(current.context())
            }
            Precondition::Absent => Err(failed("the key has a live value")),
            Precondition::Matches(context)
                if current
                    .dotted_values()
                    .iter()
                    .all(|&(actor, counter, _)| context.covers((actor, counter))) =>
            {
                Ok(context)
            }
            Precondition::Matches(_) => Err(failed(
                "the key holds a version the given context does not cover",
            )),
        }
    }
}

/// One read in this many asks every replica, not only `r` of them, so replicas that missed
/// writes are found and read-repaired (Cassandra's read_repair_chance, 10%).
pub const READ_REPAIR_EVERY: u64 = 10;
/// A read whose first `r` replicas have not all answered by then asks the others too.
pub const HEDGE_AFTER: Duration = Duration::from_millis(100);

/// An acknowledged write: the state the minting replica stored (what the others merged),
/// the write's dot, and the context to answer the client with ([`Object::write_answer`]:
/// it covers only what the request covered and this write).
#[derive(Clone, Debug)]
pub struct Written {
    pub object: Object,
    pub dot: Dot,
    pub context: Context,
}

pub struct Coordinator<S: Storage, P: Peers> {
    name: String,
    /// Test-only: answer writes with the minted state's whole vector, the first build's
    /// bug (issue 14: it covers concurrent siblings the writer never saw), so the
    /// simulation and chaos runs can show their checkers catch it. Set only by the
    /// simulation and by `fault-injection` builds (`CHORUS_FAULT_OLD_ANSWER_CONTEXT=1`).
    old_answer_context: bool,
    /// Reads coordinated, for read-repair sampling (shared by clones).
    reads: Arc<std::sync::atomic::AtomicU64>,
    replica: Arc<Replica<S>>,
    peers: Arc<P>,
    view: Arc<RwLock<ClusterView>>,
    metrics: Arc<Metrics>,
    /// Bucket properties as this node last loaded them (`max_siblings` is applied here).
    props: Arc<PropsCache>,
}

impl<S: Storage, P: Peers> Clone for Coordinator<S, P> {
    fn clone(&self) -> Self {
        Coordinator {
            name: self.name.clone(),
            old_answer_context: self.old_answer_context,
            reads: self.reads.clone(),
            replica: self.replica.clone(),
            peers: self.peers.clone(),
            view: self.view.clone(),
            metrics: self.metrics.clone(),
            props: self.props.clone(),
        }
    }
}

struct Reply {
    target: Target,
    result: Result<Response, PeerError>,
}

impl<S: Storage, P: Peers> Coordinator<S, P> {
    pub fn new(
        name: String,
        replica: Arc<Replica<S>>,
        peers: Arc<P>,
        view: Arc<RwLock<ClusterView>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Coordinator {
            name,
            old_answer_context: false,
            reads: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            replica,
            peers,
            view,
            metrics,
            props: Arc::default(),
        }
    }

    pub fn props(&self) -> &PropsCache {
        &self.props
    }

    /// Test-only (see the field): puts the first build's answer context back.
    pub fn with_old_answer_context(mut self, old: bool) -> Self {
        self.old_answer_context = old;
        self
    }

    pub fn view(&self) -> ClusterView {
        self.view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn n(&self) -> usize {
        self.view().ring.n()
    }

    /// This node's time of day (Unix ms): what TTLs are fixed and expiry judged by here.
    pub fn now_ms(&self) -> u64 {
        self.replica.now_ms()
    }

    /// The key's targets with this node first when it is one: coordinating or reading
    /// locally saves a round trip.
    fn local_first_targets(&self, bucket: &[u8], key: &[u8]) -> Vec<Target> {
        let view = self.view();
        let mut targets = targets(&view, view.ring.partition_of(bucket, key));
        if let Some(i) = targets.iter().position(|t| t.name == self.name) {
            targets[..=i].rotate_right(1);
        }
        debug_assert!(
            targets
                .iter()
                .position(|t| t.name == self.name)
                .is_none_or(|i| i == 0),
            "this node is a target but not the first"
        );
        targets
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Sends one request to one replica: directly to the local replica, else over `Peers`.
    pub(crate) fn call(
        &self,
        to: &str,
        request: Request,
        timeout: Duration,
    ) -> impl Future<Output = Result<Response, PeerError>> + Send + 'static {
        let local = (to == self.name).then(|| self.replica.clone());
        let peers = self.peers.clone();
        let to = to.to_string();
        async move {
            match local {
                Some(replica) => Ok(replica.handle_async(request).await),
                None => peers.call(&to, request, timeout).await,
            }
        }
    }

    /// Writes `value` (or a tombstone) over `context`: one replica mints the version, the
    /// others merge it; answers once `w` replicas (`pw` of them primaries) stored it, with
    /// the context the client may write again with.
    pub async fn put(
        &self,
        bucket: &[u8],
        key: &[u8],
        context: Context,
        value: Sibling,
        w: usize,
        pw: usize,
        timeout: Duration,
    ) -> Result<Written, CoordinatorError> {
        self.write(bucket, key, Some(context), value, (w, pw), timeout)
            .await
    }

    /// A write that first reads the key (at `r`, `pr`) and goes on only if `precondition`
    /// holds on what that read merged; otherwise [`CoordinatorError::PreconditionFailed`].
    /// Not atomic: two conditional writes through different nodes at the same moment can
    /// both pass and become siblings (docs/api.md, "Conditional writes", says how `pr`/`pw` narrow the window).
    #[allow(clippy::too_many_arguments)]
    pub async fn put_if(
        &self,
        bucket: &[u8],
        key: &[u8],
        precondition: Precondition,
        value: Sibling,
        (r, pr): (usize, usize),
        (w, pw): (usize, usize),
        timeout: Duration,
    ) -> Result<Written, CoordinatorError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let current = self.get(bucket, key, r, pr, timeout).await?;
        let context = precondition
            .check(&current, self.now_ms())
            .inspect_err(|_| {
                self.metrics.precondition_failed.inc();
            })?;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.write(bucket, key, Some(context), value, (w, pw), remaining)
            .await
    }

    /// Writes `value` over whatever the minting replica holds for the key (its own state
    /// is the context, taken under its key lock): a client that sends no context, like a
    /// RESP `SET`, replaces its own earlier writes, and only versions minted concurrently
    /// elsewhere and not yet merged into that replica stay siblings. Otherwise as `put`.
    pub async fn put_over_current(
        &self,
        bucket: &[u8],
        key: &[u8],
        value: Sibling,
        w: usize,
        pw: usize,
        timeout: Duration,
    ) -> Result<Written, CoordinatorError> {
        self.write(bucket, key, None, value, (w, pw), timeout).await
    }

    /// `put` and `put_over_current`: `context` None mints over the replica's own state.
    async fn write(
        &self,
        bucket: &[u8],
        key: &[u8],
        context: Option<Context>,
        value: Sibling,
        (w, pw): (usize, usize),
        timeout: Duration,
    ) -> Result<Written, CoordinatorError> {
        if let Some(reason) = self.replica.health().failure() {
            return Err(CoordinatorError::StorageFailed(reason));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let targets = self.local_first_targets(bucket, key);
        let unavailable = |replied: usize, primaries: usize| CoordinatorError::Unavailable {
            needed: w,
            replied,
            primaries_needed: pw,
            primaries_replied: primaries,
        };

        // A write that cannot reach W (or PW) distinct replicas even if all answer must not
        // mint a version: it would only fail after leaving an unacknowledged sibling on the
        // one node that took it (seen in chaos runs: a restarted node that has not heard
        // from its peers yet sees a ring of one and piled up 90 siblings per key).
        let reachable_primaries = targets.iter().filter(|t| t.primary).count();
        if targets.len() < w || reachable_primaries < pw {
            return Err(CoordinatorError::Unreachable {
                needed: w,
                reachable: targets.len(),
                primaries_needed: pw,
                primaries_reachable: reachable_primaries,
            });
        }

        // The first target that answers mints the version; the others only merge it. A
        // replica that refused cleanly (`Failed`: nothing stored) is passed over for the
        // next; one that did not answer in time is not: it may have minted and persisted the
        // version and only its answer was lost, and asking another replica would mint a
        // second dot for the same client write (a duplicate sibling). That write is then a
        // 503 the client may retry; any version it left is kept and repaired like any other.
        let max_siblings = self
            .props
            .get(bucket)
            .and_then(|p| p.max_siblings)
            .map(|m| m as u32);
        let mut stored = None;
        let mut rest = Vec::new();
        for target in targets {
            if stored.is_some() {
                rest.push(target);
                continue;
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(unavailable(0, 0));
            }
            let request = Request::Coordinate {
                bucket: bucket.to_vec(),
                key: key.to_vec(),
                context: context.clone().unwrap_or_default(),
                value: value.clone(),
                hint_for: target.hint_for.clone(),
                over_current: context.is_none(),
                max_siblings,
            };
            match self.call(&target.name, request, remaining).await {
                Ok(Response::Minted { object, dot }) => stored = Some((target, object, dot)),
                Ok(Response::Refused { code, message }) => {
                    return Err(CoordinatorError::Refused { code, message })
                }
                Ok(other) => {
                    tracing::debug!(replica = %target.name, "coordinating write failed: {other:?}")
                }
                Err(e) if e.certainly_not_sent() => {
                    // Nothing reached that replica, so nothing was minted there: the next
                    // one may mint (a dead primary the detector has not called down yet
                    // costs a failed connection, not the whole timeout).
                    tracing::debug!(replica = %target.name, "coordinating write not sent: {e}");
                }
                Err(e) => {
                    tracing::debug!(replica = %target.name, "coordinating write got no answer: {e}");
                    return Err(unavailable(0, 0));
                }
            }
        }
        let Some((coordinator, object, dot)) = stored else {
            return Err(unavailable(0, 0));
        };
        // The minted state holds the new version, and none that the request's context
        // covers: the write superseded exactly what its client was shown.
        debug_assert!(
            object
                .dotted_values()
                .iter()
                .any(|&(actor, counter, _)| (actor, counter) == dot),
            "the minted state does not hold its new dot {dot:?}"
        );
        debug_assert!(
            context.as_ref().is_none_or(|c| {
                object.dotted_values().iter().all(|&(actor, counter, _)| {
                    (actor, counter) == dot || !c.covers((actor, counter))
                })
            }),
            "the minted state kept a version its request's context covers"
        );
        debug_assert!(
            rest.iter().all(|t| t.name != coordinator.name),
            "the minting replica is asked to merge its own write"
        );
        let asked = rest.len() + 1;
        // A fallback that minted the write recorded its hint in the same step
        // (`Coordinate` carries `hint_for`), so its ack counts at once.
        let mut acks = 1;
        let mut primary_acks = usize::from(coordinator.primary);

        let (tx, mut rx) = tokio::sync::mpsc::channel(rest.len().max(1));
        for target in rest {
            let request = Request::Merge {
                bucket: bucket.to_vec(),
                key: key.to_vec(),
                object: object.clone(),
                hint_for: target.hint_for.clone(),
            };
            let call = self.call(&target.name, request, timeout);
            let tx = tx.clone();
            // Spawned, so replication goes on after the client has its answer.
            tokio::spawn(async move {
                let result = call.await;
                let _ = tx.send(Reply { target, result }).await;
            });
        }
        drop(tx);
        while acks < w || primary_acks < pw {
            let Ok(Some(reply)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
                return Err(unavailable(acks, primary_acks));
            };
            if let Ok(Response::Merged(_)) = reply.result {
                acks += 1;
                primary_acks += usize::from(reply.target.primary);
            }
        }
        // Acknowledged only with W acks, PW of them from primaries, each from a distinct
        // replica asked once.
        debug_assert!(
            acks >= w && primary_acks >= pw,
            "a write acknowledged with {acks} acks ({primary_acks} primaries) for w={w} pw={pw}"
        );
        debug_assert!(
            primary_acks <= acks && acks <= asked,
            "{acks} acks ({primary_acks} primaries) from {asked} replicas"
        );
        let context = if self.old_answer_context {
            object.context()
        } else {
            // Over the replica's own state (a RESP SET), the client was shown nothing: its
            // answer covers only its own write.
            object.write_answer(context.as_ref().unwrap_or(&Context::default()), dot)
        };
        Ok(Written {
            object,
            dot,
            context,
        })
    }

    /// Reads from `r` targets (the local replica first), answers with the merge of the
    /// first `r` replies (`pr` of them from primaries), then repairs every replica that was
    /// missing part of the merge of all replies. The other targets are asked too when a
    /// contacted one fails, when the `r` have not all answered within `HEDGE_AFTER`, when
    /// `pr` or a fallback is involved, and on one read in `READ_REPAIR_EVERY`, so stale
    /// replicas still get read-repaired (anti-entropy covers the rest). Asking every
    /// replica on every read cost a remote call per read for nothing at R < N.
    pub async fn get(
        &self,
        bucket: &[u8],
        key: &[u8],
        r: usize,
        pr: usize,
        timeout: Duration,
    ) -> Result<Object, CoordinatorError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut targets = self.local_first_targets(bucket, key);
        let sampled = self
            .reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % READ_REPAIR_EVERY
            == 0;
        let everyone =
            sampled || pr > 0 || r >= targets.len() || targets.iter().any(|t| !t.primary);
        let mut waiting: std::collections::VecDeque<Target> = targets
            .split_off(if everyone { targets.len() } else { r })
            .into();
        let (tx, mut rx) = tokio::sync::mpsc::channel((targets.len() + waiting.len()).max(1));
        let ask = |target: Target| {
            let call = self.call(
                &target.name,
                Request::Get {
                    bucket: bucket.to_vec(),
                    key: key.to_vec(),
                },
                timeout,
            );
            let tx = tx.clone();
            tokio::spawn(async move {
                let result = call.await;
                let _ = tx.send(Reply { target, result }).await;
            });
        };
        let mut outstanding = targets.len();
        for target in targets {
            ask(target);
        }
        let hedge_at = tokio::time::Instant::now() + HEDGE_AFTER;

        let mut answers: Vec<(Target, Option<Object>)> = Vec::new();
        let mut primaries = 0;
        while answers.len() < r || primaries < pr {
            let wake = if waiting.is_empty() {
                deadline
            } else {
                hedge_at.min(deadline)
            };
            match tokio::time::timeout_at(wake, rx.recv()).await {
                Ok(Some(Reply {
                    target,
                    result: Ok(Response::Object(object)),
                })) => {
                    outstanding -= 1;
                    primaries += usize::from(target.primary);
                    answers.push((target, object));
                }
                Ok(Some(_failed)) => {
                    outstanding -= 1;
                    if let Some(next) = waiting.pop_front() {
                        ask(next);
                        outstanding += 1;
                    }
                }
                Err(_) if tokio::time::Instant::now() < deadline => {
                    // Slow replicas: ask the others too (speculative retry).
                    outstanding += waiting.len();
                    waiting.drain(..).for_each(&ask);
                    continue;
                }
                Ok(None) | Err(_) => {
                    return Err(CoordinatorError::Unavailable {
                        needed: r,
                        replied: answers.len(),
                        primaries_needed: pr,
                        primaries_replied: primaries,
                    });
                }
            }
            if outstanding == 0 && waiting.is_empty() && (answers.len() < r || primaries < pr) {
                return Err(CoordinatorError::Unavailable {
                    needed: r,
                    replied: answers.len(),
                    primaries_needed: pr,
                    primaries_replied: primaries,
                });
            }
        }
        drop(tx);
        debug_assert!(
            answers.len() >= r && primaries >= pr && primaries <= answers.len(),
            "a read answered with {} replies ({primaries} primaries) for r={r} pr={pr}",
            answers.len()
        );
        debug_assert!(
            answers
                .iter()
                .map(|(t, _)| &t.name)
                .collect::<HashSet<_>>()
                .len()
                == answers.len(),
            "two replies of a read from the same replica"
        );
        let merged = merge_all(answers.iter().filter_map(|(_, o)| o.as_ref()));
        // The answer holds everything each reply held that no other reply superseded.
        debug_assert!(
            answers
                .iter()
                .filter_map(|(_, o)| o.as_ref())
                .all(|o| merged.descends(o)),
            "a read's merge does not descend one of its replies"
        );
        if outstanding == 0
            && answers.iter().all(|(_, o)| {
                o.as_ref().is_some_and(|o| o.descends(&merged))
                    || (o.is_none() && merged.is_empty())
            })
        {
            return Ok(merged);
        }

        let repairer = self.clone();
        let (bucket, key) = (bucket.to_vec(), key.to_vec());
        tokio::spawn(async move {
            while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                if let Ok(Response::Object(object)) = reply.result {
                    answers.push((reply.target, object));
                }
            }
            repairer.read_repair(&bucket, &key, answers, timeout).await;
        });
        Ok(merged)
    }

    async fn read_repair(
        &self,
        bucket: &[u8],
        key: &[u8],
        answers: Vec<(Target, Option<Object>)>,
        timeout: Duration,
    ) {
        let merged = merge_all(answers.iter().filter_map(|(_, o)| o.as_ref()));
        if merged.is_empty() {
            return;
        }
        // Replicas that grew apart past the hard limits cannot take their merge (they would
        // refuse it); each keeps its versions until a client writes with this read's context.
        if let Err(e) = crate::object::Limits::HARD.check(&merged) {
            self.metrics.merges_refused.inc();
            tracing::warn!(bucket = %String::from_utf8_lossy(bucket), key = %String::from_utf8_lossy(key), "read repair skipped: {e}");
            return;
        }
        for (target, object) in answers {
            if object.as_ref().is_some_and(|o| o.descends(&merged)) {
                continue;
            }
            self.metrics.read_repairs.inc();
            tracing::debug!(replica = %target.name, "read repair");
            let request = Request::Merge {
                bucket: bucket.to_vec(),
                key: key.to_vec(),
                object: merged.clone(),
                hint_for: target.hint_for.clone(),
            };
            if let Err(e) = self.call(&target.name, request, timeout).await {
                tracing::debug!(replica = %target.name, "read repair failed: {e}");
            }
        }
    }
}

fn merge_all<'a>(objects: impl Iterator<Item = &'a Object>) -> Object {
    objects.fold(Object::new(), |acc, o| acc.sync(o))
}

#[cfg(test)]
mod tests {
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

    /// Peers for coordinator tests: each named node answers from its own replica, hangs
    /// until the call's timeout, or is refused at once (not sent).
    struct FakePeers {
        replicas: std::collections::HashMap<String, Arc<Replica<crate::storage::MemoryStorage>>>,
        hang: HashSet<String>,
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
            async move {
                if hang {
                    // As the transport does: the request went out, no answer came in time.
                    tokio::time::sleep(timeout).await;
                    return Err(PeerError::no_answer(&to, "timed out"));
                }
                match replica {
                    Some(r) => Ok(r.handle(request)),
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
        let peers = Arc::new(FakePeers { replicas, hang });
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
                hang: HashSet::new(),
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
            hang: HashSet::new(),
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
        let peers = Arc::new(FakePeers { replicas, hang });
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
            .find(|k| {
                targets(&c.view(), c.view().ring.partition_of(b"b", k.as_bytes()))[0].name == "a"
            })
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
}

//! The coordinator: turns one client request into replica requests and a quorum decision.
//!
//! For a key it takes the preference list from the ring, replaces primaries the failure
//! detector calls unreachable by the next reachable fallbacks (sloppy quorum, with a hint
//! naming the owner), sends to all targets in parallel and answers after R (or W) replies,
//! of which PR (PW) from primaries. Reads merge every reply and repair stale replicas in the
//! background. It reaches replicas only through the `Peers` seam and reads time only through
//! tokio's clock, so the simulation drives this very code with a virtual network and clock.
//!
//! This file owns the plan: targets, the errors, preconditions and the coordinator's one
//! way to a replica (`call`). The write path (mint, fan-out, acks) is in `write.rs`, the
//! read path (read round, merge, read repair) in `read.rs`; both use this file, neither
//! the other. It must not read the system clock, nor reach a replica but through `call`.

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

mod read;
mod write;

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

/// One replica's answer to a request the coordinator spawned (a read's `Get`, a write's
/// `Merge`), sent back over the request's channel.
struct Reply {
    target: Target,
    result: Result<Response, PeerError>,
}

/// How many replies a request needs (R or W), and how many of them from primaries (PR or
/// PW).
#[derive(Clone, Copy)]
struct Needed {
    replies: usize,
    primaries: usize,
}

impl Needed {
    fn met_by(self, replies: usize, primaries: usize) -> bool {
        replies >= self.replies && primaries >= self.primaries
    }

    fn unavailable(self, replied: usize, primaries_replied: usize) -> CoordinatorError {
        CoordinatorError::Unavailable {
            needed: self.replies,
            replied,
            primaries_needed: self.primaries,
            primaries_replied,
        }
    }
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
}

#[cfg(test)]
mod tests;

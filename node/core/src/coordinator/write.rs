//! The write path: plan (is a quorum reachable at all), mint (one replica makes the
//! version), fan-out (the others merge it), acks (W, PW of them primaries), answer (the
//! client's new context). It must not send a write that may have reached a replica to
//! another replica to mint again: that would make one client write two siblings. A
//! replica that answered nothing and one that answered `OutcomeUnknown` (it failed after
//! the version may have reached its journal) are the same case.

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Coordinator, CoordinatorError, Needed, Reply, Target, Written};
use crate::causality::{Context, Dot};
use crate::object::{Object, Sibling};
use crate::peers::Peers;
use crate::rpc::{Request, Response};
use crate::storage::Storage;

/// The version one replica minted, and the targets left to merge it.
struct Minted {
    by: Target,
    object: Object,
    dot: Dot,
    rest: Vec<Target>,
}

impl<S: Storage, P: Peers> Coordinator<S, P> {
    /// `put` and `put_over_current`: `context` None mints over the replica's own state.
    pub(super) async fn write(
        &self,
        bucket: &[u8],
        key: &[u8],
        context: Option<Context>,
        value: Sibling,
        (w, pw): (usize, usize),
        timeout: std::time::Duration,
    ) -> Result<Written, CoordinatorError> {
        if let Some(reason) = self.replica.health().failure() {
            return Err(CoordinatorError::StorageFailed(reason));
        }
        let deadline = Instant::now() + timeout;
        let needed = Needed {
            replies: w,
            primaries: pw,
        };
        let targets = self.local_first_targets(bucket, key);
        check_reachable(&targets, needed)?;
        let minted = self
            .mint(bucket, key, &context, value, targets, needed, deadline)
            .await?;
        check_minted(&minted, context.as_ref());
        let asked = minted.rest.len() + 1;
        let replies = self.fan_out_merges(bucket, key, &minted.object, minted.rest, timeout);
        // A fallback that minted the write recorded its hint in the same step
        // (`Coordinate` carries `hint_for`), so its ack counts at once.
        let (acks, primary_acks) = await_acks(replies, minted.by.primary, needed, deadline).await?;
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
        let (object, dot) = (minted.object, minted.dot);
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

    /// The first target that answers mints the version; the others only merge it. A
    /// replica that refused cleanly (`Failed`: nothing stored) is passed over for the
    /// next; one that did not answer in time is not: it may have minted and persisted the
    /// version and only its answer was lost, and asking another replica would mint a
    /// second dot for the same client write (a duplicate sibling). Nor is one that
    /// answered `OutcomeUnknown` (its fsync failed after the append: a restart replays
    /// the journal). That write is then a 503 the client may retry, the same as for no
    /// answer; any version it left is kept and repaired like any other.
    #[allow(clippy::too_many_arguments)]
    async fn mint(
        &self,
        bucket: &[u8],
        key: &[u8],
        context: &Option<Context>,
        value: Sibling,
        targets: Vec<Target>,
        needed: Needed,
        deadline: Instant,
    ) -> Result<Minted, CoordinatorError> {
        let max_siblings = self
            .props
            .get(bucket)
            .and_then(|p| p.max_siblings)
            .map(|m| m as u32);
        let mut targets = targets.into_iter();
        while let Some(target) = targets.next() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(needed.unavailable(0, 0));
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
                Ok(Response::Minted { object, dot }) => {
                    let rest = targets.collect();
                    return Ok(Minted {
                        by: target,
                        object,
                        dot,
                        rest,
                    });
                }
                Ok(Response::Refused { code, message }) => {
                    return Err(CoordinatorError::Refused { code, message })
                }
                Ok(Response::OutcomeUnknown(reason)) => {
                    // As no answer (below): the version may be in that replica's journal.
                    tracing::debug!(replica = %target.name, "coordinating write's outcome unknown: {reason}");
                    return Err(needed.unavailable(0, 0));
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
                    return Err(needed.unavailable(0, 0));
                }
            }
        }
        Err(needed.unavailable(0, 0))
    }

    /// Sends the minted state to every other target to merge; their replies come back on
    /// the returned channel.
    fn fan_out_merges(
        &self,
        bucket: &[u8],
        key: &[u8],
        object: &Object,
        rest: Vec<Target>,
        timeout: std::time::Duration,
    ) -> mpsc::Receiver<Reply> {
        let (tx, rx) = mpsc::channel(rest.len().max(1));
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
        rx
    }
}

/// A write that cannot reach W (or PW) distinct replicas even if all answer must not
/// mint a version: it would only fail after leaving an unacknowledged sibling on the
/// one node that took it (seen in chaos runs: a restarted node that has not heard
/// from its peers yet sees a ring of one and piled up 90 siblings per key).
fn check_reachable(targets: &[Target], needed: Needed) -> Result<(), CoordinatorError> {
    let reachable_primaries = targets.iter().filter(|t| t.primary).count();
    if needed.met_by(targets.len(), reachable_primaries) {
        return Ok(());
    }
    Err(CoordinatorError::Unreachable {
        needed: needed.replies,
        reachable: targets.len(),
        primaries_needed: needed.primaries,
        primaries_reachable: reachable_primaries,
    })
}

/// The minted state holds the new version, and none that the request's context
/// covers: the write superseded exactly what its client was shown.
fn check_minted(minted: &Minted, context: Option<&Context>) {
    let (object, dot) = (&minted.object, minted.dot);
    debug_assert!(
        object
            .dotted_values()
            .iter()
            .any(|&(actor, counter, _)| (actor, counter) == dot),
        "the minted state does not hold its new dot {dot:?}"
    );
    debug_assert!(
        context.is_none_or(|c| {
            object
                .dotted_values()
                .iter()
                .all(|&(actor, counter, _)| (actor, counter) == dot || !c.covers((actor, counter)))
        }),
        "the minted state kept a version its request's context covers"
    );
    debug_assert!(
        minted.rest.iter().all(|t| t.name != minted.by.name),
        "the minting replica is asked to merge its own write"
    );
}

/// Counts merge acks, the minting replica's included, until W (PW of them primaries);
/// `Unavailable` when the deadline or the last reply comes first.
async fn await_acks(
    mut replies: mpsc::Receiver<Reply>,
    minted_by_primary: bool,
    needed: Needed,
    deadline: Instant,
) -> Result<(usize, usize), CoordinatorError> {
    let mut acks = 1;
    let mut primary_acks = usize::from(minted_by_primary);
    while !needed.met_by(acks, primary_acks) {
        let Ok(Some(reply)) = tokio::time::timeout_at(deadline, replies.recv()).await else {
            return Err(needed.unavailable(acks, primary_acks));
        };
        if let Ok(Response::Merged(_)) = reply.result {
            acks += 1;
            primary_acks += usize::from(reply.target.primary);
        }
    }
    Ok((acks, primary_acks))
}

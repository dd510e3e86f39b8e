//! The read path: plan (which targets to ask first), fan-out, the read round (replies
//! until R, PR of them primaries; hedging and replacing failed replicas), the merge, and
//! read repair in the background. It must not hold the client's answer back for repair,
//! nor repair a replica with a merge past the hard limits.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Coordinator, CoordinatorError, Needed, Reply, Target, HEDGE_AFTER, READ_REPAIR_EVERY};
use crate::object::Object;
use crate::peers::Peers;
use crate::rpc::{Request, Response};
use crate::storage::Storage;

impl<S: Storage, P: Peers> Coordinator<S, P> {
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
        let deadline = Instant::now() + timeout;
        let needed = Needed {
            replies: r,
            primaries: pr,
        };
        let mut round = ReadRound::start(self, bucket, key, needed, timeout);
        round.until(needed, deadline).await?;
        let merged = round.merge(needed);
        if !round.everyone_answered_with(&merged) {
            round.repair_in_background(deadline);
        }
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

/// One read's requests: those in flight, the targets not asked yet (asked when one fails
/// or the first are slow), and the replies so far.
struct ReadRound<'c, S: Storage, P: Peers> {
    coordinator: &'c Coordinator<S, P>,
    bucket: &'c [u8],
    key: &'c [u8],
    timeout: Duration,
    tx: mpsc::Sender<Reply>,
    rx: mpsc::Receiver<Reply>,
    waiting: VecDeque<Target>,
    outstanding: usize,
    hedge_at: Instant,
    answers: Vec<(Target, Option<Object>)>,
    primaries: usize,
}

impl<'c, S: Storage, P: Peers> ReadRound<'c, S, P> {
    /// Asks the first `r` targets, or every target when the read is sampled for repair,
    /// needs primaries or involves a fallback.
    fn start(
        coordinator: &'c Coordinator<S, P>,
        bucket: &'c [u8],
        key: &'c [u8],
        needed: Needed,
        timeout: Duration,
    ) -> Self {
        let mut targets = coordinator.local_first_targets(bucket, key);
        let sampled = coordinator
            .reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % READ_REPAIR_EVERY
            == 0;
        let everyone = sampled
            || needed.primaries > 0
            || needed.replies >= targets.len()
            || targets.iter().any(|t| !t.primary);
        let waiting: VecDeque<Target> = targets
            .split_off(if everyone {
                targets.len()
            } else {
                needed.replies
            })
            .into();
        let (tx, rx) = mpsc::channel((targets.len() + waiting.len()).max(1));
        let mut round = ReadRound {
            coordinator,
            bucket,
            key,
            timeout,
            tx,
            rx,
            waiting,
            outstanding: 0,
            hedge_at: Instant::now() + HEDGE_AFTER,
            answers: Vec::new(),
            primaries: 0,
        };
        for target in targets {
            round.ask(target);
        }
        round
    }

    fn ask(&mut self, target: Target) {
        let request = Request::Get {
            bucket: self.bucket.to_vec(),
            key: self.key.to_vec(),
        };
        let call = self.coordinator.call(&target.name, request, self.timeout);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result = call.await;
            let _ = tx.send(Reply { target, result }).await;
        });
        self.outstanding += 1;
    }

    /// Takes replies until `needed` is met; `Unavailable` at the deadline, or when every
    /// target was asked and answered short of it.
    async fn until(&mut self, needed: Needed, deadline: Instant) -> Result<(), CoordinatorError> {
        while !needed.met_by(self.answers.len(), self.primaries) {
            let wake = if self.waiting.is_empty() {
                deadline
            } else {
                self.hedge_at.min(deadline)
            };
            let reply = tokio::time::timeout_at(wake, self.rx.recv()).await;
            match reply {
                Ok(Some(Reply {
                    target,
                    result: Ok(Response::Object(object)),
                })) => {
                    self.outstanding -= 1;
                    self.primaries += usize::from(target.primary);
                    self.answers.push((target, object));
                }
                Ok(Some(_failed)) => {
                    self.outstanding -= 1;
                    if let Some(next) = self.waiting.pop_front() {
                        self.ask(next);
                    }
                }
                Err(_) if Instant::now() < deadline => {
                    // Slow replicas: ask the others too (speculative retry).
                    for target in std::mem::take(&mut self.waiting) {
                        self.ask(target);
                    }
                    continue;
                }
                Ok(None) | Err(_) => {
                    return Err(needed.unavailable(self.answers.len(), self.primaries));
                }
            }
            if self.outstanding == 0
                && self.waiting.is_empty()
                && !needed.met_by(self.answers.len(), self.primaries)
            {
                return Err(needed.unavailable(self.answers.len(), self.primaries));
            }
        }
        Ok(())
    }

    /// The merge of the replies so far: the client's answer.
    fn merge(&self, needed: Needed) -> Object {
        let (answers, primaries) = (&self.answers, self.primaries);
        debug_assert!(
            needed.met_by(answers.len(), primaries) && primaries <= answers.len(),
            "a read answered with {} replies ({primaries} primaries) for r={} pr={}",
            answers.len(),
            needed.replies,
            needed.primaries
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
        merged
    }

    /// Every target asked has answered, each with all of `merged` (or all with nothing):
    /// there is nothing to repair.
    fn everyone_answered_with(&self, merged: &Object) -> bool {
        self.outstanding == 0
            && self.answers.iter().all(|(_, o)| {
                o.as_ref().is_some_and(|o| o.descends(merged)) || (o.is_none() && merged.is_empty())
            })
    }

    /// Collects the replies still in flight (until the deadline), then repairs every
    /// replica that missed part of their merge; the client has its answer already.
    fn repair_in_background(self, deadline: Instant) {
        let ReadRound {
            coordinator,
            bucket,
            key,
            timeout,
            tx,
            mut rx,
            mut answers,
            ..
        } = self;
        // Only the requests in flight hold a sender now: the channel closes when the last
        // of them has replied.
        drop(tx);
        let repairer = coordinator.clone();
        let (bucket, key) = (bucket.to_vec(), key.to_vec());
        tokio::spawn(async move {
            while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                if let Ok(Response::Object(object)) = reply.result {
                    answers.push((reply.target, object));
                }
            }
            repairer.read_repair(&bucket, &key, answers, timeout).await;
        });
    }
}

fn merge_all<'a>(objects: impl Iterator<Item = &'a Object>) -> Object {
    objects.fold(Object::new(), |acc, o| acc.sync(o))
}

//! Replica requests to one peer share messages: a `Peers` wrapper that queues each
//! `Get` and `Merge` on a lane per peer and sends whatever is queued when a lane's turn
//! comes as one `Request::Batch` (one stream, one encoding, one answer). The batch is the
//! requests that arrived while the lane's previous batches were in flight, so an idle lane
//! adds no wait, and a busy one folds many puts into one message (about ten per batch
//! under 64 clients on three nodes).
//!
//! Must not: batch anything else (a `Coordinate` must be sent alone: its failure decides
//! whether another replica may mint), wait for a batch to fill, or hold more than its
//! bounds. A full lane, a large request, or a peer that has not said it takes batches
//! gets a plain call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::metrics::Metrics;
use crate::peers::{PeerError, Peers};
use crate::rpc::{Request, Response, MAX_BATCH_REQUESTS};

/// Requests queued per peer; beyond it a request goes alone.
const LANE_CAPACITY: usize = 1024;
/// Batches in flight per peer at once: while they are, the next one fills.
const BATCHES_IN_FLIGHT: usize = 4;
/// A batch stops growing past this many bytes of keys and values.
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// A request carrying more than this goes alone, so it never delays a batch of small ones.
const MAX_BATCHED_REQUEST_BYTES: usize = 64 * 1024;

/// Whether a peer takes `Request::Batch` (a node of an older version does not).
pub type TakesBatches = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Told the outcome of every call this wrapper makes to a peer (`true`: an answer came
/// back), and of every batched request that timed out (each waited its whole timeout
/// without an answer). A burst of them at one moment is one stall, not a cut: the
/// direct-reachability table counts a streak only over time (`reach::MIN_STREAK`). The assembly feeds it to the direct-reachability table (`reach.rs`).
pub type CallObserver = Arc<dyn Fn(&str, bool) + Send + Sync>;

/// Gossiped key-value by which a node says it takes `Request::Batch`.
pub const BATCH_KV: &str = "rpc_batch";

/// `chorus_rpc_batches` and `chorus_rpc_batched_requests`.
#[derive(Clone)]
struct BatchCounters {
    batches: Counter,
    requests: Counter,
}

pub struct Batching<P: Peers> {
    inner: Arc<P>,
    takes_batches: TakesBatches,
    lanes: Mutex<HashMap<String, mpsc::Sender<Queued>>>,
    counters: BatchCounters,
    observer: CallObserver,
}

enum Enqueued {
    Queued(oneshot::Receiver<Result<Response, PeerError>>),
    Alone(Request),
}

struct Queued {
    request: Request,
    bytes: usize,
    timeout: Duration,
    reply: oneshot::Sender<Result<Response, PeerError>>,
}

impl<P: Peers> Batching<P> {
    pub fn new(inner: Arc<P>, takes_batches: TakesBatches, metrics: &Metrics) -> Batching<P> {
        Batching {
            inner,
            takes_batches,
            lanes: Mutex::new(HashMap::new()),
            counters: BatchCounters {
                batches: metrics.rpc_batches.clone(),
                requests: metrics.rpc_batched_requests.clone(),
            },
            observer: Arc::new(|_, _| {}),
        }
    }

    /// Tells `observer` the outcome of every call to a peer from now on.
    pub fn with_observer(mut self, observer: CallObserver) -> Batching<P> {
        self.observer = observer;
        self
    }

    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// Queues `request` on `to`'s lane, or hands it back when it must go alone.
    fn enqueue(&self, to: &str, request: Request, timeout: Duration) -> Enqueued {
        let bytes = match batched_bytes(&request) {
            Some(bytes) if bytes <= MAX_BATCHED_REQUEST_BYTES && (self.takes_batches)(to) => bytes,
            _ => return Enqueued::Alone(request),
        };
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            request,
            bytes,
            timeout,
            reply,
        };
        match self.lane(to).try_send(queued) {
            Ok(()) => Enqueued::Queued(answer),
            Err(mpsc::error::TrySendError::Full(q) | mpsc::error::TrySendError::Closed(q)) => {
                Enqueued::Alone(q.request)
            }
        }
    }

    fn lane(&self, to: &str) -> mpsc::Sender<Queued> {
        let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(lane) = lanes.get(to) {
            return lane.clone();
        }
        let (tx, rx) = mpsc::channel(LANE_CAPACITY);
        tokio::spawn(run_lane(
            self.inner.clone(),
            to.to_string(),
            rx,
            self.counters.clone(),
            self.observer.clone(),
        ));
        lanes.insert(to.to_string(), tx.clone());
        tx
    }
}

impl<P: Peers> Peers for Batching<P> {
    async fn call(
        &self,
        to: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, PeerError> {
        match self.enqueue(to, request, timeout) {
            Enqueued::Alone(request) => {
                let result = self.inner.call(to, request, timeout).await;
                (self.observer)(to, result.is_ok());
                result
            }
            Enqueued::Queued(answer) => match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(result)) => result,
                // Queued may mean sent: never report it as certainly not sent.
                Ok(Err(_)) => Err(PeerError::no_answer(to, "the batch lane stopped")),
                Err(_) => {
                    // Its whole timeout without an answer, as a call alone would fail.
                    // Requests behind a lane whose batches hang (a peer cut off) end this
                    // way, each at its own time: without them a cut peer would be seen
                    // to fail only once per round of batches (2 s apart).
                    (self.observer)(to, false);
                    Err(PeerError::no_answer(to, "timed out in a batch"))
                }
            },
        }
    }
}

/// The bytes of keys and values a request carries, when it may be batched.
fn batched_bytes(request: &Request) -> Option<usize> {
    match request {
        Request::Get { bucket, key } => Some(bucket.len() + key.len()),
        Request::Merge {
            bucket,
            key,
            object,
            ..
        } => Some(
            bucket.len() + key.len() + object.values().iter().map(|s| s.value.len()).sum::<usize>(),
        ),
        _ => None,
    }
}

async fn run_lane<P: Peers>(
    inner: Arc<P>,
    to: String,
    mut queue: mpsc::Receiver<Queued>,
    counters: BatchCounters,
    observer: CallObserver,
) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_REQUESTS && bytes < MAX_BATCH_BYTES {
            let Ok(next) = queue.try_recv() else { break };
            bytes += next.bytes;
            batch.push(next);
        }
        let (inner, to, counters) = (inner.clone(), to.clone(), counters.clone());
        let observer = observer.clone();
        tokio::spawn(async move {
            send(&*inner, &to, batch, &counters, &observer).await;
            drop(permit);
        });
    }
}

/// Sends one lane's batch (a single request plainly) and hands each caller its answer.
async fn send<P: Peers>(
    inner: &P,
    to: &str,
    mut batch: Vec<Queued>,
    counters: &BatchCounters,
    observer: &CallObserver,
) {
    if batch.len() == 1 {
        let only = batch.pop().expect("one request");
        let result = inner.call(to, only.request, only.timeout).await;
        observer(to, result.is_ok());
        let _ = only.reply.send(result);
        return;
    }
    counters.batches.inc();
    counters.requests.inc_by(batch.len() as u64);
    let timeout = batch.iter().map(|q| q.timeout).max().unwrap_or_default();
    let (requests, replies): (Vec<Request>, Vec<_>) =
        batch.into_iter().map(|q| (q.request, q.reply)).unzip();
    let count = requests.len();
    let result = inner.call(to, Request::Batch { requests }, timeout).await;
    observer(to, result.is_ok());
    match result {
        Ok(Response::Batch(responses)) if responses.len() == count => {
            for (reply, response) in replies.into_iter().zip(responses) {
                let _ = reply.send(Ok(response));
            }
        }
        Ok(Response::Batch(responses)) => {
            let wrong = format!("{} answers to a batch of {count}", responses.len());
            for reply in replies {
                let _ = reply.send(Err(PeerError::no_answer(to, &wrong)));
            }
        }
        Ok(whole) => {
            for reply in replies {
                let _ = reply.send(Ok(whole.clone()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests;

use super::*;
use crate::causality::{ActorId, Context};
use crate::object::{Object, Sibling};

/// A peer that records what it was sent and answers each merge with the number in its
/// key, after a delay, so answers can be matched to their callers.
#[derive(Default)]
struct Recording {
    sent: Mutex<Vec<Request>>,
    fail: Option<PeerError>,
}

fn answer(request: &Request) -> Response {
    match request {
        Request::Merge { key, .. } => {
            Response::Merged(String::from_utf8_lossy(key).parse().unwrap())
        }
        Request::Batch { requests } => Response::Batch(requests.iter().map(answer).collect()),
        _ => Response::Failed("not expected here".into()),
    }
}

impl Peers for Recording {
    async fn call(
        &self,
        _to: &str,
        request: Request,
        _timeout: Duration,
    ) -> Result<Response, PeerError> {
        let response = answer(&request);
        self.sent.lock().unwrap().push(request);
        tokio::time::sleep(Duration::from_millis(5)).await;
        match &self.fail {
            Some(e) => Err(e.clone()),
            None => Ok(response),
        }
    }
}

fn merge(key: usize, value_bytes: usize) -> Request {
    let value = Sibling::value(vec![b'v'; value_bytes], None);
    Request::Merge {
        bucket: b"b".to_vec(),
        key: key.to_string().into_bytes(),
        object: Object::new().update(&Context::default(), ActorId(1), value),
        hint_for: None,
    }
}

fn batching(peer: Recording, takes: bool) -> (Arc<Batching<Recording>>, Metrics) {
    let metrics = Metrics::default();
    let peers = Batching::new(Arc::new(peer), Box::new(move |_| takes), &metrics);
    (Arc::new(peers), metrics)
}

async fn call_all(
    peers: &Arc<Batching<Recording>>,
    requests: Vec<Request>,
) -> Vec<Result<Response, PeerError>> {
    let mut calls = tokio::task::JoinSet::new();
    for (i, request) in requests.into_iter().enumerate() {
        let peers = peers.clone();
        calls.spawn(async move {
            let result = peers.call("p", request, Duration::from_secs(5)).await;
            (i, result)
        });
    }
    let mut results: Vec<_> = calls.join_all().await;
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

#[tokio::test(start_paused = true)]
async fn concurrent_merges_to_one_peer_share_messages_and_each_caller_gets_its_own_answer() {
    let (peers, metrics) = batching(Recording::default(), true);
    let results = call_all(&peers, (0..200).map(|k| merge(k, 100)).collect()).await;
    for (k, result) in results.iter().enumerate() {
        assert!(
            matches!(result, Ok(Response::Merged(n)) if *n == k),
            "{k}: {result:?}"
        );
    }
    let sent = peers.inner().sent.lock().unwrap();
    let batches = sent
        .iter()
        .filter(|r| matches!(r, Request::Batch { .. }))
        .count();
    assert!(sent.len() < 20, "200 merges took {} messages", sent.len());
    assert_eq!(metrics.rpc_batches.get(), batches as u64);
    assert_eq!(
        metrics.rpc_batched_requests.get(),
        200 - (sent.len() - batches) as u64
    );
}

#[tokio::test(start_paused = true)]
async fn coordinates_large_merges_and_peers_without_batches_get_plain_calls() {
    let coordinate = Request::Coordinate {
        bucket: b"b".to_vec(),
        key: b"1".to_vec(),
        context: Context::default(),
        value: Sibling::value(b"v".to_vec(), None),
        hint_for: None,
        over_current: false,
        max_siblings: None,
    };
    let (peers, metrics) = batching(Recording::default(), true);
    let mut requests: Vec<Request> = (0..8).map(|_| coordinate.clone()).collect();
    requests.extend((0..8).map(|k| merge(k, MAX_BATCHED_REQUEST_BYTES + 1)));
    call_all(&peers, requests).await;
    {
        let sent = peers.inner().sent.lock().unwrap();
        assert_eq!(sent.len(), 16);
        assert!(sent.iter().all(|r| !matches!(r, Request::Batch { .. })));
        assert_eq!(metrics.rpc_batches.get(), 0);
    }

    let (old_peer, _) = batching(Recording::default(), false);
    call_all(&old_peer, (0..50).map(|k| merge(k, 10)).collect()).await;
    let sent = old_peer.inner().sent.lock().unwrap();
    assert_eq!(sent.len(), 50);
    assert!(sent.iter().all(|r| matches!(r, Request::Merge { .. })));
}

#[tokio::test(start_paused = true)]
async fn a_batch_that_fails_fails_every_request_in_it_the_same_way() {
    let no_answer = PeerError::no_answer("p", "connection lost");
    let (peers, metrics) = batching(
        Recording {
            fail: Some(no_answer.clone()),
            ..Default::default()
        },
        true,
    );
    let results = call_all(&peers, (0..100).map(|k| merge(k, 10)).collect()).await;
    assert!(metrics.rpc_batches.get() > 0);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(e) if *e == no_answer)),
        "{results:?}"
    );
}

/// A peer that never answers: every call waits out its timeout.
struct Hanging;

impl Peers for Hanging {
    async fn call(&self, to: &str, _: Request, timeout: Duration) -> Result<Response, PeerError> {
        tokio::time::sleep(timeout).await;
        Err(PeerError::no_answer(to, "hangs"))
    }
}

#[tokio::test(start_paused = true)]
async fn the_observer_hears_every_request_that_timed_out_and_every_answer() {
    let seen: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let record = seen.clone();
    let metrics = Metrics::default();
    let peers = Arc::new(
        Batching::new(Arc::new(Hanging), Box::new(|_| true), &metrics).with_observer(Arc::new(
            move |peer, answered| record.lock().unwrap().push((peer.to_string(), answered)),
        )),
    );
    // 4 batches fill the lane's flight; the rest wait queued, then in a batch that hangs.
    let mut calls = tokio::task::JoinSet::new();
    for k in 0..40 {
        let peers = peers.clone();
        calls.spawn(async move { peers.call("p", merge(k, 10), Duration::from_secs(2)).await });
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let results = calls.join_all().await;
    assert!(results.iter().all(|r| r.is_err()));
    let seen = seen.lock().unwrap();
    assert!(seen.iter().all(|(peer, answered)| peer == "p" && !answered));
    // Every request that timed out is heard (each at its own time), and each batch.
    assert!(seen.len() >= 40, "{} failures observed", seen.len());

    // An answer is heard as one.
    let heard: Arc<Mutex<Vec<bool>>> = Arc::default();
    let record = heard.clone();
    let peers = Batching::new(Arc::new(Recording::default()), Box::new(|_| true), &metrics)
        .with_observer(Arc::new(move |_, answered| {
            record.lock().unwrap().push(answered)
        }));
    peers
        .call("p", merge(1, 10), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(*heard.lock().unwrap(), [true]);
}

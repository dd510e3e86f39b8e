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

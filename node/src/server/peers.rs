//! The QUIC side of the core's `Peers` seam: requests to other nodes' replicas by name,
//! and sending gossip. The handler that answers other nodes is `rpc_handler.rs`.
//!
//! Must not: interpret replica requests (the core's `Replica` does), decide retries, or
//! import the running node (`node.rs` imports this module).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;
use std::time::Instant;

use chorus_core::membership::Gossip;
use chorus_core::peers::{PeerError, Peers};
use chorus_core::rpc::{self, Message, Request, Response};

use chorus_gossip::Outgoing;

use crate::server::transport::QuicTransport;

/// How long a gossip message may take to send before it is dropped (gossip repeats).
const GOSSIP_SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest a name lookup may take before the dial counts as not sent.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the coordinator and the healer reach other replicas through: QUIC, with gets and
/// merges to one peer sharing messages.
pub type NodePeers = chorus_core::batching::Batching<QuicPeers>;

/// Reaches other nodes' replicas by name over QUIC.
pub struct QuicPeers {
    pub transport: Arc<QuicTransport>,
    pub gossip: Arc<Gossip>,
}

impl Peers for QuicPeers {
    async fn call(
        &self,
        to: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, PeerError> {
        let address = self
            .gossip
            .address_of(to)
            .ok_or_else(|| PeerError::not_sent(to, "no address known"))?;
        let addr = resolve(&address)
            .await
            .map_err(|e| PeerError::not_sent(to, e))?;
        let bytes = self
            .transport
            .request(addr, &rpc::encode(Message::Request(request)), timeout)
            .await
            .map_err(|e| match e.certainly_not_sent() {
                true => PeerError::not_sent(to, e),
                false => PeerError::no_answer(to, e),
            })?;
        match rpc::decode(&bytes) {
            Ok(Message::Response(response)) => Ok(response),
            Ok(other) => Err(PeerError::no_answer(to, format!("answered with {other:?}"))),
            Err(e) => Err(PeerError::no_answer(to, e)),
        }
    }
}

/// Sends gossip messages, each on its own task: a slow peer (or a slow name lookup)
/// delays only its own message.
pub fn send_gossip(transport: &Arc<QuicTransport>, out: Vec<Outgoing>) {
    for Outgoing { to, message } in out {
        let bytes = rpc::encode(Message::Gossip(message));
        let transport = transport.clone();
        tokio::spawn(async move {
            let addr = match resolve(&to).await {
                Ok(addr) => addr,
                Err(e) => return report_gossip_failure(&to, &e),
            };
            if let Err(e) = transport.send(addr, &bytes, GOSSIP_SEND_TIMEOUT).await {
                report_gossip_failure(&to, &format!("({addr}) {e}"));
            }
        });
    }
}

/// Failed gossip to one address reaches WARN at most this often (DEBUG in between): a
/// seed that cannot be reached (a wrong `--seeds` entry, a name that does not resolve, a
/// firewall) must show without flooding the log.
const GOSSIP_FAILURE_WARN_EVERY: Duration = Duration::from_secs(10);
/// Addresses whose last WARN is remembered; the oldest is forgotten past this.
const GOSSIP_FAILURE_ADDRESSES: usize = 256;

fn report_gossip_failure(to: &str, error: &str) {
    static LAST_WARNED: OnceLock<Mutex<HashMap<String, Instant>>> = OnceLock::new();
    let now = Instant::now();
    let mut last = LAST_WARNED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let due = last
        .get(to)
        .is_none_or(|t| now.duration_since(*t) >= GOSSIP_FAILURE_WARN_EVERY);
    if !due {
        return tracing::debug!("gossip to {to} failed: {error}");
    }
    if last.len() >= GOSSIP_FAILURE_ADDRESSES && !last.contains_key(to) {
        let oldest = last.iter().min_by_key(|(_, t)| **t).map(|(a, _)| a.clone());
        if let Some(oldest) = oldest {
            last.remove(&oldest);
        }
    }
    last.insert(to.to_string(), now);
    tracing::warn!("gossip to {to} failed: {error} (repeats within {GOSSIP_FAILURE_WARN_EVERY:?} are logged at DEBUG)");
}

/// A gossiped address to dial: an IP address as it is, a `HOST:PORT` name looked up now
/// (so a replaced machine's new address is found), bounded by [`RESOLVE_TIMEOUT`]. An
/// IPv4 answer is preferred: `localhost` resolves to `::1` first on many machines, which a
/// node listening on an IPv4 address cannot reach.
pub async fn resolve(address: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(address));
    match lookup.await {
        Ok(Ok(addrs)) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            let v4 = addrs.iter().find(|a| a.is_ipv4());
            v4.or(addrs.first())
                .copied()
                .ok_or_else(|| format!("{address} resolves to no address"))
        }
        Ok(Err(e)) => Err(format!("cannot resolve {address}: {e}")),
        Err(_) => Err(format!("resolving {address} took over {RESOLVE_TIMEOUT:?}")),
    }
}

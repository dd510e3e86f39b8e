//! The QUIC side of the core's `Peers` seam: requests to other nodes' replicas by name,
//! and sending gossip. The handler that answers other nodes is `rpc_handler.rs`.
//!
//! Must not: interpret replica requests (the core's `Replica` does), decide retries, or
//! import the running node (`node.rs` imports this module).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chorus_core::membership::Gossip;
use chorus_core::peers::{PeerError, Peers};
use chorus_core::rpc::{self, Message, Request, Response};

use chorus_gossip::Outgoing;

use crate::server::transport::QuicTransport;

/// How long a gossip message may take to send before it is dropped (gossip repeats).
const GOSSIP_SEND_TIMEOUT: Duration = Duration::from_secs(2);

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
        let addr: SocketAddr = address
            .parse()
            .map_err(|_| PeerError::not_sent(to, format!("invalid address {address}")))?;
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

/// Sends gossip messages, each on its own task: a slow peer delays only its own message.
pub fn send_gossip(transport: &Arc<QuicTransport>, out: Vec<Outgoing>) {
    for Outgoing { to, message } in out {
        let Ok(addr) = to.parse::<SocketAddr>() else {
            tracing::warn!(%to, "gossip peer has an invalid address");
            continue;
        };
        let bytes = rpc::encode(Message::Gossip(message));
        let transport = transport.clone();
        tokio::spawn(async move {
            if let Err(e) = transport.send(addr, &bytes, GOSSIP_SEND_TIMEOUT).await {
                tracing::debug!("gossip to {addr} failed: {e}");
            }
        });
    }
}

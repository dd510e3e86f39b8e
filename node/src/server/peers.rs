//! The QUIC side of the core's `Peers` seam: requests to other nodes' replicas by name,
//! and the handler that answers theirs (replica requests, gossip).
//!
//! Must not: interpret replica requests (the core's `Replica` does) or decide retries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chorus_core::membership::Gossip;
use chorus_core::peers::{PeerError, Peers};
use chorus_core::rpc::{self, Message, Request, Response};

use crate::server::node::{send_gossip, Node};
use crate::server::transport::{self, QuicTransport};

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

/// Answers other nodes: replica requests through the core's `Replica`, gossip through the
/// membership shell.
pub struct RpcHandler {
    pub node: Arc<Node>,
}

impl transport::Handler for RpcHandler {
    async fn request(&self, from: SocketAddr, body: Vec<u8>) -> Vec<u8> {
        let response = match rpc::decode(&body) {
            Ok(Message::Request(request)) => self.node.replica.clone().handle_async(request).await,
            Ok(other) => Response::Failed(format!("expected a request, got {other:?}")),
            Err(e) => {
                tracing::warn!(%from, "{e}");
                Response::Failed(e.to_string())
            }
        };
        rpc::encode(Message::Response(response))
    }

    async fn oneway(&self, from: SocketAddr, body: Vec<u8>) {
        match rpc::decode(&body) {
            Ok(Message::Gossip(message)) => {
                let out = self.node.gossip.handle(&from.to_string(), message);
                send_gossip(&self.node.transport, out);
            }
            Ok(other) => tracing::warn!(%from, "unexpected one-way message {other:?}"),
            Err(e) => tracing::warn!(%from, "{e}"),
        }
    }
}

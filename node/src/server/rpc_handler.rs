//! The QUIC request handler: answers other nodes' replica requests through the core's
//! `Replica` and their gossip through the membership shell.
//!
//! Must not: interpret replica requests (the core's `Replica` does) or decide retries.

use std::net::SocketAddr;
use std::sync::Arc;

use chorus_core::rpc::{self, Message, Response};

use crate::server::node::Node;
use crate::server::peers::send_gossip;
use crate::server::transport;

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

//! The seam through which the protocol core reaches other nodes' replicas, and the one
//! distinction its callers need from a failed call.
//!
//! Must not: know the transport. QUIC implements it in the binary crate, the simulated
//! network in `tests/src/sim/net.rs`.

use std::future::Future;
use std::time::Duration;

use crate::rpc::{Request, Response};

/// How a call to another node failed.
///
/// The coordinator's central rule depends on telling these apart: a write that was
/// certainly not sent may be tried at another replica, but one that may have arrived must
/// not (the replica may have minted and stored it; a second replica would mint a second
/// dot for the same client write).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The request never left this node: no connection, the peer is unknown, or opening a
    /// stream failed before any byte was written. Nothing can have reached the peer.
    #[error("not sent to {peer}: {reason}")]
    NotSent { peer: String, reason: String },
    /// The request may have reached the peer, but no (valid) answer came back in time.
    #[error("no answer from {peer}: {reason}")]
    NoAnswer { peer: String, reason: String },
}

impl PeerError {
    pub fn not_sent(peer: &str, reason: impl std::fmt::Display) -> PeerError {
        PeerError::NotSent {
            peer: peer.to_string(),
            reason: reason.to_string(),
        }
    }

    pub fn no_answer(peer: &str, reason: impl std::fmt::Display) -> PeerError {
        PeerError::NoAnswer {
            peer: peer.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Whether the request certainly did not reach the peer.
    pub fn certainly_not_sent(&self) -> bool {
        matches!(self, PeerError::NotSent { .. })
    }
}

/// How a coordinator or healer reaches other nodes' replicas.
pub trait Peers: Send + Sync + 'static {
    fn call(
        &self,
        to: &str,
        request: Request,
        timeout: Duration,
    ) -> impl Future<Output = Result<Response, PeerError>> + Send;
}

//! chorus-node: everything a running chorus node does that is not placement (`chorus-ring`)
//! or membership (`chorus-gossip`): causality, storage, replication, the coordinator,
//! healing, QUIC RPC between nodes, the client HTTP API and the command-line interface.

pub mod bench;
pub mod causality;
pub mod certs;
pub mod chaos_client;
pub mod check;
pub mod cli;
pub mod client;
pub mod coordinator;
pub mod dev;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod healing;
pub mod http;
pub mod http_client;
pub mod membership;
pub mod metrics;
pub mod object;
pub mod quic_floor;
pub mod replica;
pub mod resp;
pub mod rpc;
pub mod server;
pub mod storage;
pub mod transport;

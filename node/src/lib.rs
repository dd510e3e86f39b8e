//! chorus-node: everything a running chorus node does that is not placement (`chorus-ring`)
//! or membership (`chorus-gossip`): causality, storage, replication, the coordinator,
//! QUIC RPC between nodes, the client HTTP API and the command-line interface.

pub mod bench;
pub mod causality;
pub mod certs;
pub mod cli;
pub mod client;
pub mod dev;
pub mod http_client;
pub mod server;
pub mod storage;

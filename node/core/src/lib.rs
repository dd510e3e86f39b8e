//! chorus-core: the protocol core of a chorus node — causality, objects, node-to-node
//! messages, storage, replicas, the coordinator, healing, the membership shell and metrics.
//!
//! Must not: know about HTTP, QUIC, TLS or the command line. Its dependencies exclude
//! axum, hyper, quinn, rustls, rcgen and clap (the workspace test `core_stays_free_of_io`
//! checks `cargo tree`), so the simulation builds a whole cluster from this crate alone,
//! and the `chorus` binary is a shell around it. Other nodes are reached only through the
//! [`peers::Peers`] seam; time only through tokio's clock, and the time of day (for expiry) only
//! through [`clock::WallClock`].

pub mod assembly;
pub mod batching;
pub mod bucket_props;
pub mod causality;
pub mod clock;
pub mod coordinator;
pub mod heal_error;
pub mod healing;
pub mod listing;
pub mod membership;
pub mod metrics;
pub mod object;
pub mod peers;
pub mod props_sync;
pub mod quorum;
pub mod reach;
pub mod rebuild;
pub mod replica;
pub mod request_options;
pub mod rpc;
pub mod scan;
pub mod storage;
pub mod view;

//! The `chorus` binary crate: the shell around the protocol core (`chorus-core`).
//!
//! - [`server`]: `chorus start` — wiring from a plain config, the shared [`server::node::Node`],
//!   the client HTTP API, the QUIC transport, certificates and the test-only fault layer.
//! - [`cli`]: the command line (clap definitions) and the one place exit codes are chosen.
//! - [`tools`]: what users run besides a node — the CLI client, `chorus dev`, `chorus bench`
//!   (with the QUIC floor) and the chaos workload and history checker.
//!
//! Must not: hold protocol logic (replication, causality, healing live in `chorus-core`).
//! The HTTP contract (header names, bodies, the client) lives in `chorus-api`.

pub mod cli;
pub mod server;
pub mod tools;

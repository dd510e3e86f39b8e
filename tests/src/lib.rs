//! chorus-tests: the deterministic whole-cluster simulation (`sim`) and the harness for
//! multi-process tests against real `chorus` binaries (`cluster`).

pub mod api;
pub mod cluster;
pub mod sim;

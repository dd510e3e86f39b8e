//! The chaos tools `scripts/chaos` drives: the workload that records every operation and
//! what its client was shown (`chorus chaos-client`), and the history checker
//! (`chorus check`) that judges the run from those records alone.

pub mod check;
pub mod observed;
pub mod workload;

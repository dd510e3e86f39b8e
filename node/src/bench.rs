//! `chorus bench` (being written).

use crate::cli::{CliError, CliResult};

pub fn run(_args: crate::cli::BenchArgs) -> CliResult {
    Err(CliError::usage("chorus bench is not implemented yet"))
}

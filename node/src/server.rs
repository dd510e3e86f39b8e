//! `chorus start` (being written).

use crate::cli::{CliError, CliResult, StartArgs};

pub fn run(_args: StartArgs) -> CliResult {
    Err(CliError::usage("chorus start is not implemented yet"))
}

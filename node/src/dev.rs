//! `chorus dev` (being written).

use crate::cli::{CliError, CliResult};

pub fn run(_args: crate::cli::DevArgs) -> CliResult {
    Err(CliError::usage("chorus dev is not implemented yet"))
}

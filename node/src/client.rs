//! The command-line client: put, get, delete, status, ring owners, leave, remove over HTTP (being written).

use crate::cli::{CliError, CliResult, Command};

pub fn run(command: Command) -> CliResult {
    Err(CliError::usage(format!("{command:?} is not implemented yet")))
}

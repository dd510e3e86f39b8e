//! What users run besides a node. Each tool talks to nodes only through the HTTP contract
//! (`chorus-api`), never through the core's internals, except the chaos checker's reading
//! of causal contexts for its reports and `chorus bench` joining the contexts its workers
//! were given (`Context::join`: one application's knowledge).

pub mod bench;
pub mod chaos;
pub mod client;
pub mod dev;

use crate::cli::{CertsCommand, CliError, CliResult};
use crate::server::certs;

/// `chorus certs init`: makes the cluster credential.
pub fn certs(command: CertsCommand) -> CliResult {
    match command {
        CertsCommand::Init { dir, force } => {
            certs::init(&dir, force).map_err(CliError::usage)?;
            println!(
                "cluster credential written to {}; copy this directory to every node and pass --certs {}",
                dir.display(),
                dir.display()
            );
            Ok(())
        }
    }
}

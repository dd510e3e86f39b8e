//! The `chorus` binary: parses the command line and hands each subcommand to its module.

use std::process::ExitCode;

use clap::Parser;

use chorus_node::cli::{Cli, CliError, Command, RingCommand};

/// mimalloc instead of the system allocator: glibc's malloc and free were a quarter of a
/// node's CPU samples under a put load (docs/history.md, "The write path (issue 16)").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Start(args) => chorus_node::server::run(args.config()).map_err(CliError::from),
        Command::Dev(args) => chorus_node::tools::dev::run(args),
        Command::Certs(cmd) => chorus_node::tools::certs(cmd),
        Command::Ring(RingCommand::Simulate {
            nodes,
            ring_size,
            n,
        }) => simulate_ring(&nodes, ring_size, n),
        Command::Bench(args) => chorus_node::tools::bench::run(args),
        Command::Check(args) => chorus_node::tools::chaos::check::run(args),
        Command::ChaosClient(args) => chorus_node::tools::chaos::workload::run(args),
        client_command => chorus_node::tools::client::run(client_command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError { code, message }) => {
            if !message.is_empty() {
                eprintln!("chorus: {message}");
            }
            ExitCode::from(code)
        }
    }
}

fn simulate_ring(nodes: &[usize], ring_size: u32, n: usize) -> Result<(), CliError> {
    if !ring_size.is_power_of_two() || ring_size > chorus_ring::MAX_RING_SIZE {
        return Err(CliError::usage(format!(
            "--ring-size must be a power of two up to {}, got {ring_size}",
            chorus_ring::MAX_RING_SIZE
        )));
    }
    if n == 0
        || nodes
            .iter()
            .any(|&k| k == 0 || k > chorus_ring::MAX_MEMBERS)
    {
        return Err(CliError::usage(format!(
            "--n must be at least 1 and every --nodes count in 1..={}",
            chorus_ring::MAX_MEMBERS
        )));
    }
    print!("{}", chorus_ring::analysis::report(ring_size, n, nodes));
    Ok(())
}

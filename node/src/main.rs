//! The `chorus` binary: parses the command line and hands each subcommand to its module.

use std::process::ExitCode;

use clap::Parser;

use chorus_node::cli::{Cli, CliError, Command, RingCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Start(args) => chorus_node::server::run(args),
        Command::Dev(args) => chorus_node::dev::run(args),
        Command::Certs(cmd) => chorus_node::certs::run(cmd),
        Command::Ring(RingCommand::Simulate { nodes, ring_size, n }) => {
            simulate_ring(&nodes, ring_size, n)
        }
        Command::Bench(args) => chorus_node::bench::run(args),
        client_command => chorus_node::client::run(client_command),
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
    let _ = (nodes, ring_size, n);
    Err(CliError::usage("chorus ring simulate needs the ring analysis (being written)"))
}

//! The command line: one module per verb; doc comments are the `--help`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod check;
mod run;

/// XDP NodePort forwarder: VIP:port to NodeIP:NodePort in the kernel's fast
/// path, for bare-metal Kubernetes clusters without a cloud load balancer.
#[derive(Debug, Parser)]
#[command(name = "forwarder", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Run(run::RunArgs),
    Check(check::CheckArgs),
}

impl Cli {
    /// Runs the chosen verb; errors are printed on one line.
    #[must_use]
    pub fn execute(self) -> ExitCode {
        let result = match self.command {
            Command::Run(args) => args.execute(),
            Command::Check(args) => args.execute(),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        }
    }
}

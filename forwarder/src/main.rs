use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    forwarder::cli::Cli::parse().execute()
}

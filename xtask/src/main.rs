//! `cargo xtask`: building, running and testing the forwarder.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod bpffs;
mod build;
mod cmd;
mod demo;
mod fuzz;
mod install;
mod run;
mod setup;
mod test;

/// Build, run and test the forwarder.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Setup(setup::Setup),
    Build(build::Build),
    Run(run::Run),
    Test(test::Test),
    Bench(bench::Bench),
    Fuzz(fuzz::Fuzz),
    Demo(demo::Demo),
    Install(install::Install),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Setup(cmd) => cmd.execute(),
        Command::Build(cmd) => cmd.execute(),
        Command::Run(cmd) => cmd.execute(),
        Command::Test(cmd) => cmd.execute(),
        Command::Bench(cmd) => cmd.execute(),
        Command::Fuzz(cmd) => cmd.execute(),
        Command::Demo(cmd) => cmd.execute(),
        Command::Install(cmd) => cmd.execute(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

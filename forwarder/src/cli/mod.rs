//! The command line: one module per verb; doc comments are the `--help`.

use std::{path::PathBuf, process::ExitCode};

use clap::{CommandFactory as _, Parser, Subcommand};

mod apply;
mod backend;
mod check;
mod completions;
mod down;
mod flows;
mod kube;
mod output;
mod run;
mod service;
mod stats;

/// XDP NodePort forwarder: VIP:port to NodeIP:NodePort in the kernel's fast
/// path, for bare-metal Kubernetes clusters without a cloud load balancer.
#[derive(Debug, Parser)]
#[command(name = "forwarder", version)]
pub struct Cli {
    /// Directory of the daemon's control socket and state record. Default:
    /// /run/forwarder, or /run/forwarder-netns-NAME in a network namespace
    /// `ip netns` names NAME.
    #[arg(long, global = true, value_name = "DIR", env = "FORWARDER_RUN_DIR")]
    run_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Run(run::RunArgs),
    Check(check::CheckArgs),
    #[command(subcommand)]
    Service(service::ServiceCommand),
    #[command(subcommand)]
    Backend(backend::BackendCommand),
    Apply(apply::ApplyArgs),
    Stats(stats::StatsArgs),
    Flows(flows::FlowsArgs),
    Down(down::DownArgs),
    Completions(completions::CompletionsArgs),
    #[command(subcommand)]
    Kube(kube::KubeCommand),
}

impl Cli {
    /// Parses the command line; a usage error is one line on stderr (exit
    /// 2), help and version print as usual.
    #[must_use]
    pub fn parse_or_exit() -> Self {
        match Self::try_parse() {
            Ok(cli) => cli,
            Err(err) => {
                use clap::error::ErrorKind::{
                    DisplayHelp, DisplayHelpOnMissingArgumentOrSubcommand, DisplayVersion,
                };
                if matches!(
                    err.kind(),
                    DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
                ) {
                    err.exit();
                }
                let text = err.to_string();
                eprintln!("{}", text.lines().next().unwrap_or("error: invalid arguments"));
                std::process::exit(2);
            }
        }
    }

    /// Runs the chosen verb; errors are printed on one line.
    #[must_use]
    pub fn execute(self) -> ExitCode {
        let Self { run_dir, command } = self;
        let run_dir = run_dir.unwrap_or_else(crate::host::places::default_run_dir);
        if !matches!(command, Command::Run(_)) {
            end_quietly_on_closed_pipe();
        }
        let result = match command {
            Command::Run(args) => args.execute(run_dir),
            Command::Check(args) => args.execute(),
            Command::Service(command) => command.execute(&run_dir),
            Command::Backend(command) => command.execute(&run_dir),
            Command::Apply(args) => args.execute(&run_dir),
            Command::Stats(args) => args.execute(&run_dir),
            Command::Flows(args) => args.execute(&run_dir),
            Command::Down(args) => args.execute(&run_dir),
            Command::Completions(args) => args.execute(&mut Cli::command()),
            Command::Kube(command) => command.execute(),
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

/// Lets a closed standard output end the process quietly, as it does other
/// Unix tools (`forwarder stats | head -3`): Rust ignores SIGPIPE, so each
/// print would fail and panic instead. Not for the daemon, which must
/// survive clients that go away.
fn end_quietly_on_closed_pipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: restores the default disposition before any thread is
    // started; no handler function is installed.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

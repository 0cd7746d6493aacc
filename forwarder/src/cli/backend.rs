use std::{net::SocketAddrV4, path::Path};

use clap::{Args, Subcommand};

use super::output;
use crate::{
    config::{DEFAULT_WEIGHT, check_weight, parse_backend_addr},
    control::Request,
};

/// Add, remove, re-weight or drain a service's backends on the running
/// daemon. Open connections always keep their backend.
#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    Add(AddArgs),
    Remove(Target),
    SetWeight(SetWeightArgs),
    Drain(Target),
}

/// Add a backend to a service.
#[derive(Debug, Args)]
pub struct AddArgs {
    #[command(flatten)]
    target: Target,
    /// Share of new connections, 0 to 1000 (0 drains).
    #[arg(long, default_value_t = DEFAULT_WEIGHT, value_parser = parse_weight)]
    weight: u32,
}

/// A service's backend.
#[derive(Debug, Args)]
pub struct Target {
    /// The service's name.
    service: String,
    /// The backend, NodeIP:NodePort.
    #[arg(value_parser = parse_backend_addr)]
    addr: SocketAddrV4,
    /// Change only the running daemon, not the service file.
    #[arg(long)]
    runtime_only: bool,
    /// Print what changed as JSON.
    #[arg(long)]
    json: bool,
}

/// Set a backend's weight (0 drains it).
#[derive(Debug, Args)]
pub struct SetWeightArgs {
    #[command(flatten)]
    target: Target,
    /// 0 to 1000.
    #[arg(value_parser = parse_weight)]
    weight: u32,
}

fn parse_weight(text: &str) -> Result<u32, String> {
    let weight: i64 = text.parse().map_err(|_| format!("weight {text:?} is not a number"))?;
    check_weight(weight)
}

/// What a verb does to the backend.
enum Change {
    Add(u32),
    Weight(u32),
    Remove,
}

impl BackendCommand {
    pub fn execute(self, run_dir: &Path) -> anyhow::Result<()> {
        let (target, change) = match self {
            BackendCommand::Add(AddArgs { target, weight }) => (target, Change::Add(weight)),
            BackendCommand::Remove(target) => (target, Change::Remove),
            BackendCommand::SetWeight(SetWeightArgs { target, weight }) => (target, Change::Weight(weight)),
            BackendCommand::Drain(target) => (target, Change::Weight(0)),
        };
        let Target { service, addr, runtime_only, json } = target;
        let done = match change {
            Change::Add(weight) => format!("{service}: backend {addr} added with weight {weight}"),
            Change::Weight(0) => {
                format!("{service}: backend {addr} draining: no new connections, open ones finish")
            }
            Change::Weight(weight) => format!("{service}: backend {addr} weight {weight}"),
            Change::Remove => format!("{service}: backend {addr} removed; its open connections continue"),
        };
        let persist = output::persist(runtime_only);
        let request = match change {
            Change::Add(weight) => Request::BackendAdd { service, addr, weight, persist },
            Change::Weight(weight) => Request::BackendSetWeight { service, addr, weight, persist },
            Change::Remove => Request::BackendRemove { service, addr, persist },
        };
        output::change(run_dir, &request, json, &done)
    }
}

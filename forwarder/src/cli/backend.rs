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

impl BackendCommand {
    pub fn execute(self, run_dir: &Path) -> anyhow::Result<()> {
        let (target, request, done) = match self {
            BackendCommand::Add(AddArgs { target, weight }) => {
                let done = format!("{}: backend {} added with weight {weight}", target.service, target.addr);
                let request = Request::BackendAdd {
                    service: target.service.clone(),
                    addr: target.addr,
                    weight,
                    persist: output::persist(target.runtime_only),
                };
                (target, request, done)
            }
            BackendCommand::Remove(target) => {
                let done = format!(
                    "{}: backend {} removed; its open connections continue",
                    target.service, target.addr
                );
                let request = Request::BackendRemove {
                    service: target.service.clone(),
                    addr: target.addr,
                    persist: output::persist(target.runtime_only),
                };
                (target, request, done)
            }
            BackendCommand::SetWeight(SetWeightArgs { target, weight }) => {
                let done = format!("{}: backend {} weight {weight}", target.service, target.addr);
                let request = Request::BackendSetWeight {
                    service: target.service.clone(),
                    addr: target.addr,
                    weight,
                    persist: output::persist(target.runtime_only),
                };
                (target, request, done)
            }
            BackendCommand::Drain(target) => {
                let done = format!(
                    "{}: backend {} draining: no new connections, open ones finish",
                    target.service, target.addr
                );
                let request = Request::BackendSetWeight {
                    service: target.service.clone(),
                    addr: target.addr,
                    weight: 0,
                    persist: output::persist(target.runtime_only),
                };
                (target, request, done)
            }
        };
        output::change(run_dir, &request, target.json, &done)
    }
}

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

use clap::{Args, Subcommand};

use super::output::{self, ask, print_json};
use crate::{
    config::{Mode, Protocol, parse_backend_addr},
    control::Request,
    report::ServiceView,
};

/// List, add or remove services on the running daemon.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    List(ListArgs),
    Add(AddArgs),
    Remove(RemoveArgs),
}

/// The services and their backends: weight, health, whether in rotation.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Add a service (written to the service file unless --runtime-only).
#[derive(Debug, Args)]
pub struct AddArgs {
    /// A unique name: letters, digits, '-', '_' or '.'.
    name: String,
    #[arg(long)]
    vip: Ipv4Addr,
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    #[arg(long, value_enum)]
    protocol: Protocol,
    #[arg(long, value_enum, default_value_t = Mode::Snat)]
    mode: Mode,
    /// A backend NodeIP:NodePort, at weight 1; repeat for each (at least one).
    #[arg(long = "backend", value_name = "IP:PORT", required = true, value_parser = parse_backend_addr)]
    backends: Vec<SocketAddrV4>,
    /// Change only the running daemon, not the service file.
    #[arg(long)]
    runtime_only: bool,
    #[arg(long)]
    json: bool,
}

/// Remove a service: no new connections; open ones continue.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    name: String,
    #[arg(long)]
    runtime_only: bool,
    #[arg(long)]
    json: bool,
}

impl ServiceCommand {
    pub fn execute(self, run_dir: &Path) -> anyhow::Result<()> {
        match self {
            ServiceCommand::List(ListArgs { json }) => {
                let services: Vec<ServiceView> = ask(run_dir, &Request::ServiceList)?;
                if json {
                    return print_json(&services);
                }
                let mut table = output::table(&[
                    "SERVICE",
                    "VIP:PORT",
                    "PROTO",
                    "MODE",
                    "BACKEND",
                    "WEIGHT",
                    "HEALTH",
                    "IN ROTATION",
                ]);
                for service in &services {
                    for (i, backend) in service.backends.iter().enumerate() {
                        let first = i == 0;
                        table.add_row([
                            if first { service.name.clone() } else { String::new() },
                            if first { format!("{}:{}", service.vip, service.port) } else { String::new() },
                            if first { service.protocol.to_string() } else { String::new() },
                            if first { service.mode.to_string() } else { String::new() },
                            backend.addr.to_string(),
                            backend.weight.to_string(),
                            backend.health.to_string(),
                            if backend.in_rotation { "yes" } else { "no" }.to_owned(),
                        ]);
                    }
                }
                println!("{table}");
                Ok(())
            }
            ServiceCommand::Add(AddArgs {
                name,
                vip,
                port,
                protocol,
                mode,
                backends,
                runtime_only,
                json,
            }) => {
                let done = format!("service {name} added");
                let request = Request::ServiceAdd {
                    name,
                    vip,
                    port,
                    protocol,
                    mode,
                    backends,
                    persist: output::persist(runtime_only),
                };
                output::change(run_dir, &request, json, &done)
            }
            ServiceCommand::Remove(RemoveArgs { name, runtime_only, json }) => {
                let done = format!("service {name} removed");
                output::change(
                    run_dir,
                    &Request::ServiceRemove { name, persist: output::persist(runtime_only) },
                    json,
                    &done,
                )
            }
        }
    }
}

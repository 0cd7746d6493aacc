use std::path::Path;

use clap::Args;

use super::output::{self, ask, print_json};
use crate::{control::Request, report::Flow};

/// The tracked connections (like `conntrack -L`): client -> VIP as the
/// client sends it, source -> backend as the node sees it, state, age and
/// idle time. XDP-forwarded packets never reach tcpdump on the forwarder;
/// this is how to see them.
#[derive(Debug, Args)]
pub struct FlowsArgs {
    /// Only this service's connections.
    #[arg(long)]
    service: Option<String>,
    #[arg(long)]
    json: bool,
}

impl FlowsArgs {
    pub fn execute(self, run_dir: &Path) -> anyhow::Result<()> {
        let Self { service, json } = self;
        let flows: Vec<Flow> = ask(run_dir, &Request::Flows { service })?;
        if json {
            return print_json(&flows);
        }
        let mut table = output::table(&[
            "SERVICE", "PROTO", "CLIENT", "VIP", "SOURCE", "BACKEND", "STATE", "AGE", "IDLE",
        ]);
        for flow in &flows {
            table.add_row([
                flow.service.clone(),
                flow.protocol.to_string(),
                flow.client.to_string(),
                flow.vip.to_string(),
                flow.source.to_string(),
                flow.backend.to_string(),
                flow.state.clone(),
                format!("{:.0}s", flow.age_secs),
                format!("{:.0}s", flow.idle_secs),
            ]);
        }
        println!("{table}");
        println!("{} connections", flows.len());
        Ok(())
    }
}

use std::path::Path;

use clap::Args;

use super::output::{self, ask, print_json, si};
use crate::{
    control::Request,
    report::{Rates, Stats, Traffic},
};

/// Traffic per service and backend (like `ipvsadm -Ln --stats --rate`):
/// totals, rates over the daemon's last sampling interval, tracked
/// connections, health; then packets by what the datapath did with them.
#[derive(Debug, Args)]
pub struct StatsArgs {
    #[arg(long)]
    json: bool,
}

impl StatsArgs {
    pub fn execute(self, run_dir: &Path) -> anyhow::Result<()> {
        let Self { json } = self;
        let stats: Stats = ask(run_dir, &Request::Stats)?;
        if json {
            return print_json(&stats);
        }
        let mut table = output::table(&[
            "SERVICE / BACKEND",
            "HEALTH",
            "WEIGHT",
            "CONNS",
            "NEW",
            "PKTS IN",
            "PKTS OUT",
            "BYTES IN",
            "BYTES OUT",
            "PPS IN",
            "PPS OUT",
            "BPS IN",
            "BPS OUT",
            "NEW/S",
        ]);
        for service in &stats.services {
            let name = format!(
                "{} {}:{}/{} {}",
                service.name, service.vip, service.port, service.protocol, service.mode
            );
            table.add_row(row(
                name,
                String::new(),
                String::new(),
                service.active_flows,
                &service.totals,
                &service.rates,
            ));
            for backend in &service.backends {
                let rotation = if backend.in_rotation { "" } else { " (out)" };
                table.add_row(row(
                    format!("  -> {}{rotation}", backend.addr),
                    backend.health.to_string(),
                    backend.weight.to_string(),
                    backend.active_flows,
                    &backend.totals,
                    &backend.rates,
                ));
            }
        }
        println!("{table}");
        println!(
            "\n{} tracked connections, {} of them half-open (as of {:.0}s ago); rates over the last {:.1}s",
            stats.connections, stats.half_open, stats.flows_age_secs, stats.rate_interval_secs
        );
        if !stats.snat.is_empty() {
            let mut snat = output::table(&["SNAT ADDRESS", "PROTO", "CONNECTIONS", "PORTS TO BUSIEST NODE"]);
            for space in &stats.snat {
                snat.add_row([
                    space.address.to_string(),
                    space.protocol.to_string(),
                    space.connections.to_string(),
                    format!("{} of {}", space.busiest_node_ports, space.ports_per_node),
                ]);
            }
            println!("\n{snat}");
        }
        let mut reasons = output::table(&["DATAPATH", "PACKETS"]);
        for reason in stats.reasons.iter().filter(|r| r.packets > 0) {
            reasons.add_row([reason.reason.clone(), reason.packets.to_string()]);
        }
        println!("\n{reasons}");
        Ok(())
    }
}

/// One line of the table: what, health, weight, then the traffic columns.
fn row(
    what: String,
    health: String,
    weight: String,
    connections: u64,
    t: &Traffic,
    r: &Rates,
) -> Vec<String> {
    let mut cells = vec![what, health, weight, connections.to_string()];
    cells.extend([t.new_flows, t.packets_in, t.packets_out, t.bytes_in, t.bytes_out].map(|v| si(v as f64)));
    cells.extend([r.packets_in, r.packets_out, r.bits_in, r.bits_out, r.new_flows].map(si));
    cells
}

use std::path::Path;

use clap::Args;

use super::output::{self, ask, print_json, si};
use crate::{control::Request, report::Stats};

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
            let t = &service.totals;
            let r = &service.rates;
            table.add_row([
                format!(
                    "{} {}:{}/{} {}",
                    service.name, service.vip, service.port, service.protocol, service.mode
                ),
                String::new(),
                String::new(),
                service.active_flows.to_string(),
                si(t.new_flows as f64),
                si(t.packets_in as f64),
                si(t.packets_out as f64),
                si(t.bytes_in as f64),
                si(t.bytes_out as f64),
                si(r.packets_in),
                si(r.packets_out),
                si(r.bits_in),
                si(r.bits_out),
                si(r.new_flows),
            ]);
            for backend in &service.backends {
                let t = &backend.totals;
                let r = &backend.rates;
                let rotation = if backend.in_rotation { "" } else { " (out)" };
                table.add_row([
                    format!("  -> {}{rotation}", backend.addr),
                    backend.health.to_string(),
                    backend.weight.to_string(),
                    backend.active_flows.to_string(),
                    si(t.new_flows as f64),
                    si(t.packets_in as f64),
                    si(t.packets_out as f64),
                    si(t.bytes_in as f64),
                    si(t.bytes_out as f64),
                    si(r.packets_in),
                    si(r.packets_out),
                    si(r.bits_in),
                    si(r.bits_out),
                    si(r.new_flows),
                ]);
            }
        }
        println!("{table}");
        println!(
            "\n{} tracked connections (as of {:.0}s ago); rates over the last {:.1}s",
            stats.connections, stats.flows_age_secs, stats.rate_interval_secs
        );
        let mut reasons = output::table(&["DATAPATH", "PACKETS"]);
        for reason in stats.reasons.iter().filter(|r| r.packets > 0) {
            reasons.add_row([reason.reason.clone(), reason.packets.to_string()]);
        }
        println!("\n{reasons}");
        Ok(())
    }
}

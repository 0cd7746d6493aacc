use std::{net::Ipv4Addr, path::PathBuf};

use clap::Args;
use forwarder_common::maps::{DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FLOW_ENTRIES, DEFAULT_MAX_SERVICES};

use crate::{
    daemon::{self, RunConfig},
    kernel::{AttachMode, Capacity},
};

/// Load the datapath, attach it to the interfaces and forward the services
/// of the service file, in the foreground until SIGINT or SIGTERM; then
/// detach and restore what was changed.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interface to attach to; repeat for each (e.g. the client side and
    /// the node side).
    #[arg(long = "iface", value_name = "IFACE", required = true)]
    ifaces: Vec<String>,
    /// The service file.
    #[arg(long, value_name = "FILE", default_value = "/etc/forwarder/services.toml")]
    services: PathBuf,
    /// Source address of snat-mode flows, when the service file sets no
    /// snat_ip (default: the address of the interface towards each backend).
    #[arg(long, value_name = "IPV4")]
    snat_ip: Option<Ipv4Addr>,
    /// XDP attach mode; native falls back to skb (generic) with a warning.
    #[arg(long, value_enum, default_value_t = AttachMode::Native)]
    xdp_mode: AttachMode,
    /// Capacity of the service table.
    #[arg(long, default_value_t = DEFAULT_MAX_SERVICES, value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
    max_services: u32,
    /// Capacity of the backend table (all services together).
    #[arg(long, default_value_t = DEFAULT_MAX_BACKENDS, value_parser = clap::value_parser!(u32).range(1..=1 << 22))]
    max_backends: u32,
    /// Capacity of the connection table (least recently used connections
    /// are evicted beyond it).
    #[arg(long, default_value_t = DEFAULT_MAX_FLOW_ENTRIES / 2, value_parser = clap::value_parser!(u32).range(1..=1 << 26))]
    max_connections: u32,
    /// Do not add managed neighbour entries for backends and gateways; the
    /// first packets towards an unresolved next hop then take the slower
    /// TC path.
    #[arg(long)]
    no_neighbour_prefetch: bool,
}

impl RunArgs {
    pub fn execute(self) -> anyhow::Result<()> {
        let Self {
            ifaces,
            services,
            snat_ip,
            xdp_mode,
            max_services,
            max_backends,
            max_connections,
            no_neighbour_prefetch,
        } = self;
        crate::logging::init();
        let config = RunConfig {
            ifaces,
            services,
            snat_ip,
            xdp_mode,
            capacity: Capacity {
                max_services,
                max_backends,
                max_flow_entries: max_connections.saturating_mul(2),
            },
            prefetch_neighbours: !no_neighbour_prefetch,
        };
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(daemon::run(config))
    }
}

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use clap::Args;
use forwarder_common::maps::{
    DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FLOW_ENTRIES, DEFAULT_MAX_HALF_OPEN_ENTRIES, DEFAULT_MAX_SERVICES,
    DEFAULT_MAX_TABLES,
};

use crate::{
    daemon::{self, RunConfig},
    kernel::{AttachChoice, Capacity, XdpMode},
};

/// Load the datapath, attach it to the interfaces and forward the services
/// of the service file, in the foreground. SIGHUP (or a change of the file)
/// reloads it; SIGTERM or SIGINT stop (detach, restore what was changed;
/// the connection table stays pinned for the next start); SIGUSR2 exits
/// leaving the datapath forwarding, for a new daemon to adopt with no gap
/// (restarts and upgrades). A daemon starting where an earlier one left
/// its state adopts it: open connections continue.
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
    /// snat_ip (default: the address of the interface towards each
    /// backend); repeat to spread new connections over several (each
    /// carries 31,744 connections per node and protocol).
    #[arg(long, value_name = "IPV4")]
    snat_ip: Vec<Ipv4Addr>,
    /// Which hook runs the datapath: auto picks XDP on interfaces with a
    /// driver that has native XDP, TC on virtual ones (veth, tap, bridge,
    /// bond: their senders may hand over partial checksums that XDP cannot
    /// complete) and where native XDP fails; it logs what it chose and why.
    #[arg(long, value_enum, default_value_t = AttachChoice::Auto)]
    attach: AttachChoice,
    /// XDP attach mode, where XDP runs; native falls back to skb (generic)
    /// with a warning.
    #[arg(long, value_enum, default_value_t = XdpMode::Native)]
    xdp_mode: XdpMode,
    /// Capacity of the service table.
    #[arg(long, default_value_t = DEFAULT_MAX_SERVICES, value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
    max_services: u32,
    /// Capacity of the backend table (all services together).
    #[arg(long, default_value_t = DEFAULT_MAX_BACKENDS, value_parser = clap::value_parser!(u32).range(1..=1 << 22))]
    max_backends: u32,
    /// Capacity of the Maglev table store: services whose backends are on
    /// the same nodes with the same weights share one table.
    #[arg(long, default_value_t = DEFAULT_MAX_TABLES, value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
    max_tables: u32,
    /// Capacity of the connection table (least recently used connections
    /// are evicted beyond it).
    #[arg(long, default_value_t = DEFAULT_MAX_FLOW_ENTRIES / 2, value_parser = clap::value_parser!(u32).range(1..=1 << 26))]
    max_connections: u32,
    /// Capacity of the half-open table: connections not answered yet (TCP
    /// until the node sends a segment after the client's ACK, UDP until
    /// the node replies) wait there, apart from established ones, so a
    /// flood of spoofed SYNs evicts only its like. Each possible CPU gets
    /// an equal share, in which it opens and evicts its connections.
    #[arg(long, default_value_t = DEFAULT_MAX_HALF_OPEN_ENTRIES, value_parser = clap::value_parser!(u32).range(1..=1 << 26))]
    max_half_open: u32,
    /// Do not add managed neighbour entries for backends and gateways; the
    /// first packets towards an unresolved next hop then take the slower
    /// TC path.
    #[arg(long)]
    no_neighbour_prefetch: bool,
    /// bpffs directory for the pinned maps and links (mounted if needed).
    /// Default: /sys/fs/bpf/forwarder, or /sys/fs/bpf/forwarder-netns-NAME
    /// in a namespace `ip netns` names NAME (under `ip netns exec`, in the
    /// bpffs of the mount namespace it was started from, so that the pins
    /// outlive the command).
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9405", conflicts_with = "no_metrics")]
    metrics: SocketAddr,
    /// Serve no metrics.
    #[arg(long)]
    no_metrics: bool,
    /// Add every VIP to this interface so the host answers ARP for it (flat
    /// layer-2 networks); removed on stop.
    #[arg(long, value_name = "IFACE")]
    announce: Option<String>,
    /// Do not reload when the service file changes (SIGHUP still does).
    #[arg(long)]
    no_watch: bool,
    /// Let the kernel route packets the datapath does not translate (the
    /// host stays a router on these interfaces, as for nodes that use the
    /// forwarder as their default gateway). Default: such packets are
    /// dropped and counted (drop_not_translated), unless they are for this
    /// host or the kernel answers them itself.
    #[arg(long)]
    route_other: bool,
}

impl RunArgs {
    pub fn execute(self, run_dir: PathBuf) -> anyhow::Result<()> {
        let Self {
            ifaces,
            services,
            snat_ip,
            attach,
            xdp_mode,
            max_services,
            max_backends,
            max_tables,
            max_connections,
            max_half_open,
            no_neighbour_prefetch,
            pin_dir,
            metrics,
            no_metrics,
            announce,
            no_watch,
            route_other,
        } = self;
        crate::config::check_snat_ips(&snat_ip).map_err(|message| anyhow::anyhow!("--snat-ip: {message}"))?;
        crate::logging::init();
        let config = RunConfig {
            ifaces,
            services,
            snat_ip,
            attach,
            xdp_mode,
            capacity: Capacity {
                max_services,
                max_backends,
                max_tables,
                max_flow_entries: max_connections.saturating_mul(2),
                max_half_open_entries: max_half_open,
            },
            prefetch_neighbours: !no_neighbour_prefetch,
            pin_dir,
            run_dir,
            metrics: (!no_metrics).then_some(metrics),
            announce,
            watch: !no_watch,
            route_other,
        };
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(daemon::run(config))
    }
}

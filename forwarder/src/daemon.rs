//! `forwarder run`: load, attach, serve the service file, stop cleanly.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    config::ServiceFile,
    kernel::{self, AttachMode, Capacity, Kernel},
    neigh::{Neighbours, NextHop},
    state::Table,
};

/// How often managed neighbour entries are checked and re-added.
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(30);

/// Everything `run` needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub ifaces: Vec<String>,
    pub services: PathBuf,
    pub snat_ip: Option<Ipv4Addr>,
    pub xdp_mode: AttachMode,
    pub capacity: Capacity,
    /// Add managed neighbour entries for backends' and gateways' next hops.
    pub prefetch_neighbours: bool,
}

/// Runs in the foreground until SIGINT or SIGTERM, then detaches.
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    let RunConfig { ifaces, services, snat_ip, xdp_mode, capacity, prefetch_neighbours } = config;
    // Everything that can be checked is checked before the system changes.
    let file = ServiceFile::load(&services)?;
    let ifindexes = ifaces.iter().map(|iface| kernel::ifindex(iface)).collect::<Result<Vec<_>, _>>()?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;

    let _forwarding = Forwarding::enable(&ifaces)?;
    let mut kernel = Kernel::load(capacity, datapath_log_level()).map_err(|err| {
        let hint =
            if unsafe { libc::geteuid() } != 0 { " (needs root, or CAP_BPF and CAP_NET_ADMIN)" } else { "" };
        anyhow::anyhow!("{err}{hint}")
    })?;
    let mut table = Table::new(capacity, snat_ip);
    let summary = table.apply(&file, &mut kernel.maps).context("applying the service file")?;
    info!(file = %services.display(), services = summary.added.len(), "service table loaded");
    for iface in &ifaces {
        kernel.attach(iface, xdp_mode)?;
    }

    let mut neighbours = if prefetch_neighbours { Some(Neighbours::connect()?) } else { None };
    let mut refresh = tokio::time::interval(NEIGHBOUR_REFRESH);
    info!(interfaces = ?ifaces, "forwarding; SIGINT or SIGTERM stops");
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => reload(&services, &mut table, &mut kernel),
            _ = refresh.tick() => {
                if let Some(neighbours) = neighbours.as_mut() {
                    prefetch(neighbours, &table, &ifindexes).await;
                }
            }
        }
    }
    info!("stopping");
    if let Some(neighbours) = neighbours.as_mut() {
        neighbours.remove_added().await;
    }
    drop(kernel);
    info!("detached");
    Ok(())
}

/// Re-reads the service file and applies the difference; an invalid file
/// leaves everything as it was.
fn reload(path: &Path, table: &mut Table, kernel: &mut Kernel) {
    let file = match ServiceFile::load(path) {
        Ok(file) => file,
        Err(err) => {
            warn!("reload rejected, configuration unchanged: {err}");
            return;
        }
    };
    match table.apply(&file, &mut kernel.maps) {
        Ok(summary) if summary.is_empty() => info!("reloaded: no change"),
        Ok(summary) => {
            info!(added = ?summary.added, changed = ?summary.changed, removed = ?summary.removed, "reloaded")
        }
        Err(err) => warn!("reload failed, configuration unchanged: {err}"),
    }
}

/// Adds managed neighbour entries for every backend's next hop and every
/// gateway of the attached interfaces.
async fn prefetch(neighbours: &mut Neighbours, table: &Table, ifindexes: &[u32]) {
    let mut hops: Vec<NextHop> = Vec::new();
    for service in table.services().values() {
        for backend in &service.backends {
            match neighbours.next_hop(*backend.spec.addr.ip()).await {
                Ok(Some(hop)) => hops.push(hop),
                Ok(None) => warn!(backend = %backend.spec.addr, "no route to backend"),
                Err(err) => warn!(backend = %backend.spec.addr, "route lookup: {err}"),
            }
        }
    }
    match neighbours.gateways(ifindexes).await {
        Ok(gateways) => hops.extend(gateways),
        Err(err) => warn!("listing gateways: {err}"),
    }
    hops.sort();
    hops.dedup();
    neighbours.ensure(hops).await;
}

/// Log level of the datapath's own records, following the daemon's.
fn datapath_log_level() -> aya_log::Level {
    if tracing::enabled!(tracing::Level::DEBUG) { aya_log::Level::Debug } else { aya_log::Level::Info }
}

/// IPv4 forwarding on the attached interfaces, which `bpf_fib_lookup`
/// requires; enabled where it was off and restored on drop.
struct Forwarding {
    restore: Vec<PathBuf>,
}

impl Forwarding {
    fn enable(ifaces: &[String]) -> anyhow::Result<Self> {
        let mut guard = Self { restore: Vec::new() };
        for iface in ifaces {
            let path = Path::new("/proc/sys/net/ipv4/conf").join(iface).join("forwarding");
            let current =
                std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            if current.trim() == "0" {
                std::fs::write(&path, "1")
                    .with_context(|| format!("enabling forwarding: {}", path.display()))?;
                warn!(%iface, "enabled IPv4 forwarding (the XDP route lookup needs it); restored on stop");
                guard.restore.push(path);
            }
        }
        Ok(guard)
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        for path in &self.restore {
            if let Err(err) = std::fs::write(path, "0") {
                warn!("restoring {}: {err}", path.display());
            }
        }
    }
}

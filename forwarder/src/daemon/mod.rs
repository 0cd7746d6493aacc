//! `forwarder run`: the long-lived daemon.
//!
//! One task owns all state (kernel maps, service table, health, host
//! changes) and handles, in turn: signals, control requests, service file
//! changes, health transitions and timers. Nothing else writes the maps, so
//! every change is applied whole or not at all ([`change`]).
//!
//! This file is the order of things (and longer than most for it, so the
//! whole order reads in one place): what is checked before the host is
//! touched, what a start changes and in which order, how a failed start
//! puts back only what it changed itself, the event loop, and the exits.
//! SIGTERM or SIGINT stop (detach; pinned maps stay so the next daemon
//! resumes the surviving connections); SIGUSR2 hands over (exit leaving the
//! datapath attached, for a successor to adopt with no gap, as after a
//! crash); `forwarder down` removes everything.

mod change;
mod health;
mod limits;
mod metrics;
mod requests;
mod server;
mod stats;
mod watch;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use forwarder_common::maps::LAYOUT_VERSION;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch as watch_channel},
};
use tracing::info;

use self::{
    health::Checks,
    server::Call,
    stats::{Sample, Sampler},
};
use crate::{
    config::ServiceFile,
    conntrack::sweep::{self, Sweep},
    host::{Neighbours, PinDir, Record, RunDir, Sysctls, UnreachableVips, Vips},
    kernel::{self, AttachChoice, Capacity, Kernel, Pins, Plan, XdpMode},
    state::ServiceTable,
};

/// How often managed neighbour entries are checked and re-added.
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(30);
/// How often counters are sampled for rates.
const RATE_INTERVAL: Duration = Duration::from_secs(5);
/// File events closer together than this make one reload.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Everything `run` needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub ifaces: Vec<String>,
    pub services: PathBuf,
    pub snat_ip: Vec<Ipv4Addr>,
    pub attach: AttachChoice,
    pub xdp_mode: XdpMode,
    pub capacity: Capacity,
    /// Add managed neighbour entries for backends' and gateways' next hops.
    pub prefetch_neighbours: bool,
    /// bpffs directory for pins; `None`: this network namespace's default
    /// (see [`crate::host::places`]).
    pub pin_dir: Option<PathBuf>,
    pub run_dir: PathBuf,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Interface to add the VIPs to, if any.
    pub announce: Option<String>,
    /// Reload when the service file changes.
    pub watch: bool,
    /// Let the kernel route what the datapath does not translate.
    pub route_other: bool,
}

enum Exit {
    Stop,
    HandOver,
}

/// What the daemon changes on the host (see [`crate::host`]).
struct Host {
    sysctls: Sysctls,
    neighbours: Option<Neighbours>,
    vips: Option<Vips>,
    unreachable: UnreachableVips,
    run_dir: RunDir,
}

/// Runs in the foreground until SIGINT, SIGTERM or SIGUSR2.
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    let RunConfig {
        ifaces,
        services,
        snat_ip,
        attach,
        xdp_mode,
        capacity,
        prefetch_neighbours,
        pin_dir,
        run_dir: run_path,
        metrics,
        announce,
        watch,
        route_other,
    } = config;
    // Everything that can be checked is checked before the host changes.
    let file = ServiceFile::load(&services)?;
    let ifindexes = ifaces.iter().map(|iface| kernel::ifindex(iface)).collect::<Result<Vec<_>, _>>()?;
    let announce = announce.map(|iface| kernel::ifindex(&iface).map(|index| (iface, index))).transpose()?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigusr2 = signal(SignalKind::user_defined2())?;

    let (run_dir, listener) = RunDir::claim(&run_path)?;
    let previous = Record::load(&run_path)?.unwrap_or_default();
    let pin_dir = match &pin_dir {
        Some(dir) => PinDir::at(dir)?,
        None => PinDir::default(&crate::host::places::state_name())?,
    };
    let pins = Pins::open(&pin_dir.path)?;
    let kernel = Kernel::load(capacity, datapath_log_level(), Some(pins.clone())).map_err(|err| {
        let hint = if nix::unistd::geteuid().is_root() {
            ""
        } else {
            " (needs root, or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)"
        };
        anyhow::anyhow!("{err}{hint}")
    })?;
    let adopted = kernel.adopted();
    let table = if adopted && previous.layout == LAYOUT_VERSION {
        ServiceTable::adopt(capacity, snat_ip, previous.services.clone())?
    } else {
        ServiceTable::new(capacity, snat_ip)?
    };
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    let mut plans = Vec::new();
    for (iface, index) in ifaces.iter().zip(&ifindexes) {
        let behind = crate::host::interfaces::behind(&handle, *index)
            .await
            .with_context(|| format!("asking what kind of link {iface} is"))?;
        plans.push((iface.clone(), crate::host::interfaces::plan(iface, &behind, attach, xdp_mode)));
    }
    let (health_events, mut transitions) = mpsc::channel(64);
    let host = Host {
        sysctls: Sysctls::new(previous.forwarding.clone()),
        neighbours: prefetch_neighbours.then(|| Neighbours::new(handle.clone(), previous.neighbours.clone())),
        vips: announce.map(|(iface, index)| {
            let inherited: Vec<Ipv4Addr> =
                previous.announced.iter().filter(|(i, _)| *i == iface).map(|(_, a)| *a).collect();
            Vips::new(handle.clone(), iface, index, inherited)
        }),
        unreachable: UnreachableVips::new(handle.clone(), previous.unreachable.clone()),
        run_dir,
    };
    let mut daemon = Daemon {
        services_path: services.clone(),
        desired: file.clone(),
        kernel,
        table,
        checks: Checks::new(health_events),
        host,
        pins,
        pin_dir,
        ifindexes,
        sampler: Sampler::default(),
        sweep: watch_channel::channel(Arc::new(Sweep::default())).1,
    };
    let (calls, mut requests) = mpsc::channel::<Call>(64);
    let (file_events, mut file_changes) = mpsc::channel(1);
    // The servers first: binding them can fail (a port in use) before
    // anything on the host has changed. Requests wait for the loop.
    let served = daemon.serve(listener, &calls, metrics, watch.then_some(file_events)).await;
    let migrate = adopted && previous.version == 0;
    let started = match served {
        Ok(watcher) => daemon.start(file, &plans, adopted, migrate, route_other).await.map(|()| watcher),
        Err(err) => Err(err),
    };
    let _watcher = match started {
        Ok(watcher) => watcher,
        Err(err) => {
            daemon.abort().await;
            return Err(err);
        }
    };
    info!(
        file = %services.display(),
        services = daemon.desired.services.len(),
        adopted,
        "service table loaded"
    );

    let mut neighbour_refresh = tokio::time::interval(NEIGHBOUR_REFRESH);
    neighbour_refresh.reset();
    let mut sampling = tokio::time::interval(RATE_INTERVAL);
    info!(interfaces = ?ifaces, "forwarding; SIGTERM or SIGINT stops, SIGUSR2 hands over, SIGHUP reloads");
    let exit = loop {
        tokio::select! {
            _ = sigterm.recv() => break Exit::Stop,
            _ = sigint.recv() => break Exit::Stop,
            _ = sigusr2.recv() => break Exit::HandOver,
            _ = sighup.recv() => daemon.reload("SIGHUP").await,
            Some(()) = file_changes.recv() => {
                tokio::time::sleep(DEBOUNCE).await;
                while file_changes.try_recv().is_ok() {}
                daemon.reload("file change").await;
            }
            Some((request, reply)) = requests.recv() => daemon.handle(request, reply).await,
            Some(transition) = transitions.recv() => {
                let mut batch = vec![transition];
                while let Ok(more) = transitions.try_recv() {
                    batch.push(more);
                }
                daemon.on_health(batch).await;
            }
            _ = neighbour_refresh.tick() => daemon.prefetch().await,
            _ = sampling.tick() => daemon.tick(),
        }
    };
    daemon.exit(exit).await;
    Ok(())
}

struct Daemon {
    services_path: PathBuf,
    /// What runs: the service file plus runtime-only changes, with
    /// configured weights (health is applied on top).
    desired: ServiceFile,
    kernel: Kernel,
    table: ServiceTable,
    checks: Checks,
    host: Host,
    pins: Pins,
    /// Where the pins are; holds the handle their path may go through.
    pin_dir: PinDir,
    ifindexes: Vec<u32>,
    sampler: Sampler,
    sweep: watch_channel::Receiver<Arc<Sweep>>,
}

impl Daemon {
    /// The start, in order: the host's ports checked, forwarding sysctls,
    /// the links (adopted ones now run this program, on the same maps),
    /// the service table, neighbours; then the record. Links come before
    /// the table so that no entry this program's datapath reads
    /// differently (source limits) is ever served by a predecessor's.
    async fn start(
        &mut self,
        file: ServiceFile,
        plans: &[(String, Plan)],
        adopted: bool,
        migrate: bool,
        route_other: bool,
    ) -> anyhow::Result<()> {
        if file.services.iter().any(|s| s.mode == crate::config::Mode::Snat) {
            crate::host::ports::check_snat_range()?;
        }
        let ifaces: Vec<String> = plans.iter().map(|(iface, _)| iface.clone()).collect();
        self.host.sysctls.enable_forwarding(&ifaces)?;
        for (iface, plan) in plans {
            self.kernel.attach(iface, *plan)?;
        }
        if migrate {
            let marked = crate::conntrack::mark_handshakes_done(&mut self.kernel.maps.flows);
            info!(marked, "connections of the previous release marked established");
        }
        self.apply(file).await.context("applying the service file")?;
        if adopted {
            self.table.prune(&mut self.kernel.maps)?;
        }
        self.kernel.finish()?;
        // Last, so a start that fails leaves a predecessor's setting.
        self.kernel.route_other(route_other)?;
        self.prefetch().await;
        self.save();
        Ok(())
    }

    /// The servers: control socket, metrics, file watcher, sweeper.
    async fn serve(
        &mut self,
        listener: tokio::net::UnixListener,
        calls: &mpsc::Sender<Call>,
        metrics: Option<SocketAddr>,
        file_events: Option<mpsc::Sender<()>>,
    ) -> anyhow::Result<Option<notify::RecommendedWatcher>> {
        server::spawn(listener, calls.clone());
        if let Some(addr) = metrics {
            metrics::spawn(addr, calls.clone()).await.with_context(|| format!("metrics on {addr}"))?;
        }
        let watcher = file_events.map(|events| watch::watch(&self.services_path, events)).transpose()?;
        self.sweep = sweep::spawn(&self.pins)?;
        Ok(watcher)
    }

    /// Puts back what a failed start changed itself: its own links, sysctls,
    /// neighbours and VIPs. What it adopted from a predecessor stays, so a
    /// datapath that was forwarding before this start still is.
    async fn abort(self) {
        let Self { kernel, mut checks, host, .. } = self;
        checks.stop();
        let Host { mut sysctls, neighbours, vips, mut unreachable, run_dir } = host;
        if let Some(mut neighbours) = neighbours {
            neighbours.undo_own().await;
        }
        if let Some(mut vips) = vips {
            vips.undo_own().await;
        }
        unreachable.undo_own().await;
        kernel.abort();
        sysctls.undo_own();
        run_dir.release();
    }

    /// Adds managed neighbour entries for every backend's next hop and every
    /// gateway of the attached interfaces.
    async fn prefetch(&mut self) {
        let Some(neighbours) = self.host.neighbours.as_mut() else { return };
        if neighbours.prefetch(&self.desired, &self.ifindexes).await {
            self.save();
        }
    }

    /// Periodic work: a counter sample for rates, and deleting what no
    /// packet can reference any more.
    fn tick(&mut self) {
        self.sampler.push(Sample::take(&self.kernel.maps, &self.table));
        if let Err(err) = self.table.retire(&mut self.kernel.maps) {
            tracing::warn!("retiring unused map entries: {err}");
        }
    }

    fn save(&self) {
        let Host { sysctls, neighbours, vips, unreachable, run_dir } = &self.host;
        let record = Record {
            layout: LAYOUT_VERSION,
            pin_dir: self.pin_dir.shown.clone(),
            services: self.table.services().values().cloned().collect(),
            neighbours: neighbours.as_ref().map(Neighbours::owned).unwrap_or_default(),
            announced: vips.as_ref().map(Vips::owned).unwrap_or_default(),
            forwarding: sysctls.owned(),
            unreachable: unreachable.owned(),
            ..Record::default()
        };
        if let Err(err) = run_dir.save(&record) {
            tracing::warn!("saving the state record: {err}");
        }
    }

    async fn exit(mut self, exit: Exit) {
        self.checks.stop();
        match exit {
            Exit::Stop => {
                info!("stopping");
                if let Some(neighbours) = self.host.neighbours.as_mut() {
                    neighbours.undo().await;
                }
                if let Some(vips) = self.host.vips.as_mut() {
                    vips.undo().await;
                }
                self.host.unreachable.undo().await;
                // Detached first: the datapath's route lookups need forwarding on.
                self.kernel.detach_all();
                self.host.sysctls.undo();
                self.save();
                let Self { host, .. } = self;
                host.run_dir.release();
                info!(
                    "detached; the connection table stays pinned for the next start (`forwarder down` removes it)"
                );
            }
            Exit::HandOver => {
                self.save();
                let Self { kernel, host, .. } = self;
                kernel.hand_over();
                host.run_dir.release();
                info!("handed over: the datapath keeps forwarding until the next daemon adopts it");
            }
        }
    }
}

/// Log level of the datapath's own records, following the daemon's.
fn datapath_log_level() -> aya_log::Level {
    if tracing::enabled!(tracing::Level::DEBUG) { aya_log::Level::Debug } else { aya_log::Level::Info }
}

//! `forwarder run`: the long-lived daemon.
//!
//! One task owns all state (kernel maps, service table, health, record) and
//! handles, in turn: signals, control requests, service file changes,
//! health transitions and timers. Nothing else writes the maps, so every
//! change is applied whole or not at all.
//!
//! Exits: SIGTERM or SIGINT stop (detach; pinned maps stay so the next
//! daemon resumes the surviving connections); SIGUSR2 hands over (exit
//! leaving the datapath attached, for a successor to adopt with no gap, as
//! after a crash); `forwarder down` removes everything.

mod announce;
mod forwarding;
mod health;
mod metrics;
mod record;
mod server;
mod stats;
mod sweep;
mod watch;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use forwarder_common::maps::{LAYOUT_VERSION, names};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot, watch as watch_channel},
};
use tracing::{debug, info, warn};

pub use self::record::{daemon_running, load as load_record, remove as remove_record};
use self::{
    announce::Announcer,
    forwarding::Forwarding,
    health::{Checks, Transition},
    record::{Record, RunDir},
    server::Call,
    stats::{Sample, Sampler},
    sweep::Sweep,
};
use crate::{
    config::{
        ServiceFile,
        edit::{Editor, write_atomically},
    },
    control::{Persist, Request, Response},
    kernel::{self, AttachMode, Capacity, Kernel, Pins},
    neigh::{Neighbours, NextHop},
    report::Flow,
    state::{ApplyError, Summary, Table},
};

pub use self::{announce::remove as withdraw_vip, forwarding::restore as restore_forwarding};

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
    pub snat_ip: Option<Ipv4Addr>,
    pub xdp_mode: AttachMode,
    pub capacity: Capacity,
    /// Add managed neighbour entries for backends' and gateways' next hops.
    pub prefetch_neighbours: bool,
    pub pin_dir: PathBuf,
    pub run_dir: PathBuf,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Interface to add the VIPs to, if any.
    pub announce: Option<String>,
    /// Reload when the service file changes.
    pub watch: bool,
}

enum Exit {
    Stop,
    HandOver,
}

/// Runs in the foreground until SIGINT, SIGTERM or SIGUSR2.
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    let RunConfig {
        ifaces,
        services,
        snat_ip,
        xdp_mode,
        capacity,
        prefetch_neighbours,
        pin_dir,
        run_dir: run_path,
        metrics,
        announce,
        watch,
    } = config;
    // Everything that can be checked is checked before the system changes.
    let file = ServiceFile::load(&services)?;
    let ifindexes = ifaces.iter().map(|iface| kernel::ifindex(iface)).collect::<Result<Vec<_>, _>>()?;
    let announce = announce.map(|iface| kernel::ifindex(&iface).map(|index| (iface, index))).transpose()?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigusr2 = signal(SignalKind::user_defined2())?;

    let (run_dir, listener) = RunDir::claim(&run_path)?;
    let previous = record::load(&run_path)?.unwrap_or_default();
    let pins = Pins::open(&pin_dir)?;
    let forwarding = Forwarding::enable(&ifaces, previous.forwarding.clone())?;
    let kernel = Kernel::load(capacity, datapath_log_level(), Some(pins.clone())).map_err(|err| {
        // SAFETY: geteuid has no preconditions.
        let hint = if unsafe { libc::geteuid() } != 0 {
            " (needs root, or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)"
        } else {
            ""
        };
        anyhow::anyhow!("{err}{hint}")
    })?;
    let adopted = kernel.adopted();
    let table = if adopted && previous.layout == LAYOUT_VERSION {
        Table::adopt(capacity, snat_ip, previous.services.clone())?
    } else {
        Table::new(capacity, snat_ip)?
    };
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    let (health_events, mut transitions) = mpsc::channel(64);
    let mut daemon = Daemon {
        services_path: services.clone(),
        desired: file.clone(),
        kernel,
        table,
        checks: Checks::new(health_events),
        neighbours: prefetch_neighbours.then(|| Neighbours::new(handle.clone(), previous.neighbours.clone())),
        announcer: announce.map(|(iface, index)| {
            let inherited: Vec<Ipv4Addr> =
                previous.announced.iter().filter(|(i, _)| *i == iface).map(|(_, a)| *a).collect();
            Announcer::new(handle.clone(), iface, index, inherited)
        }),
        forwarding,
        run_dir,
        pins,
        pin_dir,
        ifindexes,
        sampler: Sampler::default(),
        sweep: watch_channel::channel(Arc::new(Sweep::default())).1,
    };
    let summary = daemon.apply(file).await.context("applying the service file")?;
    if adopted {
        daemon.table.prune(&mut daemon.kernel.maps)?;
    }
    for iface in &ifaces {
        daemon.kernel.attach(iface, xdp_mode)?;
    }
    daemon.kernel.detach_others()?;
    daemon.prefetch().await;
    daemon.save();
    info!(
        file = %services.display(),
        services = daemon.desired.services.len(),
        added = summary.added.len(),
        adopted,
        "service table loaded"
    );

    let (calls, mut requests) = mpsc::channel::<Call>(64);
    server::spawn(listener, calls.clone());
    if let Some(addr) = metrics {
        metrics::spawn(addr, calls.clone()).await.with_context(|| format!("metrics on {addr}"))?;
    }
    let (file_events, mut file_changes) = mpsc::channel(1);
    let _watcher = if watch { Some(watch::watch(&services, file_events)?) } else { None };
    daemon.sweep = spawn_sweeper(daemon.pins.map(names::FLOWS))?;

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
            Some(transition) = transitions.recv() => daemon.on_health(transition).await,
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
    table: Table,
    checks: Checks,
    neighbours: Option<Neighbours>,
    announcer: Option<Announcer>,
    forwarding: Forwarding,
    run_dir: RunDir,
    pins: Pins,
    pin_dir: PathBuf,
    ifindexes: Vec<u32>,
    sampler: Sampler,
    sweep: watch_channel::Receiver<Arc<Sweep>>,
}

impl Daemon {
    /// Makes `next` the running configuration (health on top), or changes
    /// nothing and says why.
    async fn apply(&mut self, next: ServiceFile) -> Result<Summary, ApplyError> {
        let summary = self.table.apply(&self.checks.effective(&next), &mut self.kernel.maps)?;
        self.desired = next;
        self.checks.reconcile(&self.desired);
        if let Some(announcer) = self.announcer.as_mut() {
            announcer.reconcile(&self.desired).await;
        }
        if !summary.is_empty() {
            self.save();
        }
        Ok(summary)
    }

    /// Re-applies the current configuration after a health change.
    async fn on_health(&mut self, transition: Transition) {
        if !self.checks.record(&transition) {
            return;
        }
        let Transition { service, backend, up, detail } = transition;
        if up {
            info!(%service, %backend, "backend healthy: back in rotation");
        } else {
            warn!(%service, %backend, %detail, "backend unhealthy: out of rotation");
        }
        let desired = self.desired.clone();
        if let Err(err) = self.apply(desired).await {
            warn!("applying a health change: {err}");
        }
    }

    async fn reload(&mut self, cause: &str) {
        let file = match ServiceFile::load(&self.services_path) {
            Ok(file) => file,
            Err(err) => {
                warn!(%cause, "reload rejected, configuration unchanged: {err}");
                return;
            }
        };
        if file == self.desired {
            debug!(%cause, "reload: no change");
            return;
        }
        match self.apply(file).await {
            Ok(Summary { added, changed, removed }) => info!(%cause, ?added, ?changed, ?removed, "reloaded"),
            Err(err) => warn!(%cause, "reload failed, configuration unchanged: {err}"),
        }
    }

    /// Applies an edit of the service file (or, runtime-only, of the running
    /// configuration) after validating the result like any service file.
    async fn change(
        &mut self,
        persist: Persist,
        edit: impl FnOnce(&mut Editor) -> Result<(), crate::config::edit::EditError>,
    ) -> Result<Summary, String> {
        let (mut editor, label) = match persist {
            Persist::File => {
                let text = std::fs::read_to_string(&self.services_path)
                    .map_err(|err| format!("{}: {err}", self.services_path.display()))?;
                let editor =
                    Editor::parse(&text).map_err(|err| format!("{}: {err}", self.services_path.display()))?;
                (editor, self.services_path.clone())
            }
            Persist::RuntimeOnly => (Editor::render(&self.desired), PathBuf::from("(running configuration)")),
        };
        edit(&mut editor).map_err(|err| err.to_string())?;
        let text = editor.text();
        let next = ServiceFile::parse(&label, &text).map_err(|err| err.to_string())?;
        self.commit(next, persist, &text).await
    }

    /// Applies `next` and, unless runtime-only, writes `text` as the
    /// service file; a failed write is reverted.
    async fn commit(&mut self, next: ServiceFile, persist: Persist, text: &str) -> Result<Summary, String> {
        let previous = self.desired.clone();
        let summary = self.apply(next).await.map_err(|err| err.to_string())?;
        if persist == Persist::File
            && let Err(err) = write_atomically(&self.services_path, text)
        {
            let _ = self.apply(previous).await;
            return Err(format!("writing {}: {err}; change reverted", self.services_path.display()));
        }
        info!(added = ?summary.added, changed = ?summary.changed, removed = ?summary.removed, ?persist, "changed from the command line");
        Ok(summary)
    }

    async fn handle(&mut self, request: Request, reply: oneshot::Sender<Response>) {
        let response = match request {
            Request::ServiceList => Response::ok(stats::services(&self.desired, &self.checks)),
            Request::Stats => {
                let sweep = self.sweep.borrow().clone();
                Response::ok(stats::stats(
                    &self.desired,
                    &self.checks,
                    &self.table,
                    &self.kernel.maps,
                    &self.sampler,
                    &sweep,
                ))
            }
            Request::Flows { service } => {
                self.spawn_flows(service, reply);
                return;
            }
            Request::ServiceAdd { name, vip, port, protocol, mode, backends, persist } => {
                let service = crate::config::Service {
                    name,
                    vip,
                    port,
                    protocol,
                    mode,
                    backends: backends
                        .into_iter()
                        .map(|addr| crate::config::BackendSpec {
                            addr,
                            weight: crate::config::DEFAULT_WEIGHT,
                        })
                        .collect(),
                    health: None,
                    source_ranges: Vec::new(),
                };
                to_response(self.change(persist, |e| e.add_service(&service)).await)
            }
            Request::ServiceRemove { name, persist } => {
                to_response(self.change(persist, |e| e.remove_service(&name)).await)
            }
            Request::BackendAdd { service, addr, weight, persist } => to_response(
                self.change(persist, |e| {
                    e.add_backend(&service, &crate::config::BackendSpec { addr, weight })
                })
                .await,
            ),
            Request::BackendRemove { service, addr, persist } => {
                to_response(self.change(persist, |e| e.remove_backend(&service, addr)).await)
            }
            Request::BackendSetWeight { service, addr, weight, persist } => {
                to_response(self.change(persist, |e| e.set_weight(&service, addr, weight)).await)
            }
            Request::Apply { path, text, persist } => match ServiceFile::parse(&path, &text) {
                Ok(next) => to_response(self.commit(next, persist, &text).await),
                Err(err) => Response::error(err.to_string()),
            },
        };
        let _ = reply.send(response);
    }

    /// Lists connections on a blocking thread; the loop goes on meanwhile.
    fn spawn_flows(&self, service: Option<String>, reply: oneshot::Sender<Response>) {
        if let Some(name) = &service
            && !self.desired.services.iter().any(|s| &s.name == name)
        {
            let _ = reply.send(Response::error(format!("no service named {name:?}")));
            return;
        }
        let names: std::collections::HashMap<u32, (String, crate::config::Protocol)> =
            self.table.services().values().map(|s| (s.id, (s.spec.name.clone(), s.spec.protocol))).collect();
        let pin = self.pins.map(names::FLOWS);
        tokio::task::spawn_blocking(move || {
            let response = match sweep::open(&pin) {
                Ok(map) => Response::ok(flows(&map, &names, service.as_deref())),
                Err(err) => Response::error(format!("reading the connection table: {err}")),
            };
            let _ = reply.send(response);
        });
    }

    /// Adds managed neighbour entries for every backend's next hop and every
    /// gateway of the attached interfaces.
    async fn prefetch(&mut self) {
        let Some(neighbours) = self.neighbours.as_mut() else { return };
        let mut hops: Vec<NextHop> = Vec::new();
        for service in &self.desired.services {
            for backend in &service.backends {
                match neighbours.next_hop(*backend.addr.ip()).await {
                    Ok(Some(hop)) => hops.push(hop),
                    Ok(None) => warn!(backend = %backend.addr, "no route to backend"),
                    Err(err) => warn!(backend = %backend.addr, "route lookup: {err}"),
                }
            }
        }
        match neighbours.gateways(&self.ifindexes).await {
            Ok(gateways) => hops.extend(gateways),
            Err(err) => warn!("listing gateways: {err}"),
        }
        hops.sort();
        hops.dedup();
        if neighbours.ensure(hops).await {
            self.save();
        }
    }

    /// Periodic work: a counter sample for rates, and deleting what no
    /// packet can reference any more.
    fn tick(&mut self) {
        self.sampler.push(Sample::take(&self.kernel.maps, &self.table));
        if let Err(err) = self.table.retire(&mut self.kernel.maps) {
            warn!("retiring unused map entries: {err}");
        }
    }

    fn save(&self) {
        let record = Record {
            layout: LAYOUT_VERSION,
            pin_dir: self.pin_dir.clone(),
            services: self.table.services().values().cloned().collect(),
            neighbours: self.neighbours.as_ref().map(Neighbours::added).unwrap_or_default(),
            announced: self.announcer.as_ref().map(Announcer::added).unwrap_or_default(),
            forwarding: self.forwarding.switched_on().to_vec(),
        };
        if let Err(err) = self.run_dir.save(&record) {
            warn!("saving the state record: {err}");
        }
    }

    async fn exit(mut self, exit: Exit) {
        self.checks.stop();
        match exit {
            Exit::Stop => {
                info!("stopping");
                if let Some(neighbours) = self.neighbours.as_mut() {
                    neighbours.remove_added().await;
                }
                if let Some(announcer) = self.announcer.as_mut() {
                    announcer.withdraw_all().await;
                }
                self.save();
                let Self { kernel, forwarding, run_dir, .. } = self;
                kernel.detach();
                forwarding.restore();
                run_dir.release();
                info!(
                    "detached; the connection table stays pinned for the next start (`forwarder down` removes it)"
                );
            }
            Exit::HandOver => {
                self.save();
                let Self { kernel, forwarding, run_dir, .. } = self;
                kernel.hand_over();
                forwarding.keep();
                run_dir.release();
                info!("handed over: the datapath keeps forwarding until the next daemon adopts it");
            }
        }
    }
}

fn to_response(result: Result<Summary, String>) -> Response {
    match result {
        Ok(summary) => Response::ok(summary),
        Err(err) => Response::error(err),
    }
}

/// Sweeps the connection table every few seconds on a blocking thread.
fn spawn_sweeper(pin: PathBuf) -> anyhow::Result<watch_channel::Receiver<Arc<Sweep>>> {
    let mut map = sweep::open(&pin)?;
    let (publish, receiver) = watch_channel::channel(Arc::new(Sweep::default()));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(sweep::INTERVAL);
        loop {
            ticker.tick().await;
            let Ok((returned, result)) = tokio::task::spawn_blocking(move || {
                let result = sweep::sweep(&mut map);
                (map, result)
            })
            .await
            else {
                return;
            };
            map = returned;
            if result.removed > 0 {
                debug!(removed = result.removed, "expired connections swept");
            }
            if publish.send(Arc::new(result)).is_err() {
                return;
            }
        }
    });
    Ok(receiver)
}

/// The live connections, as the `flows` verb shows them.
fn flows(
    map: &sweep::FlowMap,
    names: &std::collections::HashMap<u32, (String, crate::config::Protocol)>,
    only: Option<&str>,
) -> Vec<Flow> {
    use forwarder_common::maps::{addr_from_wire, port_from_wire};
    let now = sweep::now_ns();
    let socket = |addr, port| std::net::SocketAddrV4::new(addr_from_wire(addr), port_from_wire(port));
    let mut list: Vec<Flow> = sweep::scan(map)
        .into_iter()
        .filter(|conn| !conn.orphan && !conn.expired(now))
        .filter_map(|conn| {
            let (service, protocol) = names.get(&conn.original.service_id)?.clone();
            if only.is_some_and(|name| name != service) {
                return None;
            }
            let (key, entry) = (conn.key, conn.original);
            Some(Flow {
                service,
                protocol,
                client: socket(key.src, key.sport),
                vip: socket(key.dst, key.dport),
                source: socket(entry.new_src, entry.new_sport),
                backend: socket(entry.new_dst, entry.new_dport),
                state: conn.state().to_owned(),
                age_secs: now.saturating_sub(entry.created_ns) as f64 / 1e9,
                idle_secs: now.saturating_sub(conn.last_seen_ns()) as f64 / 1e9,
            })
        })
        .collect();
    list.sort_by(|a, b| (&a.service, a.client).cmp(&(&b.service, b.client)));
    list
}

/// Log level of the datapath's own records, following the daemon's.
fn datapath_log_level() -> aya_log::Level {
    if tracing::enabled!(tracing::Level::DEBUG) { aya_log::Level::Debug } else { aya_log::Level::Info }
}

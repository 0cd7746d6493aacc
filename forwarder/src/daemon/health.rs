//! Active health checks of backends, and what they change.
//!
//! One probe task per distinct check: a target (the backend's address, or
//! its `port` override) and a spec. Services whose backends share both (the
//! usual case: every NodePort service on the same nodes, checked alike)
//! share one probe, so a dead node is found once, not once per service.
//! It probes every `interval` (TCP connect, or HTTP `GET path` answering
//! 2xx/3xx, within `timeout`); a target starts up; `fall` consecutive
//! failures take it down, `rise` consecutive passes bring it back. Only
//! transitions are reported, each with its probe's generation: a probe
//! replaced (stopped, its spec changed, started again) gets a new one, so
//! a transition its old task had queued is never applied to it.
//!
//! A down backend gets no new connections (its open ones continue). When
//! every backend of a service that should take traffic is down, the
//! service ignores health and uses them all: a check failing everywhere
//! more often means the check is broken (a firewall, a wrong port) than
//! that every node is, and sending traffic keeps a chance of working where
//! dropping it guarantees an outage.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddrV4,
};

use tokio::{io::AsyncReadExt as _, io::AsyncWriteExt as _, net::TcpStream, sync::mpsc, task::JoinHandle};

use crate::{
    config::{HealthKind, HealthSpec, ServiceFile},
    report::Health,
};

/// What one probe checks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Probe {
    pub target: SocketAddrV4,
    pub spec: HealthSpec,
}

/// A probe's target changed health.
#[derive(Debug)]
pub struct Transition {
    pub probe: Probe,
    /// The generation of the probe task that saw it.
    generation: u64,
    pub up: bool,
    /// Why the last probe failed, or "ok".
    pub detail: String,
}

/// (service, backend address).
type Key = (String, SocketAddrV4);

struct Running {
    generation: u64,
    task: JoinHandle<()>,
    down: bool,
}

/// The probes running, who uses them, and what they found.
pub struct Checks {
    probes: HashMap<Probe, Running>,
    users: HashMap<Key, Probe>,
    generations: u64,
    events: mpsc::Sender<Transition>,
}

impl Checks {
    #[must_use]
    pub fn new(events: mpsc::Sender<Transition>) -> Self {
        Self { probes: HashMap::new(), users: HashMap::new(), generations: 0, events }
    }

    /// Runs exactly the probes `desired` asks for: new ones start (up),
    /// ones no backend uses any more stop; a probe still used keeps its
    /// state.
    pub fn reconcile(&mut self, desired: &ServiceFile) {
        let users = users(desired);
        let used: HashSet<&Probe> = users.values().collect();
        self.probes.retain(|probe, running| {
            let used = used.contains(probe);
            if !used {
                running.task.abort();
            }
            used
        });
        for probe in users.values() {
            if !self.probes.contains_key(probe) {
                self.generations += 1;
                let generation = self.generations;
                let task = tokio::spawn(check_loop(probe.clone(), generation, self.events.clone()));
                self.probes.insert(probe.clone(), Running { generation, task, down: false });
            }
        }
        self.users = users;
    }

    /// Records a transition; false if it is stale (from a probe task since
    /// replaced or stopped) or changes nothing.
    pub fn record(&mut self, transition: &Transition) -> bool {
        match self.probes.get_mut(&transition.probe) {
            Some(running) if running.generation == transition.generation && running.down == transition.up => {
                running.down = !transition.up;
                true
            }
            _ => false,
        }
    }

    /// How many backends of services use `probe`.
    #[must_use]
    pub fn users_of(&self, probe: &Probe) -> usize {
        self.users.values().filter(|p| *p == probe).count()
    }

    fn is_down(&self, service: &str, backend: SocketAddrV4) -> Option<bool> {
        self.down_by(&self.users, service, backend)
    }

    /// Whether the probe `users` gives (service, backend) is down; `None`
    /// if it has none, or none runs yet (a new probe starts up).
    fn down_by(&self, users: &HashMap<Key, Probe>, service: &str, backend: SocketAddrV4) -> Option<bool> {
        let probe = users.get(&(service.to_owned(), backend))?;
        self.probes.get(probe).map(|running| running.down)
    }

    #[must_use]
    pub fn health(&self, service: &str, backend: SocketAddrV4) -> Health {
        match self.is_down(service, backend) {
            None => Health::Unchecked,
            Some(false) => Health::Up,
            Some(true) => Health::Down,
        }
    }

    /// `desired` as the datapath should run it: down backends at weight 0,
    /// unless every backend meant to take traffic is down (see the module
    /// documentation). Judged by the probes `desired` itself names, so a
    /// service that joins a probe already down starts without the dead
    /// backend, and a backend whose check changed starts up.
    #[must_use]
    pub fn effective(&self, desired: &ServiceFile) -> ServiceFile {
        let users = users(desired);
        let mut effective = desired.clone();
        for service in &mut effective.services {
            let down: Vec<bool> = service
                .backends
                .iter()
                .map(|b| self.down_by(&users, &service.name, b.addr) == Some(true))
                .collect();
            let any_up = service.backends.iter().zip(&down).any(|(b, down)| b.weight > 0 && !down);
            if !any_up {
                continue;
            }
            for (backend, down) in service.backends.iter_mut().zip(down) {
                if down {
                    backend.weight = 0;
                }
            }
        }
        effective
    }

    pub fn stop(&mut self) {
        for (_, running) in self.probes.drain() {
            running.task.abort();
        }
        self.users.clear();
    }
}

/// The probe each checked (service, backend) of `desired` uses.
fn users(desired: &ServiceFile) -> HashMap<Key, Probe> {
    let mut users = HashMap::new();
    for service in &desired.services {
        if let Some(spec) = &service.health {
            for backend in &service.backends {
                let target = SocketAddrV4::new(*backend.addr.ip(), spec.port.unwrap_or(backend.addr.port()));
                users.insert((service.name.clone(), backend.addr), Probe { target, spec: spec.clone() });
            }
        }
    }
    users
}

async fn check_loop(probe: Probe, generation: u64, events: mpsc::Sender<Transition>) {
    let Probe { target, spec } = &probe;
    let mut ticker = tokio::time::interval(spec.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut up, mut streak) = (true, 0);
    loop {
        ticker.tick().await;
        let result = match tokio::time::timeout(spec.timeout, probe_once(*target, &spec.kind)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {}", humantime::format_duration(spec.timeout))),
        };
        if result.is_ok() == up {
            streak = 0;
            continue;
        }
        streak += 1;
        if streak < if up { spec.fall } else { spec.rise } {
            continue;
        }
        up = !up;
        streak = 0;
        let detail = result.err().unwrap_or_else(|| "ok".to_owned());
        let transition = Transition { probe: probe.clone(), generation, up, detail };
        if events.send(transition).await.is_err() {
            return;
        }
    }
}

/// One probe: Ok, or why it failed.
async fn probe_once(target: SocketAddrV4, kind: &HealthKind) -> Result<(), String> {
    let mut stream = TcpStream::connect(target).await.map_err(|e| format!("connect {target}: {e}"))?;
    let HealthKind::Http { path } = kind else { return Ok(()) };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: forwarder-health-check\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before a status line".to_owned());
        }
        head.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&head) {
            Ok(_) if response.code.is_some() => {
                let code = response.code.unwrap_or_default();
                return if (200..400).contains(&code) { Ok(()) } else { Err(format!("HTTP {code}")) };
            }
            Ok(_) if head.len() < 8192 => continue,
            Ok(_) => return Err("no status line in 8 KiB".to_owned()),
            Err(e) => return Err(format!("not HTTP: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendSpec, Mode, Protocol, Service};

    fn file(weights: &[u32]) -> ServiceFile {
        ServiceFile {
            snat_ip: Vec::new(),
            services: vec![Service {
                name: "web".to_owned(),
                vip: [10, 0, 0, 1].into(),
                port: 80,
                protocol: Protocol::Tcp,
                mode: Mode::Snat,
                backends: weights
                    .iter()
                    .enumerate()
                    .map(|(i, &weight)| BackendSpec {
                        addr: SocketAddrV4::new([10, 0, 1, i as u8].into(), 80),
                        weight,
                    })
                    .collect(),
                health: Some(spec()),
                source_ranges: Vec::new(),
            }],
            kube: None,
        }
    }

    fn spec() -> HealthSpec {
        HealthSpec {
            kind: HealthKind::Tcp,
            port: None,
            interval: std::time::Duration::from_secs(3600),
            timeout: std::time::Duration::from_secs(1),
            rise: 1,
            fall: 1,
        }
    }

    fn checks_with_down(desired: &ServiceFile, down: &[usize]) -> Checks {
        let (tx, _rx) = mpsc::channel(1);
        let mut checks = Checks::new(tx);
        let spec = spec();
        for (i, backend) in desired.services[0].backends.iter().enumerate() {
            let probe = Probe { target: backend.addr, spec: spec.clone() };
            // A task that never runs: the runtime is gone with this scope.
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let task = {
                let _entered = runtime.enter();
                tokio::spawn(async {})
            };
            checks.probes.insert(probe.clone(), Running { generation: 1, task, down: down.contains(&i) });
            checks.users.insert(("web".to_owned(), backend.addr), probe);
        }
        checks
    }

    fn weights(file: &ServiceFile) -> Vec<u32> {
        file.services[0].backends.iter().map(|b| b.weight).collect()
    }

    #[test]
    fn down_backends_leave_rotation() {
        let desired = file(&[1, 2, 3]);
        assert_eq!(weights(&checks_with_down(&desired, &[1]).effective(&desired)), [1, 0, 3]);
    }

    #[test]
    fn all_down_fails_open() {
        let desired = file(&[1, 2, 0]);
        assert_eq!(weights(&checks_with_down(&desired, &[0, 1]).effective(&desired)), [1, 2, 0]);
    }

    #[test]
    fn a_drained_backend_does_not_count_as_up() {
        let desired = file(&[1, 0]);
        // Only the draining backend is "up": nothing meant to take traffic
        // is, so the service fails open and keeps backend 0.
        assert_eq!(weights(&checks_with_down(&desired, &[0]).effective(&desired)), [1, 0]);
    }

    /// Two services on the same two backends, checked alike: one probe per
    /// backend serves both; a transition queued by a probe that was
    /// stopped and started again is stale.
    #[test]
    fn services_checked_alike_share_probes_and_stale_transitions_are_ignored() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (tx, _rx) = mpsc::channel(8);
            let mut checks = Checks::new(tx);
            let mut both = file(&[1, 1]);
            let mut api = both.services[0].clone();
            api.name = "api".to_owned();
            api.port = 81;
            both.services.push(api);
            both.services.iter_mut().for_each(|s| s.health = Some(spec()));
            let addr = both.services[0].backends[0].addr;
            checks.reconcile(&both);
            assert_eq!(checks.probes.len(), 2, "one probe per backend, not per service");
            let probe = checks.users[&("web".to_owned(), addr)].clone();
            assert_eq!(checks.users_of(&probe), 2);
            let generation = checks.probes[&probe].generation;
            let down = || Transition { probe: probe.clone(), generation, up: false, detail: "x".to_owned() };
            assert!(checks.record(&down()));
            assert!(!checks.record(&down()), "no change the second time");
            assert_eq!(
                (checks.health("web", addr), checks.health("api", addr)),
                (Health::Down, Health::Down)
            );

            // A service added later on the same backends joins the down
            // probe: the dead backend is out of its rotation from the start.
            let mut three = both.clone();
            let mut late = three.services[0].clone();
            late.name = "late".to_owned();
            late.port = 82;
            three.services.push(late);
            let weights =
                |f: &ServiceFile| f.services[2].backends.iter().map(|b| b.weight).collect::<Vec<_>>();
            assert_eq!(weights(&checks.effective(&three)), [0, 1], "before its reconcile");
            // A changed check is a new probe, which starts up.
            let mut changed = both.clone();
            changed.services[0].health.as_mut().unwrap().timeout = std::time::Duration::from_secs(2);
            assert_eq!(checks.effective(&changed).services[0].backends[0].weight, 1);

            let mut unchecked = file(&[1, 1]);
            unchecked.services[0].health = None;
            checks.reconcile(&unchecked);
            assert!(checks.probes.is_empty());
            checks.reconcile(&both);
            assert_eq!(checks.health("web", addr), Health::Up, "a restarted probe starts up");
            assert!(!checks.record(&down()), "the old probe's queued transition is stale");
            assert_eq!(checks.health("web", addr), Health::Up);
        });
    }
}

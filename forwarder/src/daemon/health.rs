//! Active health checks of backends, and what they change.
//!
//! One task per checked backend probes it every `interval` (TCP connect,
//! or HTTP `GET path` answering 2xx/3xx, within `timeout`). A backend
//! starts up; `fall` consecutive failures take it down, `rise` consecutive
//! passes bring it back. Only transitions are reported (and logged).
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

/// A backend's health changed.
#[derive(Debug)]
pub struct Transition {
    pub service: String,
    pub backend: SocketAddrV4,
    pub up: bool,
    /// Why the last probe failed, or "ok".
    pub detail: String,
}

type Key = (String, SocketAddrV4);

/// The checks running and what they found.
pub struct Checks {
    tasks: HashMap<Key, (HealthSpec, JoinHandle<()>)>,
    down: HashSet<Key>,
    events: mpsc::Sender<Transition>,
}

impl Checks {
    #[must_use]
    pub fn new(events: mpsc::Sender<Transition>) -> Self {
        Self { tasks: HashMap::new(), down: HashSet::new(), events }
    }

    /// Runs exactly the checks `desired` asks for: new ones start (up),
    /// removed or changed ones stop.
    pub fn reconcile(&mut self, desired: &ServiceFile) {
        let mut wanted: HashMap<Key, HealthSpec> = HashMap::new();
        for service in &desired.services {
            if let Some(spec) = &service.health {
                for backend in &service.backends {
                    wanted.insert((service.name.clone(), backend.addr), spec.clone());
                }
            }
        }
        self.tasks.retain(|key, (spec, task)| {
            let keep = wanted.get(key) == Some(spec);
            if !keep {
                task.abort();
            }
            keep
        });
        self.down.retain(|key| self.tasks.contains_key(key));
        for (key, spec) in wanted {
            if !self.tasks.contains_key(&key) {
                let task = tokio::spawn(check_loop(key.clone(), spec.clone(), self.events.clone()));
                self.tasks.insert(key, (spec, task));
            }
        }
    }

    /// Records a transition; false if it is stale (the check was replaced).
    pub fn record(&mut self, transition: &Transition) -> bool {
        let key = (transition.service.clone(), transition.backend);
        if !self.tasks.contains_key(&key) {
            return false;
        }
        if transition.up { self.down.remove(&key) } else { self.down.insert(key) }
    }

    #[must_use]
    pub fn health(&self, service: &str, backend: SocketAddrV4) -> Health {
        let key = (service.to_owned(), backend);
        match (self.tasks.contains_key(&key), self.down.contains(&key)) {
            (false, _) => Health::Unchecked,
            (true, false) => Health::Up,
            (true, true) => Health::Down,
        }
    }

    /// `desired` as the datapath should run it: down backends at weight 0,
    /// unless every backend meant to take traffic is down (see the module
    /// documentation).
    #[must_use]
    pub fn effective(&self, desired: &ServiceFile) -> ServiceFile {
        let mut effective = desired.clone();
        for service in &mut effective.services {
            let is_down = |addr| self.down.contains(&(service.name.clone(), addr));
            let any_up = service.backends.iter().any(|b| b.weight > 0 && !is_down(b.addr));
            if !any_up {
                continue;
            }
            let down: Vec<bool> = service.backends.iter().map(|b| is_down(b.addr)).collect();
            for (backend, down) in service.backends.iter_mut().zip(down) {
                if down {
                    backend.weight = 0;
                }
            }
        }
        effective
    }

    pub fn stop(&mut self) {
        for (_, (_, task)) in self.tasks.drain() {
            task.abort();
        }
    }
}

async fn check_loop(key: Key, spec: HealthSpec, events: mpsc::Sender<Transition>) {
    let (service, backend) = key;
    let target = SocketAddrV4::new(*backend.ip(), spec.port.unwrap_or(backend.port()));
    let mut ticker = tokio::time::interval(spec.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut up, mut streak) = (true, 0);
    loop {
        ticker.tick().await;
        let result = match tokio::time::timeout(spec.timeout, probe(target, &spec.kind)).await {
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
        let transition = Transition { service: service.clone(), backend, up, detail };
        if events.send(transition).await.is_err() {
            return;
        }
    }
}

/// One probe: Ok, or why it failed.
async fn probe(target: SocketAddrV4, kind: &HealthKind) -> Result<(), String> {
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
            snat_ip: None,
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
                health: None,
                source_ranges: Vec::new(),
            }],
            kube: None,
        }
    }

    fn checks_with_down(desired: &ServiceFile, down: &[usize]) -> Checks {
        let (tx, _rx) = mpsc::channel(1);
        let mut checks = Checks::new(tx);
        for &i in down {
            checks.down.insert(("web".to_owned(), desired.services[0].backends[i].addr));
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
}

//! Building the reports: the service table with health, and statistics
//! (totals from the per-CPU maps, rates between the last two samples,
//! connection counts from the last sweep).

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    time::Instant,
};

use aya::maps::{MapData, PerCpuArray};
use forwarder_common::{
    counters::{Reason, Traffic},
    snat::SNAT_PORTS,
};

use super::health::Checks;
use crate::{
    config::{Protocol, ServiceFile},
    conntrack::sweep::Sweep,
    kernel::Maps,
    report::{BackendStats, BackendView, Rates, ReasonCount, ServiceStats, ServiceView, SnatUse, Stats},
    state::ServiceTable,
};

/// Counter totals per service id and backend id at one moment.
#[derive(Clone, Debug)]
pub struct Sample {
    at: Instant,
    services: HashMap<u32, Traffic>,
    backends: HashMap<u32, Traffic>,
}

fn sum(map: &PerCpuArray<MapData, Traffic>, id: u32) -> Traffic {
    let mut total = Traffic::default();
    if let Ok(values) = map.get(&id, 0) {
        for value in values.iter() {
            total.add(value);
        }
    }
    total
}

impl Sample {
    /// Reads the counters of every installed service and backend.
    #[must_use]
    pub fn take(maps: &Maps, table: &ServiceTable) -> Self {
        let mut sample = Self { at: Instant::now(), services: HashMap::new(), backends: HashMap::new() };
        for service in table.services().values() {
            sample.services.insert(service.id, sum(&maps.service_traffic, service.id));
            for backend in &service.backends {
                sample.backends.insert(backend.id, sum(&maps.backend_traffic, backend.id));
            }
        }
        sample
    }
}

/// The last two samples, for rates.
#[derive(Default)]
pub struct Sampler {
    previous: Option<Sample>,
    latest: Option<Sample>,
}

impl Sampler {
    pub fn push(&mut self, sample: Sample) {
        self.previous = self.latest.replace(sample);
    }

    fn interval(&self) -> f64 {
        match (&self.previous, &self.latest) {
            (Some(old), Some(new)) => new.at.duration_since(old.at).as_secs_f64(),
            _ => 0.0,
        }
    }

    fn rates(&self, pick: impl Fn(&Sample) -> Option<Traffic>) -> Rates {
        match (self.previous.as_ref().and_then(&pick), self.latest.as_ref().and_then(&pick)) {
            (Some(old), Some(new)) => Rates::between(&old, &new, self.interval()),
            _ => Rates::default(),
        }
    }
}

/// The service table: configured weights, health, whether in rotation.
#[must_use]
pub fn services(desired: &ServiceFile, checks: &Checks) -> Vec<ServiceView> {
    let effective = checks.effective(desired);
    desired
        .services
        .iter()
        .zip(&effective.services)
        .map(|(service, running)| ServiceView {
            name: service.name.clone(),
            vip: service.vip,
            port: service.port,
            protocol: service.protocol,
            mode: service.mode,
            health_check: service.health.clone(),
            backends: service
                .backends
                .iter()
                .zip(&running.backends)
                .map(|(backend, running)| BackendView {
                    addr: backend.addr,
                    weight: backend.weight,
                    health: checks.health(&service.name, backend.addr),
                    in_rotation: running.weight > 0,
                })
                .collect(),
        })
        .collect()
}

/// Statistics per service and backend, and packets per reason.
#[must_use]
pub fn stats(
    desired: &ServiceFile,
    checks: &Checks,
    table: &ServiceTable,
    maps: &Maps,
    sampler: &Sampler,
    sweep: &Sweep,
) -> Stats {
    let installed = table.services();
    let services = services(desired, checks)
        .into_iter()
        .filter_map(|view| {
            let service = installed.get(&view.name)?;
            let backends = view
                .backends
                .iter()
                .filter_map(|b| {
                    let id = service.backends.iter().find(|i| i.addr == b.addr)?.id;
                    Some(BackendStats {
                        addr: b.addr,
                        weight: b.weight,
                        health: b.health,
                        in_rotation: b.in_rotation,
                        totals: sum(&maps.backend_traffic, id),
                        rates: sampler.rates(|s| s.backends.get(&id).copied()),
                        active_flows: sweep.by_backend.get(&id).copied().unwrap_or(0),
                    })
                })
                .collect();
            Some(ServiceStats {
                name: view.name,
                vip: view.vip,
                port: view.port,
                protocol: view.protocol,
                mode: view.mode,
                totals: sum(&maps.service_traffic, service.id),
                rates: sampler.rates(|s| s.services.get(&service.id).copied()),
                active_flows: sweep.by_service.get(&service.id).copied().unwrap_or(0),
                backends,
            })
        })
        .collect();
    let reasons = Reason::ALL
        .iter()
        .map(|reason| ReasonCount {
            reason: reason.name().to_owned(),
            packets: maps.reasons.get(&(*reason as u32), 0).map_or(0, |v| v.iter().sum()),
        })
        .collect();
    Stats {
        rate_interval_secs: sampler.interval(),
        flows_age_secs: sweep.at.elapsed().as_secs_f64(),
        connections: sweep.connections,
        half_open: sweep.half_open,
        services,
        reasons,
        snat: snat_use(sweep),
    }
}

/// Port use per SNAT address and protocol, from the sweep's counts per
/// port space, in address order.
fn snat_use(sweep: &Sweep) -> Vec<SnatUse> {
    let mut by_address: BTreeMap<(Ipv4Addr, u8), (u64, u64)> = BTreeMap::new();
    for (space, &count) in &sweep.by_snat {
        let (connections, busiest) =
            by_address.entry((Ipv4Addr::from(u32::from_be(space.snat_addr)), space.proto)).or_default();
        *connections += count;
        *busiest = (*busiest).max(count);
    }
    by_address
        .into_iter()
        .filter_map(|((address, proto), (connections, busiest_node_ports))| {
            Some(SnatUse {
                address,
                protocol: Protocol::from_number(proto)?,
                connections,
                busiest_node_ports,
                ports_per_node: SNAT_PORTS,
            })
        })
        .collect()
}

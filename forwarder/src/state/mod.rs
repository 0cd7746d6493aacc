//! The running service table and how a new service file reaches the maps.
//!
//! [`Table::apply`] works in two phases. *Plan* computes the new table
//! (ids, SNAT addresses, backend banks, Maglev tables) and checks capacity
//! without touching a map, so an impossible change fails with nothing
//! applied. *Commit* then writes in an order the datapath never observes
//! half done: new Maglev tables first (built in fresh maps, added in one
//! batch), a changed backend list into the service's other bank, and last
//! the service entry, one map update that switches table, bank and mode
//! at once. What nothing references any more (old tables, removed
//! services' backends) is deleted a second later by [`Table::retire`].
//! Tracked flows carry their own translation, so no change touches an
//! established connection.

mod ids;
mod tables;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use aya::maps::{MapData, MapError, PerCpuArray, PerCpuValues};
use forwarder_common::{
    counters::Traffic,
    maps::{self as wire, Backend, BackendKey, ServiceEntry, ServiceKey, wire_addr, wire_port},
};
use serde::{Deserialize, Serialize};

pub use self::tables::new_table;
use self::{
    ids::IdPool,
    tables::{TableKey, Tables},
};
use crate::{
    config::{BackendSpec, Mode, Service, ServiceFile},
    kernel::{Capacity, Maps},
};

/// How long something no longer referenced waits before it is deleted: far
/// longer than any packet takes to go through the datapath.
const RETIRE_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("too many services: {wanted} configured, capacity {capacity} (raise --max-services)")]
    TooManyServices { wanted: usize, capacity: u32 },
    #[error("too many backends: {wanted} configured, capacity {capacity} (raise --max-backends)")]
    TooManyBackends { wanted: usize, capacity: u32 },
    #[error("too many distinct Maglev tables: capacity {capacity} (raise --max-tables)")]
    TooManyTables { capacity: u32 },
    #[error("service {service:?}: no SNAT address for backend {backend}: {reason}")]
    NoSnatAddress { service: String, backend: SocketAddrV4, reason: String },
    #[error("writing map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("writing map {map}: {error}")]
    Batch { map: &'static str, error: std::io::Error },
    #[error("filling a Maglev table: {0}")]
    Mmap(std::io::Error),
    #[error("counting CPUs: {0}")]
    Cpus(std::io::Error),
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> ApplyError {
    move |source| ApplyError::Map { map, source }
}

/// A backend as installed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledBackend {
    pub spec: BackendSpec,
    /// Its traffic counters' index, stable while it stays in the service.
    pub id: u32,
    /// Source address of SNATed flows to this backend (snat mode only).
    pub snat: Option<Ipv4Addr>,
}

/// A service as installed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledService {
    /// As applied (weights include health).
    pub spec: Service,
    pub id: u32,
    /// Backends in canonical order (by address): index i is what the
    /// Maglev table's slots hold.
    pub backends: Vec<InstalledBackend>,
    /// The current bank of `BACKENDS` entries, and how many entries each
    /// bank has had written (to delete them all at removal).
    pub bank: u8,
    pub written: [u16; 2],
    pub table: u32,
    pub table_len: u32,
}

impl InstalledService {
    fn key(&self) -> ServiceKey {
        ServiceKey {
            vip: wire_addr(self.spec.vip),
            port: wire_port(self.spec.port),
            proto: self.spec.protocol.number(),
            _pad: 0,
        }
    }

    fn entry(&self) -> ServiceEntry {
        ServiceEntry {
            id: self.id,
            table: self.table,
            table_len: self.table_len,
            mode: match self.spec.mode {
                Mode::Snat => wire::Mode::Snat as u8,
                Mode::Preserve => wire::Mode::Preserve as u8,
            },
            bank: self.bank,
            _pad: [0; 2],
        }
    }

    /// The slots of this service's Maglev table, as the kernel holds them:
    /// indices into [`Self::backends`].
    #[must_use]
    pub fn maglev_slots(&self) -> Vec<u32> {
        TableKey::of(&self.backends).build()
    }

    /// Whether `other` has the same backend entries (so no new bank).
    fn same_backends(&self, other: &InstalledService) -> bool {
        self.backends.len() == other.backends.len()
            && self
                .backends
                .iter()
                .zip(&other.backends)
                .all(|(a, b)| (a.spec.addr, a.id, a.snat) == (b.spec.addr, b.id, b.snat))
    }
}

/// What a successful apply changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl Summary {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// What waits to be deleted (and its ids freed) once no packet can use it.
#[derive(Debug, Default)]
struct Retiring {
    since: Option<Instant>,
    backend_entries: Vec<BackendKey>,
    tables: Vec<u32>,
    service_ids: Vec<u32>,
    backend_ids: Vec<u32>,
}

/// The service table the datapath is running.
#[derive(Debug)]
pub struct Table {
    services: BTreeMap<String, InstalledService>,
    service_ids: IdPool,
    backend_ids: IdPool,
    tables: Tables,
    retiring: Retiring,
    /// `--snat-ip`, used when the file sets none.
    snat_override: Option<Ipv4Addr>,
    /// Adopted from an earlier daemon: ids are kept, but every entry and
    /// table is written afresh on the next apply (the maps may be behind
    /// the record); the earlier tables are retired after it.
    adopted_tables: Option<Vec<u32>>,
    cpus: usize,
}

impl Table {
    pub fn new(capacity: Capacity, snat_override: Option<Ipv4Addr>) -> Result<Self, ApplyError> {
        Self::with(capacity, snat_override, BTreeMap::new(), None)
    }

    /// The table an earlier daemon left, as it recorded it: the same
    /// service and backend ids (so counters and tracked flows keep their
    /// meaning). Records that do not fit `capacity` are dropped and those
    /// services installed afresh.
    pub fn adopt(
        capacity: Capacity,
        snat_override: Option<Ipv4Addr>,
        previous: Vec<InstalledService>,
    ) -> Result<Self, ApplyError> {
        let fits = |s: &InstalledService| {
            s.id < capacity.max_services
                && s.table < capacity.max_tables
                && s.backends.iter().all(|b| b.id < capacity.max_backends)
        };
        let services: BTreeMap<String, InstalledService> =
            previous.into_iter().filter(fits).map(|s| (s.spec.name.clone(), s)).collect();
        let old_tables: Vec<u32> = {
            let mut ids: Vec<u32> = services.values().map(|s| s.table).collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        Self::with(capacity, snat_override, services, Some(old_tables))
    }

    fn with(
        capacity: Capacity,
        snat_override: Option<Ipv4Addr>,
        services: BTreeMap<String, InstalledService>,
        adopted_tables: Option<Vec<u32>>,
    ) -> Result<Self, ApplyError> {
        let table_ids = IdPool::without(capacity.max_tables, adopted_tables.iter().flatten().copied());
        Ok(Self {
            service_ids: IdPool::without(capacity.max_services, services.values().map(|s| s.id)),
            backend_ids: IdPool::without(
                capacity.max_backends,
                services.values().flat_map(|s| s.backends.iter().map(|b| b.id)),
            ),
            tables: Tables::new(table_ids),
            services,
            retiring: Retiring::default(),
            snat_override,
            adopted_tables,
            cpus: aya::util::nr_cpus().map_err(|(_, err)| ApplyError::Cpus(err))?,
        })
    }

    /// The installed services, by name.
    #[must_use]
    pub fn services(&self) -> &BTreeMap<String, InstalledService> {
        &self.services
    }

    /// Makes the maps serve `file`, changing only what differs.
    pub fn apply(&mut self, file: &ServiceFile, maps: &mut Maps) -> Result<Summary, ApplyError> {
        self.retire(maps)?;
        let plan = self.plan(file)?;
        self.commit(plan, maps)
    }

    /// Deletes what was unreferenced more than a second ago.
    pub fn retire(&mut self, maps: &mut Maps) -> Result<(), ApplyError> {
        let Some(since) = self.retiring.since else { return Ok(()) };
        if since.elapsed() < RETIRE_AFTER {
            return Ok(());
        }
        let Retiring { backend_entries, tables, service_ids, backend_ids, .. } =
            std::mem::take(&mut self.retiring);
        for key in backend_entries {
            match maps.backends.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(ApplyError::Map { map: "BACKENDS", source }),
            }
        }
        self.tables.remove(&maps.maglev, tables)?;
        service_ids.into_iter().for_each(|id| self.service_ids.give_back(id));
        backend_ids.into_iter().for_each(|id| self.backend_ids.give_back(id));
        Ok(())
    }

    fn retire_later(&mut self) -> &mut Retiring {
        self.retiring.since = Some(Instant::now());
        &mut self.retiring
    }

    /// Removes service entries and Maglev tables nothing accounts for
    /// (left by an earlier daemon that died before recording them).
    pub fn prune(&self, maps: &mut Maps) -> Result<(), ApplyError> {
        let keys: Vec<ServiceKey> = self.services.values().map(InstalledService::key).collect();
        let stale: Vec<ServiceKey> =
            maps.services.keys().filter_map(Result::ok).filter(|k| !keys.contains(k)).collect();
        for key in stale {
            maps.services.remove(&key).map_err(map_err("SERVICES"))?;
        }
        let outer = aya::maps::HashOfMaps::<_, u32>::try_from(&maps.maglev).map_err(map_err("MAGLEV"))?;
        let stale: Vec<u32> = outer
            .keys()
            .filter_map(Result::ok)
            .filter(|id| !self.tables.contains(*id) && !self.retiring.tables.contains(id))
            .collect();
        tables::remove_unknown(&maps.maglev, &stale)
    }

    /// Computes the next table without touching maps or `self`, except for
    /// ids reserved for new tables (given back if the plan fails).
    fn plan(&mut self, file: &ServiceFile) -> Result<Plan, ApplyError> {
        let mut plan = Plan {
            next: BTreeMap::new(),
            new_tables: Vec::new(),
            service_ids: self.service_ids.clone(),
            backend_ids: self.backend_ids.clone(),
            fresh_services: Vec::new(),
            fresh_backends: Vec::new(),
        };
        match self.plan_services(file, &mut plan) {
            Ok(()) => Ok(plan),
            Err(err) => {
                self.tables.forget(std::mem::take(&mut plan.new_tables));
                Err(err)
            }
        }
    }

    fn plan_services(&mut self, file: &ServiceFile, plan: &mut Plan) -> Result<(), ApplyError> {
        let snat_ip = file.snat_ip.or(self.snat_override);
        let rewrite_all = self.adopted_tables.is_some();
        // One route lookup per node, not per backend.
        let mut sources: std::collections::HashMap<Ipv4Addr, Result<Ipv4Addr, String>> =
            std::collections::HashMap::new();
        for spec in &file.services {
            let current = self.services.get(&spec.name);
            // Ids freed by this very apply are only reusable after it, so a
            // full table cannot swap services in one step.
            let id = match current {
                Some(current) => current.id,
                None => {
                    let id = plan.service_ids.take().ok_or_else(|| ApplyError::TooManyServices {
                        wanted: file.services.len()
                            + self
                                .services
                                .keys()
                                .filter(|n| !file.services.iter().any(|s| &s.name == *n))
                                .count(),
                        capacity: plan.service_ids.capacity(),
                    })?;
                    plan.fresh_services.push(id);
                    id
                }
            };
            let mut canonical = spec.backends.clone();
            canonical.sort_by_key(|b| (u32::from(*b.addr.ip()), b.addr.port()));
            let mut backends = Vec::with_capacity(canonical.len());
            for backend in canonical {
                let existing = current.and_then(|c| c.backends.iter().find(|b| b.spec.addr == backend.addr));
                let id = match existing {
                    Some(b) => b.id,
                    None => {
                        let id = plan.backend_ids.take().ok_or_else(|| ApplyError::TooManyBackends {
                            wanted: file.services.iter().map(|s| s.backends.len()).sum(),
                            capacity: plan.backend_ids.capacity(),
                        })?;
                        plan.fresh_backends.push(id);
                        id
                    }
                };
                let snat = match spec.mode {
                    Mode::Preserve => None,
                    Mode::Snat => Some(match snat_ip {
                        Some(ip) => ip,
                        None => sources
                            .entry(*backend.addr.ip())
                            .or_insert_with(|| source_address_towards(backend.addr))
                            .clone()
                            .map_err(|reason| ApplyError::NoSnatAddress {
                                service: spec.name.clone(),
                                backend: backend.addr,
                                reason,
                            })?,
                    }),
                };
                backends.push(InstalledBackend { spec: backend, id, snat });
            }
            let key = TableKey::of(&backends);
            let table = self.tables.find_or_allocate(&key, &mut plan.new_tables)?;
            let mut next = InstalledService {
                spec: spec.clone(),
                id,
                backends,
                bank: 0,
                written: [0, 0],
                table,
                table_len: key.len(),
            };
            if let Some(current) = current {
                let flip = rewrite_all || !current.same_backends(&next);
                next.bank = if flip { 1 - current.bank } else { current.bank };
                next.written = current.written;
            }
            let count = next.backends.len() as u16;
            next.written[next.bank as usize] = next.written[next.bank as usize].max(count);
            plan.next.insert(spec.name.clone(), next);
        }
        Ok(())
    }

    fn commit(&mut self, plan: Plan, maps: &mut Maps) -> Result<Summary, ApplyError> {
        let Plan { next, new_tables, service_ids, backend_ids, fresh_services, fresh_backends } = plan;
        self.tables.install(&maps.maglev, new_tables)?;
        for id in &fresh_services {
            reset_traffic(&mut maps.service_traffic, *id, self.cpus)?;
        }
        for id in &fresh_backends {
            reset_traffic(&mut maps.backend_traffic, *id, self.cpus)?;
        }
        let rewrite_all = self.adopted_tables.is_some();
        let mut summary = Summary::default();
        for (name, service) in &next {
            let current = self.services.get(name);
            if current == Some(service) && !rewrite_all {
                continue;
            }
            if current.is_none_or(|c| c.bank != service.bank || rewrite_all) {
                write_backends(maps, service)?;
            }
            maps.services.insert(service.key(), service.entry(), 0).map_err(map_err("SERVICES"))?;
            if let Some(old) = current.filter(|c| c.key() != service.key()) {
                remove_key(maps, old.key())?;
            }
            match current {
                None => summary.added.push(name.clone()),
                Some(c) if c != service => summary.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        let removed: Vec<InstalledService> =
            self.services.values().filter(|s| !next.contains_key(&s.spec.name)).cloned().collect();
        for old in &removed {
            remove_key(maps, old.key())?;
            summary.removed.push(old.spec.name.clone());
        }
        // Backends that left a service that stays.
        let mut freed_backends: Vec<u32> = Vec::new();
        for (name, service) in &next {
            if let Some(current) = self.services.get(name) {
                freed_backends.extend(
                    current
                        .backends
                        .iter()
                        .filter(|old| !service.backends.iter().any(|b| b.id == old.id))
                        .map(|b| b.id),
                );
            }
        }
        let unused_tables = self.tables.recount(next.values().map(|s| s.table));
        let adopted_tables = self.adopted_tables.take().unwrap_or_default();

        self.service_ids = service_ids;
        self.backend_ids = backend_ids;
        self.services = next;
        let retiring = self.retire_later();
        let mut tables: Vec<u32> = unused_tables.into_iter().chain(adopted_tables).collect();
        tables.sort_unstable();
        tables.dedup();
        retiring.tables.extend(tables);
        retiring.backend_ids.extend(freed_backends);
        for old in removed {
            retiring.service_ids.push(old.id);
            retiring.backend_ids.extend(old.backends.iter().map(|b| b.id));
            for bank in 0..2u8 {
                for index in 0..old.written[bank as usize] {
                    retiring.backend_entries.push(BackendKey { service_id: old.id, bank, _pad: 0, index });
                }
            }
        }
        Ok(summary)
    }
}

struct Plan {
    next: BTreeMap<String, InstalledService>,
    new_tables: Vec<(TableKey, u32)>,
    service_ids: IdPool,
    backend_ids: IdPool,
    fresh_services: Vec<u32>,
    fresh_backends: Vec<u32>,
}

fn remove_key(maps: &mut Maps, key: ServiceKey) -> Result<(), ApplyError> {
    match maps.services.remove(&key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(source) => Err(ApplyError::Map { map: "SERVICES", source }),
    }
}

/// Writes a service's backends into its current bank.
fn write_backends(maps: &mut Maps, service: &InstalledService) -> Result<(), ApplyError> {
    for (index, backend) in service.backends.iter().enumerate() {
        let key = BackendKey { service_id: service.id, bank: service.bank, _pad: 0, index: index as u16 };
        let value = Backend {
            addr: wire_addr(*backend.spec.addr.ip()),
            snat_addr: backend.snat.map_or(0, wire_addr),
            port: wire_port(backend.spec.addr.port()),
            _pad: 0,
            id: backend.id,
        };
        maps.backends.insert(key, value, 0).map_err(map_err("BACKENDS"))?;
    }
    Ok(())
}

fn reset_traffic(map: &mut PerCpuArray<MapData, Traffic>, id: u32, cpus: usize) -> Result<(), ApplyError> {
    let zeros = PerCpuValues::try_from(vec![Traffic::default(); cpus]).map_err(ApplyError::Cpus)?;
    map.set(id, zeros, 0).map_err(map_err("TRAFFIC"))
}

/// The address the kernel would use as source towards `backend`: the
/// primary IPv4 of the egress interface. Connecting a UDP socket sends
/// nothing; it only runs the route lookup.
fn source_address_towards(backend: SocketAddrV4) -> Result<Ipv4Addr, String> {
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    socket.connect(backend).map_err(|e| format!("no route: {e}"))?;
    match socket.local_addr().map_err(|e| e.to_string())? {
        std::net::SocketAddr::V4(local) if !local.ip().is_unspecified() => Ok(*local.ip()),
        other => Err(format!("unexpected local address {other}")),
    }
}

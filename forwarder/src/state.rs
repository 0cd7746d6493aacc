//! The running service table and how a new service file reaches the maps.
//!
//! [`Table::apply`] works in two phases. *Plan* computes the new table
//! (ids, SNAT addresses, Maglev tables) and checks capacity without
//! touching a map, so an impossible change fails with nothing applied.
//! *Commit* then writes in an order the datapath can never observe half
//! done: backends before the Maglev tables that name them, a whole new
//! Maglev table swapped in with one outer-map update, the service entry
//! last; removals go the other way. Tracked flows carry their own
//! translation, so no change touches an established connection.

use std::{
    collections::{BTreeMap, VecDeque},
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::{MapData, MapError};
use forwarder_common::{
    counters::Traffic,
    maps::{self as wire, Backend, MAGLEV_INNER_FLAGS, ServiceEntry, ServiceKey, wire_addr, wire_port},
};

use crate::{
    config::{BackendSpec, Mode, Service, ServiceFile},
    kernel::{Capacity, Maps},
    maglev,
};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("too many services: {wanted} configured, capacity {capacity} (raise --max-services)")]
    TooManyServices { wanted: usize, capacity: u32 },
    #[error("too many backends: {wanted} configured, capacity {capacity} (raise --max-backends)")]
    TooManyBackends { wanted: usize, capacity: u32 },
    #[error("service {service:?}: no SNAT address for backend {backend}: {reason}")]
    NoSnatAddress { service: String, backend: SocketAddrV4, reason: String },
    #[error("writing map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("filling a Maglev table: {0}")]
    Mmap(std::io::Error),
    #[error("counting CPUs: {0}")]
    Cpus(std::io::Error),
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> ApplyError {
    move |source| ApplyError::Map { map, source }
}

/// A backend as installed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstalledBackend {
    pub spec: BackendSpec,
    pub id: u32,
    /// Source address of SNATed flows to this backend (snat mode only).
    pub snat: Option<Ipv4Addr>,
}

/// A service as installed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstalledService {
    pub spec: Service,
    pub id: u32,
    pub table_len: u32,
    pub backends: Vec<InstalledBackend>,
}

impl InstalledService {
    fn key(&self) -> ServiceKey {
        service_key(&self.spec)
    }
}

fn service_key(spec: &Service) -> ServiceKey {
    ServiceKey {
        vip: wire_addr(spec.vip),
        port: wire_port(spec.port),
        proto: spec.protocol.number(),
        _pad: 0,
    }
}

/// Ids handed out oldest-freed first, so a freed id (whose old flows may
/// still be counted against it for a while) is reused as late as possible.
#[derive(Debug)]
struct IdPool {
    free: VecDeque<u32>,
    capacity: u32,
}

impl IdPool {
    fn new(capacity: u32) -> Self {
        Self { free: (0..capacity).collect(), capacity }
    }

    /// A pool whose `used` ids are taken.
    fn without(capacity: u32, used: impl IntoIterator<Item = u32>) -> Self {
        let used: std::collections::HashSet<u32> = used.into_iter().collect();
        Self { free: (0..capacity).filter(|id| !used.contains(id)).collect(), capacity }
    }
}

/// What a successful apply changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// The service table the datapath is running.
#[derive(Debug)]
pub struct Table {
    services: BTreeMap<String, InstalledService>,
    service_ids: IdPool,
    backend_ids: IdPool,
    /// `--snat-ip`, used when the file sets none.
    snat_override: Option<Ipv4Addr>,
    /// Adopted from an earlier daemon: ids are kept, but every entry is
    /// written again on the next apply (the maps may be behind the record).
    rewrite_all: bool,
}

impl Table {
    #[must_use]
    pub fn new(capacity: Capacity, snat_override: Option<Ipv4Addr>) -> Self {
        Self {
            services: BTreeMap::new(),
            service_ids: IdPool::new(capacity.max_services),
            backend_ids: IdPool::new(capacity.max_backends),
            snat_override,
            rewrite_all: false,
        }
    }

    /// The table an earlier daemon left, as it recorded it: the same ids
    /// (so counters and tracked flows keep their meaning), everything
    /// rewritten on the first apply. Records that do not fit `capacity` are
    /// dropped and their services installed afresh.
    #[must_use]
    pub fn adopt(
        capacity: Capacity,
        snat_override: Option<Ipv4Addr>,
        previous: Vec<InstalledService>,
    ) -> Self {
        let fits = |s: &InstalledService| {
            s.id < capacity.max_services && s.backends.iter().all(|b| b.id < capacity.max_backends)
        };
        let services: BTreeMap<String, InstalledService> =
            previous.into_iter().filter(fits).map(|s| (s.spec.name.clone(), s)).collect();
        Self {
            service_ids: IdPool::without(capacity.max_services, services.values().map(|s| s.id)),
            backend_ids: IdPool::without(
                capacity.max_backends,
                services.values().flat_map(|s| s.backends.iter().map(|b| b.id)),
            ),
            services,
            snat_override,
            rewrite_all: true,
        }
    }

    /// Service keys and ids as installed, to prune map entries nobody
    /// recorded (an earlier daemon that crashed before saving its state).
    #[must_use]
    pub fn installed_keys(&self) -> (Vec<ServiceKey>, Vec<u32>) {
        (
            self.services.values().map(InstalledService::key).collect(),
            self.services.values().map(|s| s.id).collect(),
        )
    }

    /// The installed services, by name.
    #[must_use]
    pub fn services(&self) -> &BTreeMap<String, InstalledService> {
        &self.services
    }

    /// Makes the maps serve `file`, changing only what differs.
    pub fn apply(&mut self, file: &ServiceFile, maps: &mut Maps) -> Result<Summary, ApplyError> {
        let plan = self.plan(file)?;
        self.commit(plan, maps)
    }

    /// Computes the next table without touching maps or `self`.
    fn plan(&self, file: &ServiceFile) -> Result<Plan, ApplyError> {
        let wanted_services = file.services.len();
        if wanted_services > self.service_ids.capacity as usize {
            return Err(ApplyError::TooManyServices {
                wanted: wanted_services,
                capacity: self.service_ids.capacity,
            });
        }
        let snat_ip = file.snat_ip.or(self.snat_override);
        let mut service_ids = self.service_ids.free.clone();
        let mut backend_ids = self.backend_ids.free.clone();
        let mut freed_backends = Vec::new();
        let mut next = BTreeMap::new();
        for spec in &file.services {
            let current = self.services.get(&spec.name);
            // Ids freed by this very apply are only reusable by the next
            // one, so a full table cannot swap services in one step.
            let id = match current {
                Some(current) => current.id,
                None => service_ids.pop_front().ok_or(ApplyError::TooManyServices {
                    wanted: wanted_services
                        + self
                            .services
                            .keys()
                            .filter(|n| !file.services.iter().any(|s| &s.name == *n))
                            .count(),
                    capacity: self.service_ids.capacity,
                })?,
            };
            let mut backends = Vec::with_capacity(spec.backends.len());
            for backend in &spec.backends {
                let existing = current.and_then(|c| c.backends.iter().find(|b| b.spec.addr == backend.addr));
                let id = match existing {
                    Some(b) => b.id,
                    None => match backend_ids.pop_front() {
                        Some(id) => id,
                        None => {
                            let wanted = file.services.iter().map(|s| s.backends.len()).sum();
                            return Err(ApplyError::TooManyBackends {
                                wanted,
                                capacity: self.backend_ids.capacity,
                            });
                        }
                    },
                };
                let snat = match spec.mode {
                    Mode::Preserve => None,
                    Mode::Snat => Some(match snat_ip {
                        Some(ip) => ip,
                        None => source_address_towards(backend.addr).map_err(|reason| {
                            ApplyError::NoSnatAddress {
                                service: spec.name.clone(),
                                backend: backend.addr,
                                reason,
                            }
                        })?,
                    }),
                };
                backends.push(InstalledBackend { spec: *backend, id, snat });
            }
            if let Some(current) = current {
                freed_backends.extend(
                    current
                        .backends
                        .iter()
                        .filter(|old| !backends.iter().any(|b| b.id == old.id))
                        .map(|b| b.id),
                );
            }
            let table_len = maglev::table_len(backends.len());
            next.insert(spec.name.clone(), InstalledService { spec: spec.clone(), id, table_len, backends });
        }
        Ok(Plan { next, service_ids, backend_ids, freed_backends })
    }

    fn commit(&mut self, plan: Plan, maps: &mut Maps) -> Result<Summary, ApplyError> {
        let Plan { next, service_ids, backend_ids, mut freed_backends } = plan;
        let mut summary = Summary::default();
        for (name, service) in &next {
            let current = self.services.get(name);
            if current == Some(service) {
                continue;
            }
            for backend in &service.backends {
                let unchanged = current
                    .and_then(|c| c.backends.iter().find(|b| b.id == backend.id))
                    .is_some_and(|b| b.snat == backend.snat);
                if !unchanged {
                    write_backend(maps, backend)?;
                }
            }
            let table_changed = current.is_none_or(|c| {
                c.table_len != service.table_len
                    || c.backends
                        .iter()
                        .map(|b| (b.id, b.spec))
                        .ne(service.backends.iter().map(|b| (b.id, b.spec)))
            });
            if table_changed {
                install_table(maps, service)?;
            }
            if current.is_none() {
                reset_traffic(&mut maps.service_traffic, service.id)?;
            }
            let entry = ServiceEntry {
                id: service.id,
                table_len: service.table_len,
                mode: match service.spec.mode {
                    Mode::Snat => wire::Mode::Snat as u8,
                    Mode::Preserve => wire::Mode::Preserve as u8,
                },
                _pad: [0; 3],
            };
            maps.services.insert(service.key(), entry, 0).map_err(map_err("SERVICES"))?;
            if let Some(old) = current.filter(|c| c.key() != service.key()) {
                remove_key(maps, old.key())?;
            }
            match current {
                None => summary.added.push(name.clone()),
                Some(c) if c != service => summary.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        let mut service_ids = service_ids;
        for (name, old) in &self.services {
            if next.contains_key(name) {
                continue;
            }
            remove_key(maps, old.key())?;
            match maps.maglev.remove(&old.id) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(ApplyError::Map { map: "MAGLEV", source }),
            }
            service_ids.push_back(old.id);
            freed_backends.extend(old.backends.iter().map(|b| b.id));
            summary.removed.push(name.clone());
        }
        let mut backend_ids = backend_ids;
        backend_ids.extend(freed_backends);
        self.services = next;
        self.rewrite_all = false;
        self.service_ids.free = service_ids;
        self.backend_ids.free = backend_ids;
        Ok(summary)
    }
}

struct Plan {
    next: BTreeMap<String, InstalledService>,
    service_ids: VecDeque<u32>,
    backend_ids: VecDeque<u32>,
    freed_backends: Vec<u32>,
}

fn remove_key(maps: &mut Maps, key: ServiceKey) -> Result<(), ApplyError> {
    match maps.services.remove(&key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(source) => Err(ApplyError::Map { map: "SERVICES", source }),
    }
}

fn write_backend(maps: &mut Maps, backend: &InstalledBackend) -> Result<(), ApplyError> {
    let value = Backend {
        addr: wire_addr(*backend.spec.addr.ip()),
        snat_addr: backend.snat.map_or(0, wire_addr),
        port: wire_port(backend.spec.addr.port()),
        _pad: 0,
    };
    maps.backends.set(backend.id, value, 0).map_err(map_err("BACKENDS"))
}

fn reset_traffic(map: &mut aya::maps::PerCpuArray<MapData, Traffic>, id: u32) -> Result<(), ApplyError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, err)| ApplyError::Cpus(err))?;
    let zeros =
        aya::maps::PerCpuValues::try_from(vec![Traffic::default(); cpus]).map_err(ApplyError::Cpus)?;
    map.set(id, zeros, 0).map_err(map_err("TRAFFIC"))
}

/// Builds the service's Maglev table in a new inner map and swaps it in.
fn install_table(maps: &mut Maps, service: &InstalledService) -> Result<(), ApplyError> {
    let members: Vec<maglev::Member> = service
        .backends
        .iter()
        .map(|b| maglev::Member { id: b.id, key: b.spec.addr, weight: b.spec.weight })
        .collect();
    let slots = maglev::build(&members, service.table_len);
    let table = new_table(&slots)?;
    maps.maglev.insert(service.id, &table, 0).map_err(map_err("MAGLEV"))
}

/// A new Maglev inner map holding `slots`, written through `mmap` (one
/// syscall pair whatever the length) before any packet can see it.
pub fn new_table(slots: &[u32]) -> Result<MapData, ApplyError> {
    let len = u32::try_from(slots.len()).expect("tables are at most 131071 slots");
    let obj = aya_obj::Map::new_from_params(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
        4,
        4,
        len,
        MAGLEV_INNER_FLAGS,
    );
    let map = MapData::create(obj, "maglev_table", None).map_err(map_err("MAGLEV inner"))?;
    // Array elements are laid out `round_up(value_size, 8)` bytes apart.
    const STRIDE: usize = 8;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let bytes = (slots.len() * STRIDE).div_ceil(page) * page;
    let fd = map.fd().as_fd().as_raw_fd();
    // SAFETY: mapping a BPF_F_MMAPABLE array whose data area is `len`
    // elements of STRIDE bytes rounded up to whole pages; every write is
    // inside it, and it is unmapped before returning.
    unsafe {
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        if ptr == libc::MAP_FAILED {
            return Err(ApplyError::Mmap(std::io::Error::last_os_error()));
        }
        let base = ptr.cast::<u8>();
        for (i, id) in slots.iter().enumerate() {
            base.add(i * STRIDE).cast::<u32>().write(*id);
        }
        libc::munmap(ptr, bytes);
    }
    Ok(map)
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

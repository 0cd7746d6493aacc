//! The running service table and how a new service file reaches the maps.
//!
//! [`ServiceTable::apply`] works in three steps. It first asks the host
//! for what the file leaves to it (the SNAT source address towards each
//! node, when the file names none: [`SnatSources`]). *Plan* then computes
//! the new table (ids, SNAT addresses, backend banks, Maglev tables) and
//! checks capacity, a pure computation that touches no map, so an
//! impossible change fails with nothing applied. *Commit* writes in an
//! order the datapath never observes half done: new Maglev tables first
//! (built in fresh maps, added in one batch), a changed backend list into
//! the service's other bank, and last the service entry, one map update
//! that switches table, bank and mode at once. What nothing references
//! any more (old tables, a bank switched away from, removed services'
//! backends) is deleted a second later by [`ServiceTable::retire`]. Tracked
//! flows carry their own translation, so no change touches an established
//! connection. Capacity is checked on the entries the maps will hold while
//! the commit runs, not only on ids; a write that fails anyway (a map
//! filled by someone else, the kernel out of memory) makes the commit
//! write the last good table back over whatever it had written.

mod commit;
mod faults;
mod ids;
mod maglev_tables;
mod plan;

use std::{
    collections::{BTreeMap, HashSet},
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use aya::maps::MapError;
use forwarder_common::maps::{
    BACKEND_BANKS, BackendKey, SERVICE_SOURCES_LIMITED, ServiceEntry, ServiceKey, names, source_key_data,
    wire_addr, wire_port,
};
use serde::{Deserialize, Serialize};

use self::{faults::Faults, ids::IdPool, maglev_tables::MaglevTables};
pub use self::{maglev_tables::new_table, plan::SnatSources};
use crate::{
    config::{Mode, Protocol, ServiceFile},
    kernel::{Capacity, Maps},
};

/// A `SOURCES` key: its prefix length and data (service id, client prefix).
pub type SourceKey = (u32, [u8; 8]);

fn trie_key((prefix_len, data): SourceKey) -> aya::maps::lpm_trie::Key<[u8; 8]> {
    aya::maps::lpm_trie::Key::new(prefix_len, data)
}

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
    #[error(
        "too many source_ranges prefixes: {wanted} in use during the change (those being replaced \
         are deleted a second after it), capacity {capacity}"
    )]
    TooManySourcePrefixes { wanted: usize, capacity: u32 },
    #[error(
        "too many backend entries: {wanted} in use during the change (a changed backend list is \
         written beside the old one, which is deleted a second later), capacity {capacity} \
         (raise --max-backends, or change fewer services at once)"
    )]
    TooManyBackendEntries { wanted: usize, capacity: u32 },
    #[error("{error}; nothing changed: the last good table was written back")]
    WrittenBack {
        #[source]
        error: Box<ApplyError>,
    },
    #[error(
        "{error}; writing the last good table back failed too ({restore}): the next change \
         rewrites every entry"
    )]
    NotWrittenBack { error: Box<ApplyError>, restore: Box<ApplyError> },
    #[cfg(feature = "fault-injection")]
    #[error("writing map {map}: injected failure")]
    Injected { map: &'static str },
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
    Mmap(nix::Error),
    #[error("counting CPUs: {0}")]
    Cpus(std::io::Error),
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> ApplyError {
    move |source| ApplyError::Map { map, source }
}

/// A deletion's result, where a key already gone is no error (aya reports
/// the kernel's ENOENT as a failed syscall, not as `KeyNotFound`).
fn deleted(map: &'static str, result: Result<(), MapError>) -> Result<(), ApplyError> {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(aya::sys::SyscallError { io_error, .. }))
            if io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(source) => Err(ApplyError::Map { map, source }),
    }
}

/// A backend as installed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledBackend {
    pub addr: SocketAddrV4,
    /// As applied (health included: a down backend is at 0).
    pub weight: u32,
    /// Its traffic counters' index, stable while it stays in the service.
    pub id: u32,
    /// Source address of SNATed flows to this backend (snat mode only).
    pub snat: Option<Ipv4Addr>,
}

/// A service as installed: what the datapath's maps hold for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledService {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    pub id: u32,
    /// Backends in canonical order (by address): index i is what the
    /// Maglev table's slots hold.
    pub backends: Vec<InstalledBackend>,
    /// The current bank of `BACKENDS` entries, and how many entries each
    /// bank may hold (indices `0..written`); a bank switched away from is
    /// handed to retirement and counts 0 here.
    pub bank: u8,
    pub written: [u16; BACKEND_BANKS as usize],
    /// Id of its (possibly shared) Maglev table in `MAGLEV`, and its length.
    pub maglev_table: u32,
    pub maglev_len: u32,
    /// Client prefixes allowed to open connections; empty: every client.
    #[serde(default)]
    pub source_ranges: Vec<ipnet::Ipv4Net>,
}

impl InstalledService {
    fn key(&self) -> ServiceKey {
        ServiceKey {
            vip: wire_addr(self.vip),
            port: wire_port(self.port),
            proto: self.protocol.number(),
            _pad: 0,
        }
    }

    fn entry(&self) -> ServiceEntry {
        ServiceEntry {
            id: self.id,
            maglev_table: self.maglev_table,
            maglev_len: self.maglev_len,
            mode: self.mode.nat_mode() as u8,
            bank: self.bank,
            flags: if self.source_ranges.is_empty() { 0 } else { SERVICE_SOURCES_LIMITED },
            _pad: 0,
        }
    }

    /// Its `SOURCES` keys.
    fn source_keys(&self) -> Vec<SourceKey> {
        self.source_ranges
            .iter()
            .map(|net| {
                let data = source_key_data(self.id, wire_addr(net.network()));
                (32 + u32::from(net.prefix_len()), data)
            })
            .collect()
    }

    /// The slots of this service's Maglev table, as the kernel holds them:
    /// indices into [`Self::backends`].
    #[must_use]
    pub fn maglev_slots(&self) -> Vec<u32> {
        maglev_tables::MaglevKey::of(&self.backends).build()
    }

    /// The `BACKENDS` keys this service's banks may hold.
    fn backend_keys(&self) -> impl Iterator<Item = BackendKey> + '_ {
        (0..BACKEND_BANKS as u8).flat_map(move |bank| {
            (0..self.written[bank as usize]).map(move |index| BackendKey {
                service_id: self.id,
                bank,
                _pad: 0,
                index,
            })
        })
    }

    /// Whether `other` has the same backend entries (so no new bank).
    fn same_backends(&self, other: &InstalledService) -> bool {
        self.backends.len() == other.backends.len()
            && self
                .backends
                .iter()
                .zip(&other.backends)
                .all(|(a, b)| (a.addr, a.id, a.snat) == (b.addr, b.id, b.snat))
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
    source_keys: Vec<SourceKey>,
    tables: Vec<u32>,
    service_ids: Vec<u32>,
    backend_ids: Vec<u32>,
}

/// The service table the datapath is running.
#[derive(Debug)]
pub struct ServiceTable {
    services: BTreeMap<String, InstalledService>,
    service_ids: IdPool,
    backend_ids: IdPool,
    tables: MaglevTables,
    /// What the commit under way frees, sealed into `waiting` at its end.
    retiring: Retiring,
    /// Freed by earlier commits, oldest first, each batch deleted a second
    /// after its commit.
    waiting: std::collections::VecDeque<Retiring>,
    /// `--snat-ip`, used when the file sets none.
    snat_override: Vec<Ipv4Addr>,
    /// The SNAT pool in `SNAT_POOL` (empty: none); unknown until the
    /// first commit reads it (an adopted map holds the earlier daemon's).
    snat_pool: Option<Vec<Ipv4Addr>>,
    /// Adopted from an earlier daemon: ids are kept, but every entry and
    /// table is written afresh on the next apply (the maps may be behind
    /// the record); the earlier tables are retired after it.
    adopted_tables: Option<Vec<u32>>,
    capacity: Capacity,
    faults: Faults,
    cpus: usize,
}

impl ServiceTable {
    pub fn new(capacity: Capacity, snat_override: Vec<Ipv4Addr>) -> Result<Self, ApplyError> {
        Self::with(capacity, snat_override, BTreeMap::new(), None)
    }

    /// The table an earlier daemon left, as it recorded it: the same
    /// service and backend ids (so counters and tracked flows keep their
    /// meaning). Records that do not fit `capacity` are dropped and those
    /// services installed afresh.
    pub fn adopt(
        capacity: Capacity,
        snat_override: Vec<Ipv4Addr>,
        previous: Vec<InstalledService>,
    ) -> Result<Self, ApplyError> {
        let fits = |s: &InstalledService| {
            s.id < capacity.max_services
                && s.maglev_table < capacity.max_tables
                && s.backends.iter().all(|b| b.id < capacity.max_backends)
        };
        let services: BTreeMap<String, InstalledService> =
            previous.into_iter().filter(fits).map(|s| (s.name.clone(), s)).collect();
        let mut old_tables: Vec<u32> = services.values().map(|s| s.maglev_table).collect();
        old_tables.sort_unstable();
        old_tables.dedup();
        Self::with(capacity, snat_override, services, Some(old_tables))
    }

    fn with(
        capacity: Capacity,
        snat_override: Vec<Ipv4Addr>,
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
            tables: MaglevTables::new(table_ids),
            services,
            retiring: Retiring::default(),
            waiting: std::collections::VecDeque::new(),
            snat_override,
            snat_pool: None,
            adopted_tables,
            capacity,
            faults: Faults::default(),
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
        let sources = SnatSources::resolve(file, &self.snat_override);
        let plan = self.plan(file, &sources)?;
        self.commit(plan, maps)
    }

    /// Deletes what was unreferenced more than a second ago.
    pub fn retire(&mut self, maps: &mut Maps) -> Result<(), ApplyError> {
        while self.waiting.front().is_some_and(|b| b.since.is_some_and(|t| t.elapsed() >= RETIRE_AFTER)) {
            let batch = self.waiting.pop_front().expect("checked above");
            self.retire_batch(batch, maps)?;
        }
        Ok(())
    }

    fn retire_batch(&mut self, batch: Retiring, maps: &mut Maps) -> Result<(), ApplyError> {
        let Retiring { since: _, backend_entries, source_keys, tables, service_ids, backend_ids } = batch;
        // A key a service holds again (its bank switched back, or a failed
        // commit written back) must stay.
        let owned = self.backend_keys();
        for key in backend_entries.into_iter().filter(|key| !owned.contains(key)) {
            deleted(names::BACKENDS, maps.backends.remove(&key))?;
        }
        // A key the current configuration wants again (same service, same
        // prefix) was rewritten since and must stay.
        let wanted: Vec<SourceKey> = self.services.values().flat_map(InstalledService::source_keys).collect();
        for key in source_keys {
            if wanted.contains(&key) {
                continue;
            }
            deleted(names::SOURCES, maps.sources.remove(&trie_key(key)))?;
        }
        self.tables.remove(&maps.maglev, tables)?;
        service_ids.into_iter().for_each(|id| self.service_ids.give_back(id));
        backend_ids.into_iter().for_each(|id| self.backend_ids.give_back(id));
        Ok(())
    }

    /// Every `BACKENDS` key the installed services' banks may hold.
    fn backend_keys(&self) -> HashSet<BackendKey> {
        self.services.values().flat_map(InstalledService::backend_keys).collect()
    }

    /// Removes service entries, backend entries, allowed-source prefixes
    /// and Maglev tables nothing accounts for (left by an earlier daemon
    /// that died before recording them or before retiring them): a stale
    /// prefix must not admit clients to a later service that gets the same
    /// id, and stale entries take room the next change needs.
    pub fn prune(&self, maps: &mut Maps) -> Result<(), ApplyError> {
        let owned = self.backend_keys();
        let stale: Vec<BackendKey> = maps
            .backends
            .keys()
            .filter_map(Result::ok)
            .filter(|key| {
                !owned.contains(key) && !self.waiting.iter().any(|b| b.backend_entries.contains(key))
            })
            .collect();
        for key in stale {
            deleted(names::BACKENDS, maps.backends.remove(&key))?;
        }
        let wanted: Vec<SourceKey> = self.services.values().flat_map(InstalledService::source_keys).collect();
        let stale: Vec<SourceKey> = maps
            .sources
            .keys()
            .filter_map(Result::ok)
            .map(|key| (key.prefix_len(), key.data()))
            .filter(|key| !wanted.contains(key))
            .collect();
        for key in stale {
            deleted(names::SOURCES, maps.sources.remove(&trie_key(key)))?;
        }
        let keys: Vec<ServiceKey> = self.services.values().map(InstalledService::key).collect();
        let stale: Vec<ServiceKey> =
            maps.services.keys().filter_map(Result::ok).filter(|k| !keys.contains(k)).collect();
        for key in stale {
            deleted(names::SERVICES, maps.services.remove(&key))?;
        }
        let outer =
            aya::maps::HashOfMaps::<_, u32>::try_from(&maps.maglev).map_err(map_err(names::MAGLEV))?;
        let stale: Vec<u32> = outer
            .keys()
            .filter_map(Result::ok)
            .filter(|id| !self.tables.contains(*id) && !self.waiting.iter().any(|b| b.tables.contains(id)))
            .collect();
        maglev_tables::remove_unknown(&maps.maglev, &stale)
    }
}

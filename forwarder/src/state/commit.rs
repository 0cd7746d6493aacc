//! Committing a plan: map writes in an order no packet sees half done,
//! and the last good table written back if one of them fails.

use std::collections::{BTreeMap, HashSet};

use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use forwarder_common::{
    counters::Traffic,
    maps::{Backend, BackendKey, ServiceKey, names, other_bank, reply_port_bit, wire_addr, wire_port},
    snat::SnatPool,
};

use super::{
    ApplyError, InstalledService, ServiceTable, Summary, deleted, faults::Faults, map_err, plan::Plan,
    trie_key,
};
use crate::kernel::Maps;

impl ServiceTable {
    pub(super) fn commit(&mut self, plan: Plan, maps: &mut Maps) -> Result<Summary, ApplyError> {
        let Plan {
            mut next,
            new_tables,
            service_ids,
            backend_ids,
            fresh_services,
            fresh_backends,
            snat_pool,
        } = plan;
        let cpus = self.cpus;
        // Counters of new ids start from zero before any entry uses them.
        let reset = |maps: &mut Maps| {
            for id in &fresh_services {
                reset_traffic(&mut maps.service_traffic, names::SERVICE_TRAFFIC, *id, cpus)?;
            }
            for id in &fresh_backends {
                reset_traffic(&mut maps.backend_traffic, names::BACKEND_TRAFFIC, *id, cpus)?;
            }
            Ok(())
        };
        let written = self
            .tables
            .install(&maps.maglev, new_tables)
            .and_then(|()| reset(maps))
            .and_then(|()| self.write_pool(&snat_pool, maps))
            .and_then(|()| self.write(&next, maps));
        if let Err(error) = written {
            return Err(self.write_back(&next, maps, error));
        }
        let mut summary = Summary::default();
        for (name, service) in &next {
            match self.services.get(name) {
                None => summary.added.push(name.clone()),
                Some(c) if c != service => summary.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        // A bank switched away from is referenced by no service entry now.
        for service in next.values_mut() {
            if self.services.get(&service.name).is_some_and(|c| c.bank != service.bank) {
                service.written[other_bank(service.bank) as usize] = 0;
            }
        }
        let removed: Vec<InstalledService> =
            self.services.values().filter(|s| !next.contains_key(&s.name)).cloned().collect();
        summary.removed.extend(removed.iter().map(|s| s.name.clone()));
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
        let unused_tables = self.tables.recount(next.values().map(|s| s.maglev_table));
        let adopted_tables = self.adopted_tables.take().unwrap_or_default();

        self.service_ids = service_ids;
        self.backend_ids = backend_ids;
        self.snat_pool = Some(snat_pool);
        let previous = std::mem::replace(&mut self.services, next);
        let mut tables: Vec<u32> = unused_tables.into_iter().chain(adopted_tables).collect();
        tables.sort_unstable();
        tables.dedup();
        self.retiring.tables.extend(tables);
        self.retiring.backend_ids.extend(freed_backends);
        for old in removed {
            self.retiring.service_ids.push(old.id);
            self.retiring.backend_ids.extend(old.backends.iter().map(|b| b.id));
        }
        self.retire_unowned(previous.values());
        Ok(summary)
    }

    /// The SNAT pool, before the services that use it: one write, which
    /// new connections see whole or (racing it) as a mix of old and new
    /// addresses, each usable (see `forwarder_common::snat::SnatPool`).
    fn write_pool(&mut self, pool: &[std::net::Ipv4Addr], maps: &mut Maps) -> Result<(), ApplyError> {
        if self.snat_pool.is_none() {
            self.snat_pool = Some(read_pool(maps)?);
        }
        if self.snat_pool.as_deref() == Some(pool) {
            return Ok(());
        }
        self.faults.before_write(names::SNAT_POOL)?;
        maps.snat_pool.set(0, pool_value(pool), 0).map_err(map_err(names::SNAT_POOL))
    }

    /// The plan's writes: removed services' entries first (a service can
    /// take over the VIP:port of one removed in the same change), then per
    /// service its backends, allowed sources, and last its entry.
    fn write(
        &mut self,
        next: &BTreeMap<String, InstalledService>,
        maps: &mut Maps,
    ) -> Result<(), ApplyError> {
        let faults = &mut self.faults;
        let next_keys: HashSet<ServiceKey> = next.values().map(InstalledService::key).collect();
        // The keys in the map as the writes go.
        let mut present: HashSet<ServiceKey> = self.services.values().map(InstalledService::key).collect();
        for old in self.services.values().filter(|s| !next.contains_key(&s.name)) {
            if !next_keys.contains(&old.key()) {
                remove_key(faults, maps, old.key())?;
                present.remove(&old.key());
            }
        }
        let rewrite_all = self.adopted_tables.is_some();
        let capacity = self.capacity.max_services as usize;
        for (name, service) in next {
            let current = self.services.get(name);
            if current == Some(service) && !rewrite_all {
                continue;
            }
            if current.is_none_or(|c| c.bank != service.bank || rewrite_all) {
                write_backends(faults, maps, service)?;
            }
            // Allowed sources go in before the entry that starts using them
            // (only new ones: a full trie refuses even a rewrite before
            // Linux 6.14).
            let had = current.filter(|_| !rewrite_all).map(InstalledService::source_keys).unwrap_or_default();
            for key in service.source_keys().into_iter().filter(|key| !had.contains(key)) {
                faults.before_write(names::SOURCES)?;
                maps.sources.insert(&trie_key(key), 1, 0).map_err(map_err(names::SOURCES))?;
            }
            // The old VIP:port goes after the new one is served, unless
            // the map has no room for both; it stays if another service
            // takes it over in this change.
            let moved = current.map(InstalledService::key).filter(|old| *old != service.key());
            let freed = moved.filter(|old| !next_keys.contains(old));
            let full = !present.contains(&service.key()) && present.len() >= capacity;
            if let Some(old) = freed.filter(|_| full) {
                remove_key(faults, maps, old)?;
                present.remove(&old);
            }
            faults.before_write(names::SERVICES)?;
            maps.services.insert(service.key(), service.entry(), 0).map_err(map_err(names::SERVICES))?;
            present.insert(service.key());
            if let Some(old) = freed.filter(|_| !full) {
                remove_key(faults, maps, old)?;
                present.remove(&old);
            }
        }
        Ok(())
    }

    /// After a failed write: puts the installed table back in every map
    /// (entries, banks, sources; its Maglev tables were never touched)
    /// and hands what the attempt wrote to retirement.
    fn write_back(
        &mut self,
        attempted: &BTreeMap<String, InstalledService>,
        maps: &mut Maps,
        error: ApplyError,
    ) -> ApplyError {
        let mut unarmed = Faults::default();
        let restored = (|| {
            let keys: HashSet<ServiceKey> = self.services.values().map(InstalledService::key).collect();
            for service in attempted.values().filter(|s| !keys.contains(&s.key())) {
                remove_key(&mut unarmed, maps, service.key())?;
            }
            // The attempt deleted no prefix; an adopted table's may be missing.
            let rewrite_sources = self.adopted_tables.is_some();
            if let Some(pool) = &self.snat_pool {
                maps.snat_pool.set(0, pool_value(pool), 0).map_err(map_err(names::SNAT_POOL))?;
            }
            for service in self.services.values() {
                write_backends(&mut unarmed, maps, service)?;
                for key in service.source_keys().into_iter().filter(|_| rewrite_sources) {
                    maps.sources.insert(&trie_key(key), 1, 0).map_err(map_err(names::SOURCES))?;
                }
                maps.services.insert(service.key(), service.entry(), 0).map_err(map_err(names::SERVICES))?;
            }
            Ok(())
        })();
        let unused_tables = self.tables.recount(self.services.values().map(|s| s.maglev_table));
        self.retiring.tables.extend(unused_tables);
        self.retire_unowned(attempted.values());
        match restored {
            Ok(()) => ApplyError::WrittenBack { error: Box::new(error) },
            Err(restore) => {
                // The maps may now be anything: the next apply writes all.
                self.adopted_tables.get_or_insert_with(Vec::new);
                ApplyError::NotWrittenBack { error: Box::new(error), restore: Box::new(restore) }
            }
        }
    }

    /// Hands the backend entries and allowed-source prefixes `services`
    /// had that no installed service holds now to retirement.
    fn retire_unowned<'a>(&mut self, services: impl Iterator<Item = &'a InstalledService>) {
        let owned = self.backend_keys();
        let wanted: HashSet<_> = self.services.values().flat_map(InstalledService::source_keys).collect();
        let retiring = &mut self.retiring;
        for service in services {
            retiring.backend_entries.extend(service.backend_keys().filter(|key| !owned.contains(key)));
            retiring
                .source_keys
                .extend(service.source_keys().into_iter().filter(|key| !wanted.contains(key)));
        }
        retiring.backend_entries.sort_unstable_by_key(|k| (k.service_id, k.bank, k.index));
        retiring.backend_entries.dedup();
        retiring.source_keys.sort_unstable();
        retiring.source_keys.dedup();
        // Sealed with its own time: changes a second apart or closer never
        // hold back what earlier ones freed.
        let mut batch = std::mem::take(retiring);
        batch.since = Some(std::time::Instant::now());
        self.waiting.push_back(batch);
    }
}

/// The pool `SNAT_POOL` holds.
fn read_pool(maps: &Maps) -> Result<Vec<std::net::Ipv4Addr>, ApplyError> {
    let value = maps.snat_pool.get(&0, 0).map_err(map_err(names::SNAT_POOL))?;
    let count = (value.count as usize).min(value.addrs.len());
    Ok(value.addrs[..count].iter().map(|wire| std::net::Ipv4Addr::from(u32::from_be(*wire))).collect())
}

/// `SNAT_POOL`'s value for `pool` (validated to fit by the file's checks).
fn pool_value(pool: &[std::net::Ipv4Addr]) -> SnatPool {
    let mut value = SnatPool::default();
    for (slot, addr) in value.addrs.iter_mut().zip(pool) {
        *slot = wire_addr(*addr);
        value.count += 1;
    }
    value
}

fn remove_key(faults: &mut Faults, maps: &mut Maps, key: ServiceKey) -> Result<(), ApplyError> {
    faults.before_write(names::SERVICES)?;
    deleted(names::SERVICES, maps.services.remove(&key))
}

/// Writes a service's backends into its current bank.
fn write_backends(
    faults: &mut Faults,
    maps: &mut Maps,
    service: &InstalledService,
) -> Result<(), ApplyError> {
    for (index, backend) in service.backends.iter().enumerate() {
        let key = BackendKey { service_id: service.id, bank: service.bank, _pad: 0, index: index as u16 };
        let value = Backend {
            addr: wire_addr(*backend.addr.ip()),
            snat_addr: backend.snat.map_or(0, wire_addr),
            port: wire_port(backend.addr.port()),
            _pad: 0,
            id: backend.id,
        };
        mark_reply_port(faults, maps, value.port)?;
        faults.before_write(names::BACKENDS)?;
        maps.backends.insert(key, value, 0).map_err(map_err(names::BACKENDS))?;
    }
    Ok(())
}

/// Sets the `REPLY_PORTS` bit of a backend's port (wire order) before the
/// backend is published: the datapath looks for half-open reply entries
/// only from ports with their bit set. Bits are never cleared (a removed
/// backend's connections may still be half-open), so one set by a commit
/// that then fails costs nothing but that lookup.
fn mark_reply_port(faults: &mut Faults, maps: &mut Maps, port: u16) -> Result<(), ApplyError> {
    let (word, bit) = reply_port_bit(port);
    let ports = maps.reply_ports.get(&word, 0).map_err(map_err(names::REPLY_PORTS))?;
    if ports & bit == 0 {
        faults.before_write(names::REPLY_PORTS)?;
        maps.reply_ports.set(word, ports | bit, 0).map_err(map_err(names::REPLY_PORTS))?;
    }
    Ok(())
}

fn reset_traffic(
    map: &mut PerCpuArray<MapData, Traffic>,
    name: &'static str,
    id: u32,
    cpus: usize,
) -> Result<(), ApplyError> {
    let zeros = PerCpuValues::try_from(vec![Traffic::default(); cpus]).map_err(ApplyError::Cpus)?;
    map.set(id, zeros, 0).map_err(map_err(name))
}

//! Committing a plan: map writes in an order no packet sees half done.

use aya::maps::{MapData, MapError, PerCpuArray, PerCpuValues};
use forwarder_common::{
    counters::Traffic,
    maps::{BACKEND_BANKS, Backend, BackendKey, ServiceKey, names, wire_addr, wire_port},
};

use super::{ApplyError, InstalledService, ServiceTable, Summary, map_err, plan::Plan, trie_key};
use crate::kernel::Maps;

impl ServiceTable {
    pub(super) fn commit(&mut self, plan: Plan, maps: &mut Maps) -> Result<Summary, ApplyError> {
        let Plan { next, new_tables, service_ids, backend_ids, fresh_services, fresh_backends } = plan;
        self.tables.install(&maps.maglev, new_tables)?;
        for id in &fresh_services {
            reset_traffic(&mut maps.service_traffic, names::SERVICE_TRAFFIC, *id, self.cpus)?;
        }
        for id in &fresh_backends {
            reset_traffic(&mut maps.backend_traffic, names::BACKEND_TRAFFIC, *id, self.cpus)?;
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
            // Allowed sources go in before the entry that starts using them.
            for key in service.source_keys() {
                maps.sources.insert(&trie_key(key), 1, 0).map_err(map_err(names::SOURCES))?;
            }
            maps.services.insert(service.key(), service.entry(), 0).map_err(map_err(names::SERVICES))?;
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
            self.services.values().filter(|s| !next.contains_key(&s.name)).cloned().collect();
        for old in &removed {
            remove_key(maps, old.key())?;
            summary.removed.push(old.name.clone());
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
        let unused_tables = self.tables.recount(next.values().map(|s| s.maglev_table));
        let adopted_tables = self.adopted_tables.take().unwrap_or_default();

        self.service_ids = service_ids;
        self.backend_ids = backend_ids;
        let previous = std::mem::replace(&mut self.services, next);
        let retiring = &mut self.retiring;
        retiring.since = Some(std::time::Instant::now());
        let mut tables: Vec<u32> = unused_tables.into_iter().chain(adopted_tables).collect();
        tables.sort_unstable();
        tables.dedup();
        retiring.tables.extend(tables);
        retiring.backend_ids.extend(freed_backends);
        for (name, service) in &self.services {
            if let Some(old) = previous.get(name) {
                let keys = service.source_keys();
                retiring.source_keys.extend(old.source_keys().into_iter().filter(|k| !keys.contains(k)));
            }
        }
        for old in removed {
            retiring.source_keys.extend(old.source_keys());
            retiring.service_ids.push(old.id);
            retiring.backend_ids.extend(old.backends.iter().map(|b| b.id));
            for bank in 0..BACKEND_BANKS as u8 {
                for index in 0..old.written[bank as usize] {
                    retiring.backend_entries.push(BackendKey { service_id: old.id, bank, _pad: 0, index });
                }
            }
        }
        Ok(summary)
    }
}

fn remove_key(maps: &mut Maps, key: ServiceKey) -> Result<(), ApplyError> {
    match maps.services.remove(&key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(source) => Err(ApplyError::Map { map: names::SERVICES, source }),
    }
}

/// Writes a service's backends into its current bank.
fn write_backends(maps: &mut Maps, service: &InstalledService) -> Result<(), ApplyError> {
    for (index, backend) in service.backends.iter().enumerate() {
        let key = BackendKey { service_id: service.id, bank: service.bank, _pad: 0, index: index as u16 };
        let value = Backend {
            addr: wire_addr(*backend.addr.ip()),
            snat_addr: backend.snat.map_or(0, wire_addr),
            port: wire_port(backend.addr.port()),
            _pad: 0,
            id: backend.id,
        };
        maps.backends.insert(key, value, 0).map_err(map_err(names::BACKENDS))?;
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

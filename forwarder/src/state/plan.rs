//! Planning an apply: the next service table, computed from the file and
//! the current table without touching a map.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
};

use forwarder_common::maps::{BACKEND_BANKS, MAX_SOURCE_PREFIXES, backend_entries, other_bank};

use super::{
    ApplyError, InstalledBackend, InstalledService, ServiceTable, ids::IdPool, maglev_tables::MaglevKey,
};
use crate::{
    config::{Mode, ServiceFile},
    host::routes,
};

/// The SNAT source address towards each node a snat-mode service uses:
/// the file's `snat_ip` or `--snat-ip` when set (the first, where they
/// name a pool), else the address the host would use as source towards
/// the node (one route lookup per node).
#[derive(Debug, Default)]
pub struct SnatSources {
    configured: Vec<Ipv4Addr>,
    by_node: HashMap<Ipv4Addr, Result<Ipv4Addr, String>>,
}

impl SnatSources {
    /// Asks the host for the sources `file` needs.
    #[must_use]
    pub fn resolve(file: &ServiceFile, snat_override: &[Ipv4Addr]) -> Self {
        let configured = if file.snat_ip.is_empty() { snat_override } else { &file.snat_ip }.to_vec();
        let mut by_node = HashMap::new();
        if configured.is_empty() {
            for service in file.services.iter().filter(|s| s.mode == Mode::Snat) {
                for backend in &service.backends {
                    by_node
                        .entry(*backend.addr.ip())
                        .or_insert_with(|| routes::source_address_towards(backend.addr));
                }
            }
        }
        Self { configured, by_node }
    }

    /// The pool new SNAT connections spread over: the configured
    /// addresses where there are several, else none (each backend's own).
    #[must_use]
    pub fn pool(&self) -> Vec<Ipv4Addr> {
        if self.configured.len() > 1 { self.configured.clone() } else { Vec::new() }
    }

    fn towards(&self, node: Ipv4Addr) -> Result<Ipv4Addr, String> {
        match (self.configured.first().copied(), self.by_node.get(&node)) {
            (Some(ip), _) => Ok(ip),
            (None, Some(found)) => found.clone(),
            (None, None) => Err("not resolved".to_owned()),
        }
    }
}

/// The next table, and what committing it takes.
pub(super) struct Plan {
    pub next: BTreeMap<String, InstalledService>,
    /// Maglev tables to build, with the ids reserved for them.
    pub new_tables: Vec<(MaglevKey, u32)>,
    pub service_ids: IdPool,
    pub backend_ids: IdPool,
    /// Ids new to this plan, whose counters start from zero.
    pub fresh_services: Vec<u32>,
    pub fresh_backends: Vec<u32>,
    /// The SNAT address pool (see [`SnatSources::pool`]).
    pub snat_pool: Vec<Ipv4Addr>,
}

impl ServiceTable {
    /// Computes the next table without touching maps or `self`, except for
    /// ids reserved for new Maglev tables (given back if the plan fails).
    pub(super) fn plan(&mut self, file: &ServiceFile, sources: &SnatSources) -> Result<Plan, ApplyError> {
        let mut plan = Plan {
            next: BTreeMap::new(),
            new_tables: Vec::new(),
            service_ids: self.service_ids.clone(),
            backend_ids: self.backend_ids.clone(),
            fresh_services: Vec::new(),
            fresh_backends: Vec::new(),
            snat_pool: sources.pool(),
        };
        let prefixes: usize = file.services.iter().map(|s| s.source_ranges.len()).sum();
        if prefixes > MAX_SOURCE_PREFIXES as usize {
            return Err(ApplyError::TooManySourcePrefixes {
                wanted: prefixes,
                capacity: MAX_SOURCE_PREFIXES,
            });
        }
        match self.plan_services(file, sources, &mut plan).and_then(|()| self.check_entries(&plan)) {
            Ok(()) => Ok(plan),
            Err(err) => {
                self.tables.forget(std::mem::take(&mut plan.new_tables));
                Err(err)
            }
        }
    }

    fn plan_services(
        &mut self,
        file: &ServiceFile,
        sources: &SnatSources,
        plan: &mut Plan,
    ) -> Result<(), ApplyError> {
        let rewrite_all = self.adopted_tables.is_some();
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
                let existing = current.and_then(|c| c.backends.iter().find(|b| b.addr == backend.addr));
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
                    Mode::Snat => Some(sources.towards(*backend.addr.ip()).map_err(|reason| {
                        ApplyError::NoSnatAddress {
                            service: spec.name.clone(),
                            backend: backend.addr,
                            reason,
                        }
                    })?),
                };
                backends.push(InstalledBackend { addr: backend.addr, weight: backend.weight, id, snat });
            }
            let key = MaglevKey::of(&backends);
            let maglev_table = self.tables.find_or_allocate(&key, &mut plan.new_tables)?;
            let mut next = InstalledService {
                name: spec.name.clone(),
                vip: spec.vip,
                port: spec.port,
                protocol: spec.protocol,
                mode: spec.mode,
                id,
                backends,
                bank: 0,
                written: [0; BACKEND_BANKS as usize],
                maglev_table,
                maglev_len: key.len(),
                source_ranges: spec.source_ranges.clone(),
            };
            if let Some(current) = current {
                let flip = rewrite_all || !current.same_backends(&next);
                next.bank = if flip { other_bank(current.bank) } else { current.bank };
                next.written = current.written;
            }
            // The bank in use holds exactly this list; entries past it
            // (left from a longer list) are retired by the commit.
            next.written[next.bank as usize] = next.backends.len() as u16;
            plan.next.insert(spec.name.clone(), next);
        }
        Ok(())
    }

    /// Whether the entries the maps hold while `plan` is committed fit:
    /// what is installed, what the plan writes and what waits to be
    /// deleted, all present at once at the commit's peak.
    fn check_entries(&self, plan: &Plan) -> Result<(), ApplyError> {
        let mut backends = self.backend_keys();
        backends.extend(plan.next.values().flat_map(InstalledService::backend_keys));
        backends.extend(self.waiting.iter().flat_map(|b| b.backend_entries.iter().copied()));
        let capacity = backend_entries(self.capacity.max_backends);
        if backends.len() > capacity as usize {
            return Err(ApplyError::TooManyBackendEntries { wanted: backends.len(), capacity });
        }
        let sources: HashSet<_> = self
            .services
            .values()
            .chain(plan.next.values())
            .flat_map(InstalledService::source_keys)
            .chain(self.waiting.iter().flat_map(|b| b.source_keys.iter().copied()))
            .collect();
        if sources.len() > MAX_SOURCE_PREFIXES as usize {
            return Err(ApplyError::TooManySourcePrefixes {
                wanted: sources.len(),
                capacity: MAX_SOURCE_PREFIXES,
            });
        }
        Ok(())
    }
}

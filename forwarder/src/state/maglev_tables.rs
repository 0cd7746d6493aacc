//! Maglev tables, shared by content.
//!
//! A table's slots hold indices into a service's backend list (kept in a
//! canonical order), and a backend's permutation derives from its node
//! address only, so services on the same nodes with the same weights (the
//! usual case for NodePort services, which span every node) share one
//! table: one inner map, built once.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    num::NonZeroUsize,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::{Map, MapData};
use forwarder_common::maps::{MAGLEV_INNER_FLAGS, names};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

use super::{ApplyError, InstalledBackend, ids::IdPool};
use crate::{kernel::batch, maglev};

/// What makes two tables the same: length, and each backend's node
/// address (with its rank among backends on that address) and weight.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MaglevKey {
    len: u32,
    members: Vec<(Ipv4Addr, u16, u32)>,
}

impl MaglevKey {
    /// The key of a table for `backends`, in canonical order.
    #[must_use]
    pub fn of(backends: &[InstalledBackend]) -> Self {
        let mut members = Vec::with_capacity(backends.len());
        for (i, backend) in backends.iter().enumerate() {
            let ip = *backend.addr.ip();
            let rank = backends[..i].iter().filter(|b| *b.addr.ip() == ip).count() as u16;
            members.push((ip, rank, backend.weight));
        }
        Self { len: maglev::table_len(backends.len()), members }
    }

    #[must_use]
    pub fn len(&self) -> u32 {
        self.len
    }

    /// The table's slots: backend indices, or `NO_BACKEND`.
    #[must_use]
    pub fn build(&self) -> Vec<u32> {
        let members: Vec<maglev::Member> = self
            .members
            .iter()
            .enumerate()
            .map(|(index, &(ip, rank, weight))| maglev::Member {
                id: index as u32,
                key: SocketAddrV4::new(ip, rank),
                weight,
            })
            .collect();
        maglev::build(&members, self.len)
    }
}

/// The tables in the `MAGLEV` map: id and how many services use each.
#[derive(Debug)]
pub struct MaglevTables {
    by_key: HashMap<MaglevKey, (u32, usize)>,
    ids: IdPool,
}

impl MaglevTables {
    #[must_use]
    pub fn new(ids: IdPool) -> Self {
        Self { by_key: HashMap::new(), ids }
    }

    /// The id of the table for `key`, and whether it must be built: an
    /// existing one, or a new id (not yet counted as used).
    pub fn find_or_allocate(
        &mut self,
        key: &MaglevKey,
        pending: &mut Vec<(MaglevKey, u32)>,
    ) -> Result<u32, ApplyError> {
        if let Some((id, _)) = self.by_key.get(key) {
            return Ok(*id);
        }
        if let Some((_, id)) = pending.iter().find(|(k, _)| k == key) {
            return Ok(*id);
        }
        let id = self.ids.take().ok_or(ApplyError::TooManyTables { capacity: self.ids.capacity() })?;
        pending.push((key.clone(), id));
        Ok(id)
    }

    /// Gives back ids allocated by a plan that was not committed.
    pub fn forget(&mut self, pending: Vec<(MaglevKey, u32)>) {
        for (_, id) in pending {
            self.ids.give_back(id);
        }
    }

    /// Builds `pending` tables and adds them to `MAGLEV` in one batch.
    pub fn install(&mut self, maglev: &Map, pending: Vec<(MaglevKey, u32)>) -> Result<(), ApplyError> {
        if pending.is_empty() {
            return Ok(());
        }
        let maps: Vec<MapData> =
            pending.iter().map(|(key, _)| new_table(&key.build())).collect::<Result<_, _>>()?;
        let ids: Vec<u32> = pending.iter().map(|(_, id)| *id).collect();
        let fds: Vec<u32> = maps.iter().map(|map| map.fd().as_fd().as_raw_fd() as u32).collect();
        if let Err(err) = batch::update(maglev_data(maglev), &ids, &fds) {
            self.forget(pending);
            return Err(ApplyError::Batch { map: names::MAGLEV, error: err });
        }
        for (key, id) in pending {
            self.by_key.insert(key, (id, 0));
        }
        Ok(())
    }

    /// Sets how many services use each table (from the new service table)
    /// and returns the ids of tables nobody uses any more.
    pub fn recount(&mut self, uses: impl IntoIterator<Item = u32>) -> Vec<u32> {
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for id in uses {
            *counts.entry(id).or_default() += 1;
        }
        let mut unused = Vec::new();
        self.by_key.retain(|_, (id, refs)| {
            *refs = counts.get(id).copied().unwrap_or(0);
            if *refs == 0 {
                unused.push(*id);
            }
            *refs > 0
        });
        unused
    }

    /// Removes tables from `MAGLEV` in one batch and frees their ids.
    pub fn remove(&mut self, maglev: &Map, ids: Vec<u32>) -> Result<(), ApplyError> {
        batch::delete(maglev_data(maglev), &ids)
            .map_err(|error| ApplyError::Batch { map: names::MAGLEV, error })?;
        for id in ids {
            self.ids.give_back(id);
        }
        Ok(())
    }

    /// Whether `id` is a table in use.
    #[must_use]
    pub fn contains(&self, id: u32) -> bool {
        self.by_key.values().any(|(known, _)| *known == id)
    }
}

fn maglev_data(maglev: &Map) -> &MapData {
    match maglev {
        Map::HashOfMaps(data) => data,
        other => unreachable!("MAGLEV is a hash of maps, not {other:?}"),
    }
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
    let map = MapData::create(obj, "maglev_table", None)
        .map_err(|source| ApplyError::Map { map: "MAGLEV inner table", source })?;
    // Array elements are laid out `round_up(value_size, 8)` bytes apart.
    const STRIDE: usize = 8;
    let page =
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().map_or(4096, |p| p as usize);
    let bytes = NonZeroUsize::new((slots.len() * STRIDE).div_ceil(page) * page)
        .expect("a Maglev table has at least one slot");
    // SAFETY: mapping a fresh BPF_F_MMAPABLE array whose data area is
    // `len` elements of STRIDE bytes rounded up to whole pages; nothing
    // else maps or uses it yet.
    let ptr = unsafe {
        mmap(
            None,
            bytes,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            map.fd().as_fd(),
            0,
        )
    }
    .map_err(ApplyError::Mmap)?;
    let base = ptr.cast::<u8>();
    for (i, index) in slots.iter().enumerate() {
        // SAFETY: `i * STRIDE + 4 <= len * STRIDE <= bytes`: inside the mapping.
        unsafe { base.add(i * STRIDE).cast::<u32>().write(*index) };
    }
    // SAFETY: the mapping made above, unmapped once; no reference into it survives.
    unsafe { munmap(ptr, bytes.get()) }.map_err(ApplyError::Mmap)?;
    Ok(map)
}

/// Deletes `ids` from `MAGLEV` (tables nobody recorded), in one batch.
pub fn remove_unknown(maglev: &Map, ids: &[u32]) -> Result<(), ApplyError> {
    batch::delete(maglev_data(maglev), ids).map_err(|error| ApplyError::Batch { map: names::MAGLEV, error })
}

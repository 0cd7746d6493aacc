//! Service lookup and backend choice (Maglev).

use core::mem::MaybeUninit;

use aya_ebpf::btf_maps::lpm_trie::Key;
use forwarder_common::{
    counters::Reason,
    maps::{
        Backend, BackendKey, FlowKey, NO_BACKEND, SERVICE_SOURCES_LIMITED, ServiceEntry, ServiceKey,
        source_key_data,
    },
};

use crate::{
    maps::{BACKENDS, MAGLEV, SERVICES, SOURCES},
    mem,
};

/// The service a packet's destination (VIP, port, protocol) belongs to.
#[inline(always)]
pub fn service(key: &FlowKey) -> Option<ServiceEntry> {
    let service_key = ServiceKey { vip: key.dst, port: key.dport, proto: key.proto, _pad: 0 };
    let found = SERVICES.get_ptr(service_key)?;
    let mut service = MaybeUninit::<ServiceEntry>::uninit();
    // SAFETY: service values are replaced whole by user space, never
    // written in place; the copy (of plain data) is taken at once.
    unsafe {
        mem::copy::<u32, _>(service.as_mut_ptr(), found);
        Some(service.assume_init())
    }
}

/// Picks the backend for a new flow from the service's Maglev table.
#[inline(always)]
pub fn pick(service: &ServiceEntry, hash: u32) -> Result<Backend, Reason> {
    if service.maglev_len == 0 {
        return Err(Reason::DropNoBackend);
    }
    let slot = hash % service.maglev_len;
    // SAFETY: a table is filled before any service names it and never
    // edited afterwards, so the slot read is consistent.
    let index = unsafe { MAGLEV.get_value(&service.maglev_table, &slot) }.copied();
    let index = match index {
        Some(index) if index != NO_BACKEND => index,
        _ => return Err(Reason::DropNoBackend),
    };
    let key = BackendKey { service_id: service.id, bank: service.bank, _pad: 0, index: index as u16 };
    // SAFETY: entries of the current bank are not rewritten while it is
    // current; the value is copied at once.
    unsafe { BACKENDS.get(key).copied() }.ok_or(Reason::DropNoBackend)
}

/// Whether a client at `src` (wire order) may open a connection to
/// `service`: always, unless the service limits its sources.
#[inline(always)]
pub fn source_allowed(service: &ServiceEntry, src: u32) -> bool {
    if service.flags & SERVICE_SOURCES_LIMITED == 0 {
        return true;
    }
    SOURCES.get(&Key::new(64, source_key_data(service.id, src))).is_some()
}
